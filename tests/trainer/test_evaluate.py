import csv
import json

import pytest

from tests.conftest import TINY_STUDENT
from trainer.config import DistillConfig
from trainer.distill import distill
from trainer.evaluate import evaluate_run, export_onnx


@pytest.fixture(scope="module")
def finished_run(tiny_store, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "r"
    distill(DistillConfig(min_steps=0, cache=str(tiny_store), student=TINY_STUDENT, epochs=2, image_size=32, batch_size=8,
                          workers=0, labels_per_class=2, out=str(out)))
    return out


def test_evaluate_reproduces_the_final_metrics(finished_run):
    final = json.loads((finished_run / "metrics.json").read_text())["final"]
    metrics = evaluate_run(str(finished_run), workers=0)
    assert metrics["accuracy"] == final["accuracy"]
    assert metrics["balanced_accuracy"] == final["balanced_accuracy"]


def test_evaluate_on_another_dataset_spec(finished_run, tiny_folder):
    metrics = evaluate_run(str(finished_run), data=f"folder:{tiny_folder}", workers=0)
    assert metrics["n"] == 30 and 0 <= metrics["accuracy"] <= 1


def test_metrics_csv_has_one_row_per_epoch(finished_run):
    with open(finished_run / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert {"train/loss", "train/specific", "customize/accuracy", "eval/balanced_accuracy"} <= set(rows[0])


def test_onnx_export_matches_pytorch(finished_run, tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    error = export_onnx(str(finished_run), str(tmp_path / "student.onnx"))
    assert error <= 1e-4 and (tmp_path / "student.onnx").stat().st_size > 0
