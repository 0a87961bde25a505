import json

import numpy as np
import pytest
import torch

from customkd.featcache.extract import ExtractConfig, extract
from customkd.trainer.config import DistillConfig
from customkd.trainer.data import StudentViews, load_cached_data, make_split
from customkd.trainer.distill import distill
from customkd.trainer.loop import fixmatch_loss
from tests.conftest import TINY_STUDENT, TINY_TEACHER, make_tiny_hue_folder


@pytest.fixture(scope="module")
def domain_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("uda")
    folder = make_tiny_hue_folder(root / "imgs", classes=2, per_class=6, domains=("Art", "Clipart", "Photo"))
    out = root / "d.zarr"
    extract(ExtractConfig(teacher=TINY_TEACHER, data=f"folder:{folder}", out=str(out), views=2, weights="random",
                          workers=0, shard_size=8))
    return out


def test_uda_split_labels_source_only_and_evaluates_on_target(domain_store):
    cfg = DistillConfig(min_steps=0, cache=str(domain_store), setting="uda", source=("Art", "Photo"), target=("Clipart",))
    data = load_cached_data(cfg)
    split = make_split(cfg, data)
    clipart = data.manifest.domains.index("Clipart")
    assert (data.domain[split.eval] == clipart).all() and (data.split[split.eval] == 1).all()
    labeled = split.train[split.train_labels >= 0]
    assert (data.domain[labeled] != clipart).all()
    target_train = split.train[data.domain[split.train] == clipart]
    assert len(target_train) > 0 and (split.train_labels[data.domain[split.train] == clipart] == -1).all()


def test_uda_run_and_fixmatch_run(domain_store, tmp_path):
    common = {"student": TINY_STUDENT, "epochs": 1, "image_size": 32, "batch_size": 8, "workers": 0}
    uda = distill(DistillConfig(min_steps=0, cache=str(domain_store), setting="uda", source=("Art",), target=("Photo",),
                                out=str(tmp_path / "uda"), **common))
    from customkd.trainer.evaluate import evaluate_run

    evaluated = evaluate_run(str(tmp_path / "uda"), workers=0)  # the run's own held-out rows: the target's
    config = json.loads((tmp_path / "uda" / "config.json").read_text())
    assert evaluated["accuracy"] == uda.final["accuracy"] and evaluated["n"] == config["n_eval"]
    data = load_cached_data(DistillConfig(cache=str(domain_store)))
    photo = data.manifest.domains.index("Photo")
    assert config["n_eval"] == int(((data.domain == photo) & (data.split == 1)).sum())
    fixmatch = distill(DistillConfig(min_steps=0, cache=str(domain_store), setting="ssl", labels_per_class=2, ssl="fixmatch",
                                     fixmatch_threshold=0.0, out=str(tmp_path / "fm"), **common))
    epoch = json.loads((tmp_path / "fm" / "metrics.json").read_text())["epochs"][0]
    assert epoch["train"]["fixmatch"] > 0 and fixmatch.final is not None


def test_fixmatch_loss_formula():
    weak = torch.tensor([[5.0, 0.0], [0.0, 0.1], [9.0, 0.0]])
    strong = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 0.0]])
    labels = torch.tensor([-1, -1, 1])
    # sample 0: confident pseudo-label 0, CE(strong=[0,0]) = log 2; sample 1 below τ; sample 2 labeled
    assert fixmatch_loss(weak, strong, labels, 0.9).item() == pytest.approx(np.log(2) / 2)


def test_strong_views_are_seeded_and_differ_from_weak(domain_store):
    data = load_cached_data(DistillConfig(min_steps=0, cache=str(domain_store)))
    ds = StudentViews(data, 32, strong_seed=0)
    weak, _, _, strong = ds[(3, 1, 0)]
    assert torch.equal(strong, ds[(3, 1, 0)][3]) and not torch.equal(weak, strong)
    assert not torch.equal(strong, ds[(3, 1, 1)][3])  # another epoch, another augmentation


def test_the_dev_split_is_carved_from_training_rows_only_and_left_out_of_training(domain_store):
    data = load_cached_data(DistillConfig(cache=str(domain_store)))
    test = make_split(DistillConfig(cache=str(domain_store), setting="supervised"), data)
    dev = make_split(DistillConfig(cache=str(domain_store), setting="supervised", eval_split="dev"), data)
    assert set(dev.eval) <= set(test.train) and not set(dev.eval) & set(test.eval)  # never a test row
    assert not set(dev.eval) & set(dev.train) and set(dev.train) | set(dev.eval) == set(test.train)
    for c in np.unique(data.labels[test.train]):  # 20 % of every class, the same rows for every seed
        members = (data.labels[test.train] == c).sum()
        assert (data.labels[dev.eval] == c).sum() == round(0.2 * members)
    other_seed = make_split(DistillConfig(cache=str(domain_store), setting="supervised", eval_split="dev", seed=5), data)
    assert np.array_equal(other_seed.eval, dev.eval)


def test_an_explicit_epoch_count_is_exact_and_only_the_default_is_extended_to_min_steps():
    assert DistillConfig(epochs=2, min_steps=250, batch_size=64).epochs_for(36) == 2  # a YAML `epochs: 2` is 2
    assert DistillConfig(min_steps=250, batch_size=64).epochs_for(36) == 250  # no --epochs: 1 step an epoch
    assert DistillConfig(min_steps=250, batch_size=64).epochs_for(64 * 100) == 8  # large data: the default 8
    with pytest.raises(Exception, match="--epochs must be >= 1"):
        DistillConfig(epochs=0)


def test_a_last_batch_of_one_is_left_to_the_next_epoch_instead_of_crashing_batchnorm(domain_store, tmp_path):
    from customkd.trainer.assemble import load_inputs

    probe = DistillConfig(min_steps=0, cache=str(domain_store), setting="supervised", student=TINY_STUDENT)
    n_train = len(make_split(probe, load_cached_data(probe)).train)
    cfg = DistillConfig(min_steps=0, cache=str(domain_store), setting="supervised", student=TINY_STUDENT,
                        batch_size=n_train - 1, epochs=2, image_size=32, workers=0, out=str(tmp_path / "run"))
    assert cfg.samples_per_epoch(n_train) == n_train - 1 and cfg.steps_per_epoch(n_train) == 1
    assert DistillConfig(batch_size=n_train).samples_per_epoch(n_train) == n_train
    inputs = load_inputs(cfg, torch.device("cpu"))
    from customkd.common.distributed import DistEnv
    from customkd.trainer.assemble import epoch_plan

    plans = [epoch_plan(cfg, inputs, epoch, DistEnv()) for epoch in (0, 1)]
    assert [sum(len(b) for b in p.batches) for p in plans] == [n_train - 1] * 2
    assert set(plans[0].order) != set(plans[1].order)  # a different sample waits each epoch
    result = distill(cfg)  # with a batch of 1 this raised BatchNorm's "Expected more than 1 value per channel"
    assert 0 <= result.final["accuracy"] <= 1


def test_the_memory_format_is_the_one_asked_for_and_recorded(tiny_store, tmp_path):
    """``--memory-format channels_last`` trains the student (and feeds it its images) in that layout on a CPU, where
    ``auto`` keeps NCHW; config.json records the layout used."""
    from customkd.trainer.assemble import make_student
    from customkd.trainer.loop import PixelNorm
    from tests.conftest import tiny_config

    cpu = torch.device("cpu")
    for asked, expected in (("auto", False), ("contiguous", False), ("channels_last", True)):
        student = make_student(tiny_config(tiny_store, memory_format=asked), 3, cpu)
        stem = next(m.weight for m in student.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size[0] > 1)
        assert stem.is_contiguous(memory_format=torch.channels_last) is expected
        images = PixelNorm.of(student, cpu)(torch.zeros(2, 3, 8, 8, dtype=torch.uint8))
        assert images.is_contiguous(memory_format=torch.channels_last) is expected
    distill(tiny_config(tiny_store, tmp_path / "cl", memory_format="channels_last"))
    assert json.loads((tmp_path / "cl" / "config.json").read_text())["memory_format_used"] == "channels_last"
