"""Two CPU ranks under torchrun (gloo) against one process: same samples, reduced metrics, rank-0 files.

The student here has no BatchNorm (GroupNorm): on CPU (gloo) batch statistics are per rank by design, so with a
BatchNorm student the two runs legitimately train different models. Without it, two ranks must train the same
student as one process up to float summation order; test_ddp_gradients proves one step's gradients, this test the
whole run (sharding, loss normalisation, step count, schedule, evaluation gathered over ranks)."""

import json
import subprocess
from pathlib import Path

import torch

from tests.conftest import torchrun

NO_BATCHNORM_STUDENT = "test_efficientnet_gn"  # TINY_STUDENT with GroupNorm in place of BatchNorm
TIMING = ("seconds", "samples_per_s")


def _distill(store: Path, out: Path, nproc: int) -> subprocess.CompletedProcess:
    return torchrun(nproc, "distill", "--min-steps", "0", "--cache", store, "--student", NO_BATCHNORM_STUDENT,
                    "--epochs", "2", "--image-size", "32", "--batch-size", "8", "--workers", "0", "--labels-per-class",
                    "2", "--out", out, "--customize-warmup", "0")  # customize before any KD step: the same head


def test_two_ranks_train_the_single_process_student(tiny_store, tmp_path):
    from safetensors.torch import load_file

    from customkd.trainer.evaluate import evaluate_run

    two = _distill(tiny_store, tmp_path / "two", 2)
    assert two.returncode == 0, two.stderr[-2000:]
    assert two.stdout.count("student accuracy") == 1  # only rank 0 reports
    config = json.loads((tmp_path / "two" / "config.json").read_text())
    assert config["world_size"] == 2 and "fixed global batch" in config["batch_rule"]
    metrics = json.loads((tmp_path / "two" / "metrics.json").read_text())
    for epoch in metrics["epochs"]:
        assert epoch["train"]["samples"] == config["n_train"]  # reduced over ranks: every sample exactly once
        assert sum(1 for _ in epoch["eval"]["per_class_accuracy"]) == 3
    # evaluation gathered from both ranks = one process evaluating rank 0's saved student on every held-out row
    again = evaluate_run(str(tmp_path / "two"), workers=0)
    assert again["n"] == config["n_eval"] > 0
    assert {k: again[k] for k in metrics["final"]} == metrics["final"]

    one = _distill(tiny_store, tmp_path / "one", 1)
    assert one.returncode == 0, one.stderr[-2000:]
    single = json.loads((tmp_path / "one" / "metrics.json").read_text())
    single_config = json.loads((tmp_path / "one" / "config.json").read_text())
    assert single_config["world_size"] == 1
    for key in ("n_train", "n_eval", "optimizer_steps", "effective_epochs"):
        assert single_config[key] == config[key], key
    # the teacher probe and the customization stage run identically on every rank
    assert single["teacher_probe"] == metrics["teacher_probe"]
    assert single["epochs"][0]["customize"]["loss"] == metrics["epochs"][0]["customize"]["loss"]
    assert len(single["epochs"]) == len(metrics["epochs"]) == 2
    for mine, theirs in zip(metrics["epochs"], single["epochs"], strict=True):
        assert mine["lr"] == theirs["lr"]  # the same number of optimizer steps under the same schedule
        assert mine["eval"] == theirs["eval"]
        train = {k: v for k, v in mine["train"].items() if k not in TIMING}
        assert train.keys() == {k for k in theirs["train"] if k not in TIMING}
        for key, value in train.items():  # every loss term; a per-rank normaliser is off by ~50 %
            assert abs(value - theirs["train"][key]) <= 1e-5 * abs(theirs["train"][key]) + 1e-7, (key, value)
    assert metrics["epochs"][1]["train"]["loss"] < metrics["epochs"][0]["train"]["loss"]  # it trained
    assert metrics["final"] == single["final"]
    # the same weights up to float summation order: one optimizer step moves them by ~lr = 2e-3
    weights, single_weights = load_file(str(tmp_path / "two" / "student.safetensors")), \
        load_file(str(tmp_path / "one" / "student.safetensors"))
    assert weights.keys() == single_weights.keys()
    for key, value in single_weights.items():
        torch.testing.assert_close(weights[key], value, rtol=1e-4, atol=1e-4, msg=lambda m, k=key: f"{k}: {m}")
