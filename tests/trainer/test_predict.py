"""``customkd predict`` on unlabeled images, and ``evaluate`` from another directory with ``--device``; where predict
and export may write."""

import csv
import errno
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import TINY_STUDENT, customkd, invoke, one_error_line


@pytest.fixture(scope="module")
def tiny_run(tiny_store, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "run"
    done = customkd("distill", "--min-steps", "0", "--cache", tiny_store.name, "--student", TINY_STUDENT, "--method",
                    "student", "--setting", "supervised", "--epochs", "2", "--image-size", "32", "--batch-size", "8",
                    "--workers", "0", "--out", str(run), cwd=tiny_store.parent)  # a relative --cache
    assert done.returncode == 0, done.stderr
    return run


def test_predict_writes_one_row_per_image_matching_evaluate(tiny_run, tiny_folder, tmp_path):
    flat = tmp_path / "unlabeled"
    flat.mkdir()
    truth = {}
    for image in sorted(tiny_folder.rglob("*.png")):  # a flat folder: no class folders, names only
        shutil.copy(image, flat / f"{image.parent.name}-{image.name}")
        truth[f"{image.parent.name}-{image.name}"] = image.parent.name
    (flat / ".hidden.png").write_bytes(b"not an image")  # hidden files are not data
    out = tmp_path / "preds.csv"
    done = customkd("predict", str(tiny_run), "--images", str(flat), "--out", str(out), "--device", "cpu",
                    "--workers", "0")
    assert done.returncode == 0, done.stderr
    rows = list(csv.reader(out.open()))
    assert rows[0] == ["path", "class", "class0", "class1", "class2"]
    assert len(rows) == 1 + len(truth)
    probabilities = np.array([[float(p) for p in row[2:]] for row in rows[1:]])
    np.testing.assert_allclose(probabilities.sum(1), 1, atol=1e-4)
    assert [row[1] for row in rows[1:]] == [rows[0][2 + int(i)] for i in probabilities.argmax(1)]
    predicted_accuracy = np.mean([row[1] == truth[row[0].rsplit("/", 1)[1]] for row in rows[1:]])

    evaluated = customkd("evaluate", str(tiny_run), "--data", f"folder:{tiny_folder}", "--device", "cpu",
                         "--workers", "0", cwd=tmp_path)  # from another directory
    assert evaluated.returncode == 0, evaluated.stderr
    accuracy = float(evaluated.stdout.split("accuracy ")[1].split()[0])
    assert accuracy == pytest.approx(predicted_accuracy, abs=1e-4)  # the same preprocessing, the same student

    one_error_line(customkd("predict", str(tiny_run), "--images", str(flat), "--out", str(out)), "already exists")
    one_error_line(customkd("predict", str(tiny_run), "--images", str(tmp_path / "none"), "--out",
                              str(tmp_path / "p.csv")), "does not exist")
    one_error_line(customkd("evaluate", str(tiny_run), "--device", "tpu"), "unknown --device 'tpu'")
    (flat / "broken.png").write_bytes(b"\x89PNG truncated")
    line = one_error_line(customkd("predict", str(tiny_run), "--images", str(flat), "--out", str(tmp_path / "q.csv"),
                                   "--workers", "0"), "1 unreadable image(s): ")
    assert f"{flat / 'broken.png'} (" in line
    assert not (tmp_path / "q.csv").exists() and not (tmp_path / "q.csv.partial").exists()


@pytest.mark.parametrize(("edit", "named"), [
    ({"preprocess": {"size": 6000}}, "preprocess size 6000"),
    ({"preprocess": {"size": 2049}}, "preprocess size 2049"),
    ({"preprocess": {"size": "32"}}, "preprocess size '32'"),
    ({"preprocess": {"crop": 5}}, "preprocess crop 5"),
    ({"preprocess": {"interpolation": "cubic"}}, "preprocess interpolation 'cubic'"),
    ({"preprocess": {"std": [0.5, 0.0, 0.5]}}, "preprocess std"),
    ({"image_size": 6000}, "image_size 6000"),
])
def test_a_run_config_with_absurd_preprocessing_is_refused(tiny_run, tiny_folder, tmp_path, edit, named):
    """A run folder is a file someone may send: its config.json must not make predict work at 6000 px (or fail in
    a loader worker on an interpolation that does not exist)."""
    import json

    from tests.conftest import invoke

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    config = json.loads((run / "config.json").read_text())
    for key, value in edit.items():
        config[key] = {**config[key], **value} if isinstance(value, dict) else value
    (run / "config.json").write_text(json.dumps(config))
    image = sorted(tiny_folder.rglob("*.png"))[0]
    line = one_error_line(invoke("predict", run, "--images", image, "--out", tmp_path / "p.csv", "--device", "cpu",
                                 "--workers", "0", "--batch-size", "1"), named)
    assert str(run) in line
    assert not (tmp_path / "p.csv").exists()


def test_output_places_are_refused_before_any_work(tmp_path, monkeypatch):
    """``predict --out`` and ``export --onnx`` onto a directory, a file (the user's, a link, a ``.partial`` beside
    it), into a missing or unwritable folder or into a store: one line, before the run is read (it does not exist here, so a later
    check would name it instead); nothing in the folder changes."""
    run, image = tmp_path / "no-such-run", tmp_path / "no-such-image.png"
    (tmp_path / "folder").mkdir()
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    (tmp_path / "mine.csv").write_text("my own")
    (tmp_path / "left.csv.partial").write_text("my own too")
    (tmp_path / "link.csv").symlink_to(tmp_path / "nowhere.csv")
    (tmp_path / "s.zarr" / "labels").mkdir(parents=True)
    (tmp_path / "s.zarr" / "zarr.json").write_text("{}")  # a store (its root metadata is all that matters here)
    real_access = os.access  # root may write anywhere: the locked folder is unwritable for every user here
    monkeypatch.setattr(os, "access", lambda p, mode: Path(p) != locked and real_access(p, mode))
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    cases = [(tmp_path / "folder", "is a directory; name a new file"),
             (tmp_path / "missing" / "p.out", f"folder {tmp_path / 'missing'} does not exist"),
             (locked / "p.out", "(permission denied)"), (tmp_path / "mine.csv", "already exists"),
             (tmp_path / "link.csv", "is a symbolic link to"), (tmp_path / "left.csv", "left.csv.partial exists"),
             (tmp_path / "s.zarr" / "labels" / "p.out", "inside the Zarr store")]
    for target, needle in cases:
        for command in (["predict", run, "--images", image, "--out", target], ["export", run, "--onnx", target]):
            assert str(target) in one_error_line(invoke(*command), needle)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
    assert not (tmp_path / "nowhere.csv").exists() and not any(locked.iterdir())
    # a real process, a place no user may write
    one_error_line(customkd("predict", run, "--images", image, "--out", "/proc/self/p.csv"), "permission denied")


def _full_disk(path, *args, **kwargs):
    """A write that fails half-way: some bytes land in the file, then the disk is full."""
    Path(path).write_bytes(b"half")
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def test_a_full_disk_while_writing_predictions_or_onnx_is_one_line(tiny_run, tiny_folder, tmp_path, monkeypatch):
    image = sorted(tiny_folder.rglob("*.png"))[0]
    monkeypatch.setattr("customkd.trainer.predict.open", _full_disk, raising=False)  # the CSV's open
    line = one_error_line(invoke("predict", tiny_run, "--images", image, "--out", tmp_path / "p.csv", "--device",
                                 "cpu", "--workers", "0"), "No space left on device")
    assert f"writing --out {tmp_path / 'p.csv'} failed" in line
    onnx = pytest.importorskip("onnx")
    monkeypatch.setattr(onnx, "save", lambda model, path: _full_disk(path))
    line = one_error_line(invoke("export", tiny_run, "--onnx", tmp_path / "s.onnx"), "No space left on device")
    assert f"writing --onnx {tmp_path / 's.onnx'} failed" in line
    assert list(tmp_path.iterdir()) == []  # neither the file nor its partial
