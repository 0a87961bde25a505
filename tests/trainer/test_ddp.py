"""Two CPU ranks under torchrun (gloo) against one process: same samples, reduced metrics, rank-0 files."""

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import TINY_STUDENT

ROOT = Path(__file__).resolve().parents[2]


def _distill(store: Path, out: Path, nproc: int) -> subprocess.CompletedProcess:
    args = ["-m", "cli", "distill", "--min-steps", "0", "--cache", str(store), "--student", TINY_STUDENT, "--epochs", "2",
            "--image-size", "32", "--batch-size", "8", "--workers", "0", "--labels-per-class", "2", "--out", str(out),
            "--customize-warmup", "0"]  # customize before any KD step: both runs see the same initial head
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run(launcher + args, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)


def test_two_ranks_cover_every_sample_once_and_log_reduced_metrics(tiny_store, tmp_path):
    two = _distill(tiny_store, tmp_path / "two", 2)
    assert two.returncode == 0, two.stderr[-2000:]
    assert two.stdout.count("student accuracy") == 1  # only rank 0 reports
    config = json.loads((tmp_path / "two" / "config.json").read_text())
    assert config["world_size"] == 2 and "fixed global batch" in config["batch_rule"]
    metrics = json.loads((tmp_path / "two" / "metrics.json").read_text())
    for epoch in metrics["epochs"]:
        assert epoch["train"]["samples"] == config["n_train"]  # reduced over ranks: every sample exactly once
        assert sum(1 for _ in epoch["eval"]["per_class_accuracy"]) == 3
    one = _distill(tiny_store, tmp_path / "one", 1)
    assert one.returncode == 0, one.stderr[-2000:]
    single = json.loads((tmp_path / "one" / "metrics.json").read_text())
    # the teacher probe and the customization stage run identically on every rank
    assert single["teacher_probe"] == metrics["teacher_probe"]
    assert single["epochs"][0]["customize"]["loss"] == metrics["epochs"][0]["customize"]["loss"]
    assert abs(single["final"]["accuracy"] - metrics["final"]["accuracy"]) <= 0.5  # within noise on 9 samples
