"""The run folder's contract (trainer/run_folder.py): its records round-trip, and a corrupt, foreign or mismatched
run file ends ``--resume``, ``evaluate``, ``predict`` and ``export`` in one line, exit 2, with nothing written."""

from __future__ import annotations

import builtins
import errno
import io
import json
import math
import os
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from customkd.common.errors import UserError
from customkd.trainer import run_folder
from customkd.trainer.distill import distill
from tests.conftest import ROOT, TINY_RUN, customkd, invoke, one_error_line, tiny_config


@pytest.fixture(scope="module")
def finished_run(tiny_store, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "r"
    distill(tiny_config(tiny_store, out, method="customkd", epochs=2, keep_checkpoint=True))
    return out


def _copy(run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns(run_folder.LOCK))
    return copy


def _edit_config(run, edit) -> None:
    config = json.loads((run / run_folder.CONFIG).read_text())
    edit(config)
    (run / run_folder.CONFIG).write_text(json.dumps(config))


def _snapshot(run) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(run.iterdir()) if p.is_file() and p.name != run_folder.LOCK}


# ---------------------------------------------------------------- the records round-trip


def test_config_record_names_the_student_twice_and_as_given_undoes_it():
    settings = {"cache": "s.zarr", "student": "mobilenetv3", "lr": 0.1}
    record = run_folder.config_record(settings, "mobilenetv3_large_100", {"num_classes": 3})
    assert list(record) == ["cache", "student", "lr", "student_alias", "num_classes"]  # the order config.json keeps
    assert (record["student"], record["student_alias"]) == ("mobilenetv3_large_100", "mobilenetv3")
    assert run_folder.as_given(record) == {**record, "student": "mobilenetv3"}
    assert run_folder.as_given({"student": "resnet18"}) == {"student": "resnet18"}  # a record without an alias


def test_metrics_keep_their_key_order_and_read_back(tmp_path):
    epochs, probe = [{"epoch": 1, "eval": {"accuracy": 0.5}}], {"accuracy": 0.7}
    run_folder.write_metrics(tmp_path, run_folder.RunMetrics(epochs, probe))
    assert list(json.loads((tmp_path / run_folder.METRICS).read_text())) == ["epochs", "teacher_probe"]
    run_folder.write_metrics(tmp_path, run_folder.RunMetrics(epochs, probe, {"accuracy": 0.5}))
    assert list(json.loads((tmp_path / run_folder.METRICS).read_text())) == ["epochs", "final", "teacher_probe"]
    assert run_folder.read_metrics(tmp_path) == run_folder.RunMetrics(epochs, probe, {"accuracy": 0.5})


def test_one_flattener_serves_metrics_csv_and_tensorboard():
    from customkd.trainer.tracking import scalars

    record = {"epoch": 2, "train": {"loss": 1.5, "nan": math.nan, "flag": True, "epoch": 9},
              "eval": {"accuracy": 0.5, "per_class_accuracy": [0.25, None]}, "note": "text", "lr": 0.01}
    assert run_folder.flatten(record) == {
        "epoch": 2, "train/loss": 1.5, "train/nan": record["train"]["nan"], "train/flag": True, "train/epoch": 9,
        "eval/accuracy": 0.5, "eval/per_class_accuracy/0": 0.25, "eval/per_class_accuracy/1": None,
        "note": "text", "lr": 0.01}
    # TensorBoard: finite numbers only, no list items, no epoch counts (the step is the epoch)
    assert scalars(record) == {"train/loss": 1.5, "eval/accuracy": 0.5, "lr": 0.01}
    named = run_folder.named_classes(run_folder.flatten(record), ["p0", "p1,3"])
    assert [k for k in named if "per_class" in k] == ["eval/per_class_accuracy/p0", "eval/per_class_accuracy/p1,3"]


def test_metrics_csv_names_the_per_class_columns_by_class(finished_run):
    import csv

    with open(finished_run / run_folder.METRICS_CSV, newline="") as handle:
        header = next(csv.reader(handle))
    assert [c for c in header if "per_class" in c] == [f"eval/per_class_accuracy/class{i}" for i in range(3)]


def test_the_readme_lists_every_file_distill_writes():
    outputs = (ROOT / "README.md").read_text().split("## Outputs of a run", 1)[1].split("\n## ", 1)[0]
    unnamed = [name for name, spec in run_folder.FILES.items() if spec.written_by == "distill"
               and f"RUN/{name}" not in outputs]
    assert unnamed == []


def test_a_finished_run_reads_back_through_the_contract(finished_run):
    config = run_folder.read_config(finished_run)
    assert (config.student, config.num_classes, config.classes) == ("test_efficientnet", 3,
                                                                    ["class0", "class1", "class2"])
    assert config.settings["student"] == TINY_RUN["student"] and config.store_fingerprint
    assert run_folder.read_metrics(finished_run).final is not None
    state = run_folder.load_checkpoint(finished_run)
    assert state["epoch"] == 1 and len(json.loads(state["history"])) == 2


def test_a_run_folder_is_a_model_folder_timm_loads(finished_run):
    """timm.create_model("local-dir:RUN/model") builds the student with the run's weights and classes, and timm's own data
    config preprocesses as the run does (its size, bilinear, mean/std, centre crop)."""
    import timm
    import torch
    from safetensors.torch import load_file
    from timm.data import resolve_data_config

    model = timm.create_model(f"local-dir:{finished_run / run_folder.MODEL}", pretrained=True)
    saved = load_file(str(finished_run / run_folder.STUDENT))
    assert model.state_dict().keys() == saved.keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in saved.items())
    preprocess = run_folder.read_config(finished_run).values["preprocess"]
    data = resolve_data_config(model=model)
    assert tuple(data["input_size"]) == (3, TINY_RUN["image_size"], TINY_RUN["image_size"])
    assert (data["interpolation"], data["crop_pct"], data["crop_mode"]) == ("bilinear", preprocess["crop"], "center")
    assert tuple(data["mean"]) == tuple(preprocess["mean"]) and tuple(data["std"]) == tuple(preprocess["std"])
    assert model.pretrained_cfg["label_names"] == ["class0", "class1", "class2"]


# ---------------------------------------------------------------- --resume with a damaged run file


def _resume_args(run, store) -> list:
    return ["distill", "--cache", store, "--out", run, "--method", "customkd", "--epochs", "2", "--resume",
            *(f"--{k.replace('_', '-')}={v}" for k, v in TINY_RUN.items() if k != "epochs")]


def _truncate(path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _not_a_checkpoint(path) -> None:
    import torch

    torch.save({"epoch": 1, "student": {}}, path)  # a real torch file, not distill's


@pytest.mark.parametrize(("file", "damage", "needle"), [
    (run_folder.CONFIG, _truncate, "config.json is not valid JSON"),
    (run_folder.CONFIG, lambda p: p.write_text("[1, 2]"), "config.json is not a JSON object"),
    (run_folder.CHECKPOINT, _truncate, "checkpoint.pt is damaged"),
    (run_folder.CHECKPOINT, lambda p: p.write_bytes(pickle.dumps({"epoch": 1})), "checkpoint.pt is a pickle"),
    (run_folder.CHECKPOINT, _not_a_checkpoint, "checkpoint.pt is not a distill checkpoint (no method"),
])
def test_resume_with_a_damaged_run_file_is_one_line(finished_run, tiny_store, tmp_path, file, damage, needle):
    run = _copy(finished_run, tmp_path)
    damage(run / file)
    before = _snapshot(run)
    line = one_error_line(invoke(*_resume_args(run, tiny_store)), needle)
    assert str(run) in line and "restore the run's" in line
    assert _snapshot(run) == before  # nothing rewritten


class _FullDisk(io.BufferedWriter):
    """A file on a disk that fills up: half of the first write lands, then ENOSPC."""

    def write(self, data) -> int:
        super().write(bytes(data)[: len(data) // 2])
        self.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


_REAL_OPEN = io.open


def _disk_full_while_writing(name: str):
    """``open`` (builtins.open, io.open) under which writing ``name`` (under its partial name) fills the disk."""

    def fake_open(path, mode="r", *args, **kwargs):
        if "w" in mode and isinstance(path, str | os.PathLike) and Path(path).name == f"{name}.partial":
            full = _FullDisk(io.FileIO(path, "wb"))
            return full if "b" in mode else io.TextIOWrapper(full, kwargs.get("encoding") or "utf-8",
                                                             newline=kwargs.get("newline"), write_through=True)
        return _REAL_OPEN(path, mode, *args, **kwargs)

    return fake_open


@pytest.mark.parametrize(("file", "then"), [
    (run_folder.CONFIG, "rerun the same command (no epoch was saved yet)"),
    (run_folder.CHECKPOINT, "rerun the same command (no epoch was saved yet)"),
    (run_folder.METRICS, "continue the run with --resume"),
    (run_folder.METRICS_CSV, "continue the run with --resume"),
    (run_folder.STUDENT, "continue the run with --resume"),
])
def test_a_full_disk_while_writing_a_run_file_is_one_line_and_the_run_goes_on(tiny_store, tmp_path, monkeypatch,
                                                                               file, then):
    """Every distill write fails the same way: one line naming the file and what to do, no partial file, the
    files already there whole; doing what the line says finishes the run."""
    run = tmp_path / "run"
    args = [a for a in _resume_args(run, tiny_store) if a != "--resume"]
    monkeypatch.setattr(builtins, "open", _disk_full_while_writing(file))
    monkeypatch.setattr(io, "open", _disk_full_while_writing(file))
    line = one_error_line(invoke(*args), "(No space left on device); nothing half-written was left: free space")
    assert f"writing {run / file} failed" in line and then in line
    assert not list(run.glob("*.partial")) and not (run / file).exists()  # its first write failed
    for record in (run_folder.CONFIG, run_folder.METRICS):
        assert not (run / record).exists() or json.loads((run / record).read_text())
    monkeypatch.undo()
    assert invoke(*args, *(["--resume"] if "--resume" in then else [])).exit_code == 0
    assert run_folder.is_finished(run) and "final" in json.loads((run / run_folder.METRICS).read_text())


def test_a_record_larger_than_any_run_writes_is_refused_unread(finished_run, tmp_path):
    run = _copy(finished_run, tmp_path)
    with open(run / run_folder.METRICS, "r+b") as handle:  # sparse: no disk used, but a read would take it all
        handle.truncate(run_folder.MAX_RECORD_BYTES + 1)
    with pytest.raises(UserError, match="metrics.json is larger than 64 MiB"):
        run_folder.read_metrics(run)


def test_resume_never_runs_a_pickle_in_place_of_the_checkpoint(finished_run, tiny_store, tmp_path):
    """A checkpoint whose unpickling would call os.system: refused in a real process, and the command never ran."""
    run = _copy(finished_run, tmp_path)
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (__import__("os").system, (f"touch {marker}",))

    (run / run_folder.CHECKPOINT).write_bytes(pickle.dumps({"epoch": Payload()}))
    one_error_line(customkd(*_resume_args(run, tiny_store)), "checkpoint.pt is a pickle that a weights-only load refuses")
    assert not marker.exists()


# ---------------------------------------------------------------- evaluate, predict, export of a damaged run


def _drop(key):
    return lambda config: config.pop(key)


def _set(**values):
    return lambda config: config.update(values)


DAMAGED_RUNS = {
    "student not safetensors": (lambda run: (run / run_folder.STUDENT).write_bytes(b"PK\x03\x04 a zip"),
                                "student.safetensors is not a safetensors file"),
    "student truncated": (lambda run: _truncate(run / run_folder.STUDENT), "student.safetensors is not a safetensors"),
    "config malformed": (lambda run: _truncate(run / run_folder.CONFIG), "config.json is not valid JSON"),
    "config without num_classes": (lambda run: _edit_config(run, _drop("num_classes")), "config.json has no num_classes"),
    "config without student": (lambda run: _edit_config(run, _drop("student")), "config.json has no student"),
    "classes fewer than num_classes": (lambda run: _edit_config(run, _set(classes=["a", "b"])),
                                       "num_classes 3 does not match its 2 class names"),
    "classes not the weights'": (lambda run: _edit_config(run, _set(classes=["a", "b", "c", "d"], num_classes=4)),
                                 "student.safetensors does not fit the test_efficientnet with 4 classes"),
    # JSON a parser refuses otherwise than with a JSONDecodeError (a RecursionError, a ValueError, and export's
    # UnicodeEncodeError writing the ONNX metadata), each one line
    "config nested too deeply": (lambda run: (run / run_folder.CONFIG).write_text("[" * 100_000 + "]" * 100_000),
                                 "config.json is not valid JSON (nested too deeply)"),
    "config integer of 5000 digits": (lambda run: (run / run_folder.CONFIG).write_text('{"image_size": ' + "9" * 5000
                                                                                       + "}"),
                                      "config.json is not valid JSON (Exceeds the limit (4300 digits)"),
    "config unpaired surrogate": (lambda run: _edit_config(run, _set(student="\ud800")),
                                  "config.json is not valid JSON (a string holds an unpaired surrogate"),
}


def _command(name, run, tmp_path, image) -> list:
    return {"evaluate": ["evaluate", run, "--workers", "0", "--device", "cpu"],
            "predict": ["predict", run, "--images", image, "--out", tmp_path / "p.csv", "--device", "cpu",
                        "--workers", "0"],
            "export": ["export", run, "--onnx", tmp_path / "s.onnx"]}[name]


@pytest.mark.parametrize("damage", list(DAMAGED_RUNS))
@pytest.mark.parametrize("command", ["evaluate", "predict", "export"])
def test_a_damaged_run_is_one_line_for_every_command(finished_run, tiny_folder, tmp_path, command, damage):
    run = _copy(finished_run, tmp_path)
    edit, needle = DAMAGED_RUNS[damage]
    edit(run)
    image = sorted(tiny_folder.rglob("*.png"))[0]
    line = one_error_line(invoke(*_command(command, run, tmp_path, image)), needle)
    assert str(run) in line
    assert not (tmp_path / "p.csv").exists() and not (tmp_path / "s.onnx").exists()


def test_evaluate_refuses_a_run_whose_classes_are_not_its_stores(finished_run, tmp_path):
    run = _copy(finished_run, tmp_path)
    _edit_config(run, _set(classes=["cat", "dog", "fish"]))
    one_error_line(invoke("evaluate", run, "--workers", "0", "--device", "cpu"),
                   "config.json names classes cat, dog, fish but its store has class0, class1, class2")


def test_a_damaged_run_in_a_real_process(finished_run, tmp_path):
    run = _copy(finished_run, tmp_path)
    (run / run_folder.STUDENT).write_text("not weights")
    line = one_error_line(customkd("export", run, "--onnx", tmp_path / "s.onnx"), "is not a safetensors file")
    assert re.search(r"restore the run's student\.safetensors or train the run again$", line)


def test_ctrl_c_while_a_run_file_is_written_is_the_interrupt_and_leaves_the_previous_file(tmp_path):
    """A KeyboardInterrupt inside torch.save's zip writer makes the writer's own cleanup fail ("unexpected pos");
    what reaches the caller is the interrupt (the CLI's one line and exit 130), and the previous checkpoint stays."""
    import torch

    run_folder.save_checkpoint(tmp_path, {"epoch": 0})
    before = (tmp_path / run_folder.CHECKPOINT).read_bytes()

    class InterruptedFile:
        def __init__(self, handle):
            self.handle, self.writes = handle, 0

        def write(self, data):
            self.writes += 1
            if self.writes == 3:
                raise KeyboardInterrupt
            return self.handle.write(data)

        def __getattr__(self, name):
            return getattr(self.handle, name)

    with pytest.raises(KeyboardInterrupt):
        run_folder.write_run_file(tmp_path, run_folder.CHECKPOINT,
                                  lambda handle: torch.save({"w": torch.zeros(1000)}, InterruptedFile(handle)))
    assert (tmp_path / run_folder.CHECKPOINT).read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [run_folder.CHECKPOINT]


@pytest.mark.parametrize(("edit", "needle"), [
    (_set(lr="fast"), "lr must be a number, got 'fast'"),
    (_set(setting=[]), "unknown --setting"),
    (_set(source=5), "does not hold a distill configuration"),
    (_set(num_classes="3"), "num_classes '3' is not an integer"),
    (_set(student_alias=None), "student_alias None is not a model name"),
    (_set(cache=7), "cache 7 does not exist"),  # read as the name "7", like `cache: 7` in a --config file
])
def test_a_config_json_with_values_of_the_wrong_kind_is_one_line_naming_the_run(finished_run, tmp_path, edit, needle):
    """``evaluate`` rebuilds the run's settings from config.json: each value is checked as the same key of a
    --config file is (``cache: 7`` was a TypeError traceback), and the line names the run and its file."""
    run = _copy(finished_run, tmp_path)
    _edit_config(run, edit)
    line = one_error_line(invoke("evaluate", run, "--workers", "0", "--device", "cpu"), needle)
    assert f"run {run}: config.json" in line or needle.startswith("cache")


def _declare_tensors(path: Path, grow: str, elements: int) -> None:
    """Rewrite safetensors file ``path`` with tensor ``grow`` declared as ``elements`` float32 values (the file
    made sparse to match), every other tensor as it was."""
    import struct

    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as weights:
        shapes = {key: weights.get_slice(key).get_shape() for key in weights.keys()}  # noqa: SIM118
    header, offset = {}, 0
    for key, shape in shapes.items():
        shape = [elements] if key == grow else shape
        end = offset + 4 * math.prod(shape)
        header[key] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, end]}
        offset = end
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(blob)) + blob)
        handle.truncate(8 + len(blob) + offset)


def test_a_student_file_declaring_huge_tensors_is_refused_before_it_is_read(finished_run, tmp_path):
    """A student.safetensors whose header declares one tensor of 8 GiB (a sparse file: no disk space), which
    safetensors' load_file would read whole before its shapes can be compared, and one declaring 32 MiB where the
    student has a small head: both are refused from their size and header, in one line, with the peak memory of
    the real process that of the student alone."""
    run = _copy(finished_run, tmp_path)
    student = run / run_folder.STUDENT
    _declare_tensors(student, "classifier.weight", 2**31)
    probe = ("import resource, subprocess, sys; r = subprocess.run([sys.executable, '-m', 'customkd.cli', "
             "*sys.argv[1:]], capture_output=True, text=True); sys.stderr.write(r.stderr); "
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)")
    done = subprocess.run([sys.executable, "-c", probe, "evaluate", run, "--workers", "0", "--device", "cpu"],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert done.returncode == 2 and "student.safetensors is 8590" in done.stderr, done.stderr
    assert int(done.stdout.split()[-1]) < 2 * 2**20, done.stdout  # KiB: the 8 GiB were never read

    _declare_tensors(student, "classifier.weight", 2**23)
    one_error_line(invoke("evaluate", run, "--workers", "0", "--device", "cpu"),
                   "student.safetensors does not fit the test_efficientnet with 3 classes that config.json describes "
                   "(classifier.weight is [8388608]")
