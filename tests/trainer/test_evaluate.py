import csv
import io
import json
import shutil
import struct
import zlib

import pytest
from PIL import Image

from customkd.trainer.distill import distill
from customkd.trainer.evaluate import evaluate_run, export_onnx
from tests.conftest import invoke, one_error_line, tiny_config


@pytest.fixture(scope="module")
def finished_run(tiny_store, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "r"
    distill(tiny_config(tiny_store, out))
    return out


def test_evaluate_reproduces_the_final_metrics(finished_run):
    final = json.loads((finished_run / "metrics.json").read_text())["final"]
    metrics = evaluate_run(str(finished_run), workers=0)
    assert metrics["accuracy"] == final["accuracy"]
    assert metrics["balanced_accuracy"] == final["balanced_accuracy"]


def test_evaluate_on_another_dataset_spec(finished_run, tiny_folder, tmp_path):
    """A folder of exactly the run's held-out images gives the run's own final metrics; the whole folder counts
    every image once: its correct predictions are the held-out ones plus the rest's."""
    import shutil

    from customkd.trainer.data import load_cached_data, make_split
    from customkd.trainer.evaluate import config_from_run

    cfg = config_from_run(json.loads((finished_run / "config.json").read_text()))
    data = load_cached_data(cfg)
    held_out = set(make_split(cfg, data).eval.tolist())
    for row, sample in enumerate(data.listing.samples):
        copy = tmp_path / ("held_out" if row in held_out else "rest") / sample.relpath
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(tiny_folder / sample.relpath, copy)

    final = json.loads((finished_run / "metrics.json").read_text())["final"]
    held = evaluate_run(str(finished_run), data=f"folder:{tmp_path / 'held_out'}", workers=0)
    assert held["n"] == len(held_out) > 0
    assert {k: held[k] for k in final} == final
    rest = evaluate_run(str(finished_run), data=f"folder:{tmp_path / 'rest'}", workers=0)
    metrics = evaluate_run(str(finished_run), data=f"folder:{tiny_folder}", workers=0)
    assert metrics["n"] == 30 == held["n"] + rest["n"]
    correct = lambda m: round(m["accuracy"] * m["n"])  # noqa: E731
    assert correct(metrics) == correct(held) + correct(rest)


def _png_claiming(width: int, height: int) -> bytes:
    """A 1 x 1 PNG whose header claims ``width`` x ``height`` pixels (its checksum fixed): a decompression bomb's
    header, a few dozen bytes."""
    buffer = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    data[16:24] = struct.pack(">II", width, height)  # IHDR: chunk type at 12, width and height at 16
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


@pytest.mark.parametrize(("content", "reason"), [
    (lambda png: png[:200], "image file is truncated"),
    (lambda png: _png_claiming(50_000, 50_000), "more than 89478485 pixels, a decompression bomb"),
    # between PIL's limit and twice it PIL only warns and decodes (300 MB here, were the data there): refused too
    (lambda png: _png_claiming(10_000, 10_000), "more than 89478485 pixels, a decompression bomb"),
])
def test_a_broken_image_in_data_or_images_is_one_line_naming_it(finished_run, tiny_folder, tmp_path, content,
                                                                  reason, monkeypatch):
    data = tmp_path / "data"
    shutil.copytree(tiny_folder, data)
    broken = data / "class1" / "img03.png"
    broken.write_bytes(content(broken.read_bytes()))
    line = one_error_line(invoke("evaluate", finished_run, "--data", f"folder:{data}", "--workers", "0"), reason)
    assert "1 unreadable image(s): class1/img03.png (" in line
    # predict names it before the student is even loaded, not after inference
    monkeypatch.setattr("customkd.trainer.assemble.load_student", lambda run: pytest.fail("the student was loaded"))
    line = one_error_line(invoke("predict", finished_run, "--images", data, "--out", tmp_path / "p.csv",
                                 "--workers", "0"), reason)
    assert f"1 unreadable image(s): {broken} (" in line and not (tmp_path / "p.csv").exists()


def test_metrics_csv_has_one_row_per_epoch(finished_run):
    with open(finished_run / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert {"train/loss", "train/specific", "customize/accuracy", "eval/balanced_accuracy"} <= set(rows[0])


def test_onnx_export_matches_pytorch(finished_run, tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    import numpy as np
    import onnx
    import onnxruntime

    error = export_onnx(str(finished_run), str(tmp_path / "student.onnx"))
    assert error <= 1e-4 and (tmp_path / "student.onnx").stat().st_size > 0
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "student.onnx")).metadata_props}
    assert json.loads(meta["classes"]) == ["class0", "class1", "class2"] and meta["size"] == "32"
    assert json.loads(meta["mean"]) == [0.485, 0.456, 0.406] and meta["interpolation"] == "bilinear"
    session = onnxruntime.InferenceSession(str(tmp_path / "student.onnx"), providers=["CPUExecutionProvider"])
    for height, width in ((32, 32), (48, 40)):  # a CNN student takes any height x width
        images = np.zeros((1, 3, height, width), np.float32)
        assert session.run(None, {"images": images})[0].shape == (1, 3)


def test_timm_alone_reproduces_evaluate(finished_run):
    """config.json's student is a timm name: timm plus the saved weights give evaluate's accuracy."""
    import timm
    import torch
    from safetensors.torch import load_file

    from customkd.trainer.data import StudentViews, load_cached_data, make_split
    from customkd.trainer.evaluate import config_from_run
    from customkd.trainer.loop import PixelNorm

    config = json.loads((finished_run / "config.json").read_text())
    model = timm.create_model(config["student"], num_classes=config["num_classes"]).eval()
    model.load_state_dict(load_file(str(finished_run / "student.safetensors")))
    data = load_cached_data(config_from_run(config))
    rows = make_split(config_from_run(config), data).eval
    p = config["preprocess"]
    views = StudentViews(data, p["size"], p["interpolation"])
    normalize = PixelNorm(tuple(p["mean"]), tuple(p["std"]), torch.device("cpu"))
    with torch.no_grad():
        preds = [int(model(normalize(views[(int(r), 0)][0][None])).argmax()) for r in rows]
    accuracy = sum(pred == data.labels[r] for pred, r in zip(preds, rows, strict=True)) / len(rows)
    assert accuracy == pytest.approx(evaluate_run(str(finished_run), workers=0)["accuracy"], abs=1e-9)


def test_classification_metrics_golden_values():
    import numpy as np
    import pytest

    from customkd.trainer.loop import classification_metrics

    found = classification_metrics(np.array([0, 0, 1, 1, 2]), np.array([0, 1, 1, 1, 0]), num_classes=4)
    assert found["accuracy"] == pytest.approx(3 / 5) and found["per_class_accuracy"] == [0.5, 1.0, 0.0, None]
    assert found["balanced_accuracy"] == pytest.approx(0.5)  # class 3 has no sample: not averaged
    assert found["macro_f1"] == pytest.approx((0.5 + 0.8 + 0.0) / 3)  # F1 of classes 0, 1, 2
    assert found["confusion_matrix"] == [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]]
