"""The written contract of a run folder: every file in one, and the only code that reads or writes them.

``contract/schema.py`` describes a store; this module describes a run. ``distill`` writes run folders, and
``evaluate``, ``predict``, ``export``, ``--resume`` and ``report`` read them, all through these names:

- :data:`FILES`: every file of a run folder — its name, who writes it, what it holds (the README's list);
- ownership: the :data:`MARKER` that ``distill`` writes into a folder it creates (only such a folder is its
  to write or resume) and the :func:`lock` held while a process writes one;
- ``config.json``: :func:`config_record` composes it (``student`` the timm name, ``student_alias`` the name
  as given), :func:`read_config` gives back a :class:`RunConfig` whose keys readers act on are checked, and
  :func:`as_given` is the one place the alias is undone;
- ``metrics.json`` (:class:`RunMetrics`) and ``metrics.csv`` (:func:`flatten`), the checkpoint (read with
  ``weights_only=True``: nothing in it runs), the student's weights;
- the report's own records beside them: ``timing.json`` and ``alignment.json``.

A run folder is a file someone may send: every reader ends a damaged, foreign or mismatched file in one
:class:`~common.errors.UserError` line naming the run, the file and the fix. Every writer writes a whole file
or none (:func:`common.files.atomic_path`); distill's writers (:func:`write_run_file`) end a write that fails
(a full disk) in one line naming the file and how to go on.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from customkd.common import files
from customkd.common.errors import UserError
from customkd.common.files import atomic_path, hold_lock, parse_json, write_json

MAX_IMAGE_SIZE = 2048  # px; a student's input side, for training and for a run's recorded preprocessing

CONFIG = "config.json"
METRICS = "metrics.json"
METRICS_CSV = "metrics.csv"
CHECKPOINT = "checkpoint.pt"
STUDENT = "student.safetensors"
METHOD_STATE = "method.safetensors"  # the method's own modules at the end (projector, θ^h_t): read, never resumed
STUDENT_BEST = "student-best.safetensors"  # with --val-fraction: the best epoch's student so far
STUDENT_LAST = "student-last.safetensors"  # with --val-fraction: the last epoch's student
MARKER = ".customkd-run"
LOCK = ".lock"
EVENTS = "events.out.tfevents.*"  # named by TensorBoard's SummaryWriter; a pattern, never written by this module
TIMING = "timing.json"
ALIGNMENT = "alignment.json"
MODEL = "model"  # a model folder in timm's local-dir layout: its own config.json and model.safetensors
MODEL_CONFIG, MODEL_WEIGHTS = f"{MODEL}/config.json", f"{MODEL}/model.safetensors"


@dataclass(frozen=True)
class RunFile:
    """One file of a run folder: which command writes it and what it holds."""

    written_by: str
    meaning: str


FILES: dict[str, RunFile] = {
    CONFIG: RunFile("distill", "every setting, the values actually used, the store's fingerprint, preprocessing, "
                               "provenance; `--config` replays it"),
    METRICS: RunFile("distill", "per-epoch records, `final` and `teacher_probe`"),
    METRICS_CSV: RunFile("distill", "the per-epoch records, one row per epoch"),
    EVENTS: RunFile("distill", "TensorBoard scalars"),
    CHECKPOINT: RunFile("distill", "everything `--resume` needs, every epoch; removed when the run finishes "
                                   "unless --keep-checkpoint"),
    METHOD_STATE: RunFile("distill", "the method's own modules at the end (projector, θ^h_t), for analysis"),
    STUDENT: RunFile("distill", "the deployable student's weights (with --val-fraction: the best epoch's)"),
    STUDENT_BEST: RunFile("distill", "with --val-fraction: the student of the best epoch by validation accuracy so "
                                     "far, rewritten when an epoch improves on it; its epoch in the metadata"),
    STUDENT_LAST: RunFile("distill", "with --val-fraction: the last epoch's student"),
    MODEL_CONFIG: RunFile("distill", "timm's model config: architecture, classes, the student's preprocessing"),
    MODEL_WEIGHTS: RunFile("distill", "the student's weights again, as timm's local-dir layout names them"),
    MARKER: RunFile("distill", "distill created this folder: it may write and resume it"),
    LOCK: RunFile("distill", "held while a process writes the folder"),
    TIMING: RunFile("report", "the command line and wall time of a report run; marks it finished"),
    ALIGNMENT: RunFile("report", "alignment metrics of a CustomKD-type run, cached"),
}
RECORDS = (CONFIG, METRICS, TIMING, ALIGNMENT)  # the JSON records a report copies next to its page
MAX_RECORD_BYTES = 64 << 20  # a JSON record of a run: kilobytes per epoch, far below this


def _refuse(run: str | Path, name: str, problem: str) -> UserError:
    return UserError(f"run {run}: {name} {problem}; restore the run's {name} or train the run again")


def exists(run: str | Path, *names: str) -> bool:
    """Whether every one of ``names`` is a file in ``run``."""
    return all((Path(run) / name).is_file() for name in names)


def has_checkpoint(run: str | Path) -> bool:
    return exists(run, CHECKPOINT)


def write_run_file(run: str | Path, name: str, write: Callable[[IO[bytes]], object]) -> None:
    """``run/name`` whole or not at all, ``write`` filling it as a binary file. A write that fails (a full disk,
    a quota) is one line naming the file and how to go on; the partial file is deleted and the file's previous
    version, if any, stays whole (the checkpoint a resume starts from is never half-written)."""
    path = Path(run) / name
    try:
        with atomic_path(path) as partial, open(partial, "wb") as handle:
            write(handle)
    except Exception as exc:
        if isinstance(exc.__context__, KeyboardInterrupt):  # Ctrl-C mid-write, then the writer's cleanup failed
            raise KeyboardInterrupt from None  # (torch's zip writer: "unexpected pos"): report the interrupt
        if not isinstance(exc, OSError):
            raise
        reason = exc.strerror or str(exc).split("\n")[0][:160] or type(exc).__name__
        then = ("continue the run with --resume from its last saved epoch" if has_checkpoint(run)
                else "rerun the same command (no epoch was saved yet)")
        raise UserError(f"writing {path} failed ({reason}); nothing half-written was left: free space, "
                        f"then {then}") from None


def _write_record(run: str | Path, name: str, record: dict) -> None:
    write_run_file(run, name, lambda handle: handle.write(json.dumps(record, indent=2).encode("utf-8")))


def is_finished(run: str | Path) -> bool:
    """A run that wrote its student (and its record)."""
    return exists(run, CONFIG, STUDENT)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:80] if text else type(exc).__name__


def _read_json(run: str | Path, name: str) -> Any:
    path = Path(run) / name
    try:
        if path.stat().st_size > MAX_RECORD_BYTES:  # checked before reading: the file may be sparse or forged
            raise _refuse(run, name, f"is larger than {MAX_RECORD_BYTES >> 20} MiB, more than any run records")
        return parse_json(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"run {run} has no {name}; pass a run folder written by `customkd distill`") from None
    except ValueError as exc:  # UnicodeDecodeError included
        raise _refuse(run, name, f"is not valid JSON ({str(exc)[:80]})") from None
    except OSError as exc:
        raise _refuse(run, name, f"cannot be read ({exc.strerror})") from None


# ---------------------------------------------------------------- ownership: the marker and the lock

def is_marked(run: str | Path) -> bool:
    return exists(run, MARKER)


def mark(run: str | Path) -> None:
    """Mark ``run`` as a folder distill created (and may write and resume)."""
    _write_record(run, MARKER, {"created_by": "customkd distill", "created": dt.datetime.now(dt.UTC).isoformat()})


def first_foreign_file(run: str | Path) -> str | None:
    """The first entry of an existing folder that is not an empty lock file (what a distill killed before marking
    the folder leaves): in an unmarked folder, a file distill did not write."""
    return next((p.name for p in sorted(Path(run).iterdir()) if not _is_lock_file(p)), None)


def _is_lock_file(path: Path) -> bool:
    return path.name == LOCK and not path.is_symlink() and path.is_file() and path.stat().st_size == 0


def first_link(run: str | Path) -> str | None:
    """The first entry of a run folder (or of its model folder) that is a link or a special file: distill writes
    only regular files there, so such an entry, which a write would follow out of the folder, is not its own."""
    root = Path(run)
    pending = [root]
    while pending:
        folder = pending.pop()
        for entry in sorted(folder.iterdir()):
            mode = entry.lstat().st_mode
            if stat.S_ISDIR(mode) and folder == root and entry.name == MODEL:
                pending.append(entry)
            elif not stat.S_ISREG(mode):
                return entry.relative_to(root).as_posix()
    return None


def remove_run(run: str | Path) -> None:
    """Delete a run folder a report starts over in: only one distill made (marked, no links) or an empty one; any
    other folder there is refused in one line and left as it is."""
    path = Path(run)
    if not (path.exists() or path.is_symlink()):
        return
    if path.is_symlink() or not path.is_dir() or not (is_marked(path) or first_foreign_file(path) is None) \
            or first_link(path) is not None:
        raise UserError(f"{path} is in the way of a report run and is not a run folder customkd distill made; "
                        "nothing was deleted: move it away or choose another --out")
    shutil.rmtree(path)


def lock(run: str | Path) -> None:
    """An exclusive lock on the run folder for as long as this process writes it (or :func:`release_locks`)."""
    try:  # never through a link: the lock file is created in the folder itself
        fd = os.open(Path(run) / LOCK, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o644)
    except OSError as exc:
        raise UserError(f"cannot create the lock file {Path(run) / LOCK} ({exc.strerror}); remove it if it is a "
                        "link, or choose another --out") from None
    if not hold_lock(fd, str(run)):
        raise UserError(f"another distill is writing {run}; wait for it or choose another --out")


def release_locks() -> None:
    """Drop every lock this process holds (one run per process; tests and the bench run several)."""
    files.release_locks()


# ---------------------------------------------------------------- config.json


def config_record(settings: dict, timm_name: str, recorded: dict) -> dict:
    """config.json's content: ``settings`` (``DistillConfig.to_dict()``) with ``student`` as the timm model name
    (``timm.create_model`` takes it) and ``student_alias`` as the name was given, then ``recorded`` (what the
    run measured and used)."""
    return {**settings, "student": timm_name, "student_alias": settings["student"], **recorded}


def as_given(values: dict) -> dict:
    """A config.json record with ``student`` as the user gave it (what DistillConfig and ``--config`` take)."""
    return {**values, "student": values["student_alias"]} if "student_alias" in values else dict(values)


@dataclass(frozen=True)
class RunConfig:
    """config.json read back: ``values`` exactly as written, and the keys every user of a run acts on, checked."""

    run: Path
    values: dict
    student: str  # the timm model name
    num_classes: int
    classes: list[str]
    image_size: int
    batch_size: int

    @property
    def settings(self) -> dict:
        """The recorded settings with the student as given (:func:`as_given`)."""
        return as_given(self.values)

    @property
    def store_fingerprint(self) -> dict | None:
        return self.values.get("store_fingerprint")


def _check_config(run: str | Path, values: object) -> RunConfig:
    if not isinstance(values, dict):
        raise _refuse(run, CONFIG, "is not a JSON object")
    missing = [k for k in ("student", "num_classes", "classes", "image_size", "batch_size") if k not in values]
    if missing:
        raise _refuse(run, CONFIG, f"has no {', '.join(missing)}")
    student, n, classes, size, batch = (values[k] for k in ("student", "num_classes", "classes", "image_size",
                                                            "batch_size"))
    for key, value in (("student", student), ("student_alias", values.get("student_alias", ""))):
        if not isinstance(value, str):
            raise _refuse(run, CONFIG, f"{key} {repr(value)[:40]} is not a model name")
    if type(size) is not int or not 1 <= size <= MAX_IMAGE_SIZE:
        raise _refuse(run, CONFIG, f"image_size {repr(size)[:40]} is not an integer in 1..{MAX_IMAGE_SIZE}")
    if type(batch) is not int or batch < 1:
        raise _refuse(run, CONFIG, f"batch_size {repr(batch)[:40]} is not a positive integer")
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise _refuse(run, CONFIG, "classes is not a list of class names")
    if type(n) is not int:
        raise _refuse(run, CONFIG, f"num_classes {repr(n)[:40]} is not an integer")
    if n != len(classes) or n < 1:
        raise _refuse(run, CONFIG, f"num_classes {n} does not match its {len(classes)} class names")
    return RunConfig(Path(run), values, student, n, classes, size, batch)


def read_config(run: str | Path) -> RunConfig:
    """config.json of a run, its student and classes checked (one line on a damaged or edited file)."""
    return _check_config(run, _read_json(run, CONFIG))


def write_config(run: str | Path, record: dict) -> None:
    _write_record(run, CONFIG, record)


# ---------------------------------------------------------------- metrics.json, metrics.csv


@dataclass(frozen=True)
class RunMetrics:
    """metrics.json: the per-epoch records, the final metrics once the run finished, the teacher probe's."""

    epochs: list[dict]
    teacher_probe: dict
    final: dict | None = None

    def to_dict(self) -> dict:
        return {"epochs": self.epochs, **({} if self.final is None else {"final": self.final}),
                "teacher_probe": self.teacher_probe}


def read_metrics(run: str | Path) -> RunMetrics:
    values = _read_json(run, METRICS)
    if not (isinstance(values, dict) and isinstance(values.get("epochs"), list)
            and isinstance(values.get("teacher_probe"), dict) and isinstance(values.get("final", {}), dict)):
        raise _refuse(run, METRICS, "is not a metrics record (epochs, teacher_probe, final)")
    return RunMetrics(values["epochs"], values["teacher_probe"], values.get("final"))


def write_metrics(run: str | Path, metrics: RunMetrics) -> None:
    _write_record(run, METRICS, metrics.to_dict())


def flatten(record: dict, prefix: str = "", lists: bool = True) -> dict:
    """{"train": {"loss": 1}} → {"train/loss": 1}; with ``lists`` a list becomes one column per item, otherwise
    it stays one value. A table (a list of lists: the confusion matrix) is no column: it stays in metrics.json."""
    flat = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, list) and any(isinstance(item, list) for item in value):
            continue
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}/", lists))
        elif isinstance(value, list) and lists:
            flat.update({f"{name}/{i}": v for i, v in enumerate(value)})
        else:
            flat[name] = value
    return flat


def named_classes(flat: dict, classes: list[str]) -> dict:
    """A flattened record with each ``…/per_class_accuracy/<i>`` column named by class ``i``'s name."""
    def name(key: str) -> str:
        head, _, index = key.rpartition("/")
        if head.endswith("per_class_accuracy") and index.isdigit() and int(index) < len(classes):
            return f"{head}/{classes[int(index)]}"
        return key
    return {name(key): value for key, value in flat.items()}


def write_metrics_csv(run: str | Path, history: list[dict], classes: list[str] | None = None) -> None:
    """metrics.csv: one row per epoch record, one column per flattened key (in order of first appearance), the
    per-class columns named by ``classes``."""
    import csv
    import io

    rows = [named_classes(flatten(record), classes or []) for record in history]
    columns = list(dict.fromkeys(k for row in rows for k in row))
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    write_run_file(run, METRICS_CSV, lambda handle: handle.write(text.getvalue().encode("utf-8")))


# ---------------------------------------------------------------- checkpoint.pt

CHECKPOINT_KEYS = ("epoch", "student", "method", "optimizer", "scheduler", "method_optimizers", "torch_rng",
                   "history")


def save_checkpoint(run: str | Path, state: dict) -> None:
    """checkpoint.pt, whole or not at all: a kill while saving never leaves a broken checkpoint."""
    import torch

    write_run_file(run, CHECKPOINT, lambda handle: torch.save(state, handle))  # a file object: its OSError surfaces


def load_checkpoint(run: str | Path, parts: tuple[str, ...] = ()) -> dict:
    """checkpoint.pt read with ``weights_only=True`` (tensors, numbers, strings and containers; nothing runs),
    its keys and its history checked; with ``parts``, only that those parts are there (a finished run's modules
    are read, nothing resumes)."""
    import pickle
    import warnings

    import torch

    try:
        with warnings.catch_warnings():  # the refusal below says it; torch's pickle-protocol warning adds nothing
            warnings.simplefilter("ignore")
            state = torch.load(Path(run) / CHECKPOINT, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"run {run} has no {CHECKPOINT}; rerun the same command without --resume to start it over") \
            from None
    except pickle.UnpicklingError:
        raise _refuse(run, CHECKPOINT, "is a pickle that a weights-only load refuses, not a checkpoint distill "
                                       "wrote (nothing in it was run)") from None
    except (RuntimeError, EOFError, OSError, ValueError, TypeError, KeyError, AttributeError, IndexError) as exc:
        raise _refuse(run, CHECKPOINT, f"is damaged ({_first_line(exc)})") from None
    problem = _checkpoint_problem(state) if not parts else _missing_parts(state, parts)
    if problem:
        raise _refuse(run, CHECKPOINT, f"is not a distill checkpoint ({problem})")
    return state


def _missing_parts(state: object, parts: tuple[str, ...]) -> str | None:
    missing = [k for k in parts if k not in state] if isinstance(state, dict) else list(parts)
    return f"no {', '.join(missing)}" if missing else None


def _checkpoint_problem(state: object) -> str | None:
    """What makes a loaded object unusable as a checkpoint, or None."""
    import torch

    missing = [k for k in CHECKPOINT_KEYS if k not in state] if isinstance(state, dict) else list(CHECKPOINT_KEYS)
    if missing:
        return f"no {', '.join(missing)}"
    if type(state["epoch"]) is not int or state["epoch"] < 0:
        return "epoch is not a count"
    rng = state["torch_rng"]
    if not (isinstance(rng, torch.Tensor) and rng.dtype == torch.uint8 and rng.shape == torch.get_rng_state().shape):
        return "torch_rng is not a generator state"
    try:
        history = parse_json(state["history"]) if isinstance(state["history"], str) else None
    except ValueError:
        history = None
    return None if isinstance(history, list) else "history is not a list of epoch records"


def restore(run: str | Path, state: dict, targets: dict) -> None:
    """``target.load_state_dict(state[key])`` for each ``key: target``; a checkpoint that does not fit is refused in
    one line naming the part."""
    for key, target in targets.items():
        try:
            target.load_state_dict(state[key])
        except (RuntimeError, KeyError, ValueError, TypeError, IndexError) as exc:
            raise _refuse(run, CHECKPOINT, f"does not fit this run's {key} ({_first_line(exc)})") \
                from None


# ---------------------------------------------------------------- student.safetensors


def save_method_state(run: str | Path, state_dict: dict) -> None:
    """The method's modules at the end of training (:data:`METHOD_STATE`), whole or not at all."""
    save_student(run, state_dict, METHOD_STATE)


def load_method_state(run: str | Path, expected: dict) -> dict:
    """A finished run's method modules (``expected``: their state dict): :data:`METHOD_STATE`, or the checkpoint's
    ``method`` part where a run kept only its checkpoint; one line when neither holds them."""
    if not exists(run, METHOD_STATE):
        return load_checkpoint(run, ("method",))["method"]
    return read_weights(run, METHOD_STATE, expected, "the run's method")


def tidy(run: str | Path, keep_checkpoint: bool) -> None:
    """A finished run keeps what describes and deploys it: the checkpoint (everything --resume needs, the largest
    file) goes unless ``keep_checkpoint``, and the lock file goes (this process still holds it until it exits)."""
    if not keep_checkpoint:
        (Path(run) / CHECKPOINT).unlink(missing_ok=True)
    (Path(run) / LOCK).unlink(missing_ok=True)


def save_student(run: str | Path, state_dict: dict, name: str = STUDENT, metadata: dict[str, str] | None = None) \
        -> None:
    """A student's weights (:data:`STUDENT`, or ``name``: :data:`STUDENT_BEST`, :data:`STUDENT_LAST`), whole or not
    at all, with the umask's permissions; ``metadata`` goes into the safetensors header."""
    from safetensors.torch import save

    # serialised here and written through Python, whose write errors (a full disk) are OSErrors, with the umask's
    # permissions like the other run files (safetensors' own writer creates 0600)
    weights = save({k: v.contiguous() for k, v in state_dict.items()}, metadata=metadata)
    write_run_file(run, name, lambda handle: handle.write(weights))


def save_best_student(run: str | Path, state_dict: dict, epoch: int) -> None:
    """:data:`STUDENT_BEST`: the best epoch's student, ``epoch`` (counted from 1) in its metadata."""
    save_student(run, state_dict, STUDENT_BEST, {"epoch": str(epoch)})


MAX_SAFETENSORS_HEADER = 100 << 20  # the largest header safetensors reads


def read_weights(run: str | Path, name: str, expected: dict, what: str, epoch: int | None = None) -> dict:
    """The tensors of safetensors run file ``name``, read only once its header names the tensors of ``expected`` (a
    state dict) with their shapes, and (with ``epoch``) that epoch in its metadata: a header may declare tensors of
    gigabytes, which would be read whole before they could be compared. ``what`` names ``expected`` in the refusal;
    FileNotFoundError passes through. A file larger than those tensors can take (in float64, with the largest header
    safetensors reads) is refused before it is opened: opening maps it whole."""
    from safetensors import SafetensorError, safe_open

    size = (Path(run) / name).stat().st_size
    most = MAX_SAFETENSORS_HEADER + 2 * sum(tensor.numel() * tensor.element_size() for tensor in expected.values())
    if size > most:
        raise _refuse(run, name, f"is {size} bytes, more than the {most} that {what} can take")
    try:
        with safe_open(str(Path(run) / name), framework="pt") as weights:
            saved = (weights.metadata() or {}).get("epoch")
            if epoch is not None and saved != str(epoch):
                raise _refuse(run, name, f"holds epoch {str(saved)[:20]}'s student, the history's best is epoch "
                                         f"{epoch}")
            problem = _misfit(expected, {key: weights.get_slice(key).get_shape() for key in weights.keys()})  # noqa: SIM118
            if problem:
                raise _refuse(run, name, f"does not fit {what} ({problem})")
            return {key: weights.get_tensor(key) for key in weights.keys()}  # noqa: SIM118 - not a dict
    except FileNotFoundError:
        raise
    except (SafetensorError, OSError, ValueError) as exc:
        raise _refuse(run, name, f"is not a safetensors file ({_first_line(exc)})") from None


def load_best_student(run: str | Path, epoch: int, expected: dict) -> dict:
    """The tensors of :data:`STUDENT_BEST`, refused in one line unless it holds the student of ``epoch`` (the best
    epoch the run's history names) with the tensors of ``expected`` (the run's student's state dict)."""
    try:
        return read_weights(run, STUDENT_BEST, expected, "the run's student", epoch)
    except FileNotFoundError:
        raise UserError(f"run {run} has no {STUDENT_BEST}, the best epoch's student its history names; restore it "
                        "or train the run again in a new --out") from None


def _link_or_copy(run: str | Path, source: str, target: str) -> None:
    """``run/target`` the same bytes as ``run/source``, whole or not at all: a hard link where the file system
    allows one, else a copy."""
    with atomic_path(Path(run) / target) as partial:
        try:
            os.link(Path(run) / source, partial)
        except OSError:
            shutil.copyfile(Path(run) / source, partial)


def keep_best_student(run: str | Path) -> None:
    """:data:`STUDENT` made the same file as :data:`STUDENT_BEST`: the chosen student is the deployable one."""
    _link_or_copy(run, STUDENT_BEST, STUDENT)


def timm_model_config(record: dict) -> dict:
    """``model/config.json``: what ``timm.create_model("local-dir:RUN/model", pretrained=True)`` reads, from a run's
    config record: the architecture, the classes, and a ``pretrained_cfg`` with the student's own input size,
    interpolation, mean, std and centre crop, so ``timm.data.resolve_data_config(model=m)`` preprocesses as
    evaluation and ``predict`` do."""
    preprocess, size = record["preprocess"], record["preprocess"]["size"]
    return {"architecture": record["student"], "num_classes": record["num_classes"],
            "label_names": list(record["classes"]),
            "pretrained_cfg": {"input_size": [3, size, size], "interpolation": preprocess["interpolation"],
                               "mean": list(preprocess["mean"]), "std": list(preprocess["std"]),
                               "crop_pct": preprocess["crop"], "crop_mode": "center",
                               "num_classes": record["num_classes"]}}


def write_model_folder(run: str | Path, record: dict) -> None:
    """``RUN/model/``, a model folder timm loads: its config and the student's weights (a hard link to
    student.safetensors where the file system allows one, else a copy), each written whole."""
    folder = Path(run) / MODEL
    folder.mkdir(exist_ok=True)
    write_json(Path(run) / MODEL_CONFIG, timm_model_config(record))
    _link_or_copy(run, STUDENT, MODEL_WEIGHTS)


def load_student_weights(config: RunConfig, model) -> None:
    """student.safetensors into ``model`` (the student config.json describes); one line when the file is not
    safetensors or its tensors do not fit that student (:func:`read_weights`: compared before they are read)."""
    run = config.run
    try:
        state = read_weights(run, STUDENT, model.state_dict(), f"the {config.student} with {config.num_classes} "
                             f"classes that {CONFIG} describes")
    except FileNotFoundError:
        raise UserError(f"run {run} has no {STUDENT}; it did not finish: resume it with --resume") from None
    model.load_state_dict(state)


def _misfit(expected: dict, shapes: dict) -> str | None:
    """The first difference between a state dict and the tensor shapes a file declares: a missing, extra or
    reshaped tensor."""
    for key, tensor in expected.items():
        if key not in shapes:
            return f"no {key}"
        if tuple(shapes[key]) != tuple(tensor.shape):
            return f"{key} is {list(shapes[key])}, the model's is {list(tensor.shape)}"
    extra = next((key for key in shapes if key not in expected), None)
    return f"unexpected {extra}" if extra else None


def student_mtime_ns(run: str | Path) -> int:
    return (Path(run) / STUDENT).stat().st_mtime_ns


# ---------------------------------------------------------------- the report's records


def read_timing(run: str | Path) -> dict:
    values = _read_json(run, TIMING)
    if not isinstance(values, dict):
        raise _refuse(run, TIMING, "is not a JSON object")
    return values


def write_timing(run: str | Path, record: dict) -> None:
    """timing.json marks a report run finished, so it is written whole or not at all."""
    write_json(Path(run) / TIMING, record)


def read_alignment(run: str | Path) -> dict | None:
    """The cached alignment.json, or None when there is none or it is not a readable record (it is then redone)."""
    try:
        values = parse_json((Path(run) / ALIGNMENT).read_text(encoding="utf-8"))
    except (OSError, ValueError):  # UnicodeDecodeError included
        return None
    return values if isinstance(values, dict) else None


def write_alignment(run: str | Path, record: dict) -> None:
    write_json(Path(run) / ALIGNMENT, record)


def copy_records(run: str | Path, to: Path) -> None:
    """The run's JSON :data:`RECORDS` that exist, copied into the folder ``to``."""
    for name in RECORDS:
        if exists(run, name):
            shutil.copy2(Path(run) / name, to / name)
