"""trainer.assemble: one way to build a run, the same draws every time; a finished run loads back as it trained."""

from __future__ import annotations

import json

import pytest
import torch

from customkd.common.distributed import DistEnv
from customkd.trainer.assemble import build_trainee, epoch_plan, kd_step, load_inputs, load_trained, seed_everything
from customkd.trainer.config import DistillConfig
from customkd.trainer.data import StudentViews, make_loader
from customkd.trainer.distill import distill
from customkd.trainer.loop import train_epoch
from tests.conftest import tiny_config

CPU = torch.device("cpu")


def _config(store, **overrides) -> DistillConfig:
    return tiny_config(store, **{"method": "customkd", "customize_warmup": 0, **overrides})


@pytest.fixture(scope="module")
def finished_run(tiny_store, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "r"
    distill(_config(tiny_store, out=str(out), keep_checkpoint=True))
    return out


def test_load_trained_gives_back_the_runs_weights_and_probe(finished_run):
    from safetensors.torch import load_file

    run = load_trained(finished_run)
    student = run.trainee.student.model.state_dict()
    assert all(torch.equal(student[k], v) for k, v in load_file(str(finished_run / "student.safetensors")).items())
    method = run.trainee.method.state_dict()
    saved = torch.load(finished_run / "checkpoint.pt", weights_only=True)["method"]
    assert saved and all(torch.equal(method[k], v) for k, v in saved.items())
    kept = load_file(str(finished_run / "method.safetensors"))  # what a run without its checkpoint keeps
    assert kept.keys() == saved.keys() and all(torch.equal(kept[k], v) for k, v in saved.items())
    # the probe is refitted from the run's own store: seeded, so the same probe with the same accuracy
    assert run.inputs.probe_metrics == json.loads((finished_run / "metrics.json").read_text())["teacher_probe"]
    assert not run.trainee.student.training and not run.trainee.method.training
    assert run.cfg.method == "customkd" and run.config["out"] == str(finished_run.resolve())


def test_load_trained_needs_only_the_method_state_of_the_checkpoint(finished_run, tmp_path):
    """A finished run is read, not resumed: a checkpoint holding the method's modules but no optimiser state (as a
    distill of another version wrote it) still rebuilds the run; one without them is one line."""
    import shutil

    from customkd.common.errors import UserError

    run = tmp_path / "r"
    shutil.copytree(finished_run, run)
    (run / "method.safetensors").unlink()  # a run from before the method's modules had their own file
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    torch.save({"method": state["method"], "epoch": state["epoch"]}, run / "checkpoint.pt")
    method = load_trained(run).trainee.method.state_dict()
    assert all(torch.equal(method[k], v) for k, v in state["method"].items())
    torch.save({"epoch": state["epoch"]}, run / "checkpoint.pt")
    with pytest.raises(UserError, match="no method"):
        load_trained(run)


def _fresh(cfg: DistillConfig):
    seed_everything(cfg.seed)
    inputs = load_inputs(cfg, CPU)
    return inputs, build_trainee(cfg, inputs, CPU)


def test_building_a_run_twice_draws_the_same(tiny_store):
    (inputs, first), (_, second) = _fresh(_config(tiny_store)), _fresh(_config(tiny_store))
    for a, b in ((first.student, second.student), (first.method, second.method)):
        pairs = zip(a.state_dict().values(), b.state_dict().values(), strict=True)
        assert all(torch.equal(x, y) for x, y in pairs)
    assert inputs.row_labels.shape == (len(inputs.data.labels),) and (inputs.row_labels >= 0).any()


def test_train_epoch_draws_a_progress_bar_only_when_asked(tiny_store, capsys):
    cfg = _config(tiny_store)
    inputs, trainee = _fresh(cfg)
    plan = epoch_plan(cfg, inputs, 0, DistEnv())
    dataset = StudentViews(inputs.data, cfg.image_size)
    for progress in (False, True):
        capsys.readouterr()
        loader = make_loader(dataset, plan.order, plan.views, cfg.batch_size, workers=0)
        record = train_epoch(kd_step(cfg, inputs, trainee, CPU, progress=progress), loader, 0, plan.counts)
        assert record["samples"] == len(inputs.split.train)
        assert ("epoch 1" in capsys.readouterr().err) is progress
