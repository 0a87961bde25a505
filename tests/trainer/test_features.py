import dataclasses
import json

import numpy as np
import zarr

from customkd.trainer.data import CachedData, load_cached_data, make_split
from customkd.trainer.distill import distill
from customkd.trainer.features import ShardedFeatures, block_shuffle, feature_stats
from tests.conftest import tiny_config, without_timing


def test_streamed_reads_equal_ram_reads(tiny_store):
    group = zarr.open_group(str(tiny_store), mode="r")
    ram = np.asarray(group["features_t0"][:])
    streamed = ShardedFeatures(group["features_t0"], 8, np.ones(30, bool), cache_blocks=2)
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
    ram = np.asarray(zarr.open_group(str(tiny_store), mode="r")["features_t0"][:]).astype(np.float64)
    rows = np.arange(0, 30, 2)
    mean, std = feature_stats(ram.astype(np.float16), rows, 3, block_rows=4)
    flat = ram[rows].reshape(-1, ram.shape[-1])
    np.testing.assert_allclose(mean, flat.mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(std, flat.std(0), rtol=1e-4, atol=1e-4)


def test_training_from_streamed_features(tiny_store, tmp_path, monkeypatch):
    """A streamed run feeds the store's own values, and trains exactly the run that holds them in RAM."""
    stored = np.asarray(zarr.open_group(str(tiny_store), mode="r")["features_t0"][:])
    reads = []
    streamed_read = ShardedFeatures.__getitem__

    def recorded(self, index):
        out = streamed_read(self, index)
        rows, views = index
        reads.append((np.array(rows), np.broadcast_to(np.asarray(views), np.shape(rows)).copy(), out.copy()))
        return out

    monkeypatch.setattr(ShardedFeatures, "__getitem__", recorded)
    cfg = tiny_config(tiny_store, tmp_path / "r", features="stream")
    assert load_cached_data(cfg).streaming
    streamed = distill(cfg)
    assert reads
    for rows, views, values in reads:  # every value the run got is the stored row's view, bit for bit
        assert values.dtype == stored.dtype and values.tobytes() == stored[rows, views].tobytes()
    train = make_split(cfg, load_cached_data(cfg)).train
    assert set(train.tolist()) <= set(np.concatenate([rows for rows, _, _ in reads]).tolist())

    # the same run from RAM, visiting rows in the streamed run's block-local order, is the same run
    monkeypatch.setattr(CachedData, "streaming", property(lambda self: True))
    ram_cfg = dataclasses.replace(cfg, out=str(tmp_path / "ram"), features="ram")
    assert isinstance(load_cached_data(ram_cfg).features, np.ndarray)
    in_ram = distill(ram_cfg)
    assert streamed.final == in_ram.final
    assert (tmp_path / "r" / "student.safetensors").read_bytes() == (tmp_path / "ram" / "student.safetensors").read_bytes()
    epochs = [json.loads((tmp_path / run / "metrics.json").read_text())["epochs"] for run in ("r", "ram")]
    assert without_timing(epochs[0]) == without_timing(epochs[1])
