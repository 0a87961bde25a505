import numpy as np
import zarr

from tests.conftest import TINY_STUDENT
from trainer.config import DistillConfig
from trainer.data import load_cached_data
from trainer.distill import distill
from trainer.features import ShardedFeatures, block_shuffle, feature_stats


def test_streamed_reads_equal_ram_reads(tiny_store):
    group = zarr.open_group(str(tiny_store), mode="r")
    ram = np.asarray(group["features"][:])
    streamed = ShardedFeatures(group["features"], 8, np.ones(30, bool), cache_blocks=2)
    rng = np.random.default_rng(0)
    rows, views = rng.integers(0, 30, 50), rng.integers(0, 3, 50)
    np.testing.assert_array_equal(streamed[rows, views], ram[rows, views])
    np.testing.assert_array_equal(streamed[rows, 0], ram[rows, 0])


def test_block_shuffle_is_a_block_local_permutation():
    rows = np.arange(3, 40)
    positions = block_shuffle(rows, 8, epoch=2, seed=0)
    assert sorted(positions.tolist()) == list(range(len(rows)))
    shards = rows[positions] // 8
    assert int((np.diff(shards) != 0).sum()) == len(np.unique(shards)) - 1
    assert not np.array_equal(positions, block_shuffle(rows, 8, epoch=3, seed=0))


def test_feature_stats_match_numpy(tiny_store):
    ram = np.asarray(zarr.open_group(str(tiny_store), mode="r")["features"][:]).astype(np.float64)
    rows = np.arange(0, 30, 2)
    mean, std = feature_stats(ram.astype(np.float16), rows, 3, block_rows=4)
    flat = ram[rows].reshape(-1, ram.shape[-1])
    np.testing.assert_allclose(mean, flat.mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(std, flat.std(0), rtol=1e-4, atol=1e-4)


def test_training_from_streamed_features(tiny_store, tmp_path):
    cfg = DistillConfig(min_steps=0, cache=str(tiny_store), student=TINY_STUDENT, epochs=2, image_size=32, batch_size=8,
                        workers=0, labels_per_class=2, out=str(tmp_path / "r"), features="stream")
    assert load_cached_data(cfg).streaming
    result = distill(cfg)
    assert 0 <= result.final["accuracy"] <= 1
