"""The distill process, top to bottom: store → split → probe → student + method → epochs → run dir."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from customkd.common import distributed
from customkd.common.devices import resolve_precision
from customkd.common.errors import UserError
from customkd.common.files import check_outside_stores
from customkd.trainer import ddp, loop, run_folder
from customkd.trainer.assemble import (
    Inputs,
    Trainee,
    build_trainee,
    epoch_plan,
    eval_batches,
    kd_step,
    load_inputs,
    seed_everything,
)
from customkd.trainer.config import DEFAULT_EPOCHS, DistillConfig
from customkd.trainer.data import (
    CachedData,
    EpochBatches,
    RunLoader,
    Split,
    StudentViews,
    chunk_batches,
    make_loader,
    run_loader,
)
from customkd.trainer.device_replay import DeviceReplay, replay_record, resolve_replay
from customkd.trainer.methods import EpochContext, resolve_method
from customkd.trainer.students import Student, resolve_student
from customkd.trainer.tracking import Tracker, absolute, eta, provenance
from customkd.trainer.view_cache import ViewCache

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistillResult:
    run_dir: str
    final: dict
    teacher_probe: dict
    seconds: float


def default_run_dir(cfg: DistillConfig) -> str:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"runs/{cfg.method}-{cfg.student}-{stamp}"


DEFAULT_WORKERS = 2  # DataLoader workers replaying views, unless resolve_workers decides otherwise

# settings a resumed run may change: where and how it runs, not what it computes
RESUME_MAY_CHANGE = ("resume", "workers", "device", "features", "out", "allow_stale", "data", "expect_fingerprint",
                     "keep_checkpoint", "view_cache")


def check_run_dir(cfg: DistillConfig) -> Path:
    """The run directory, checked but not created: a run refused later leaves nothing behind.

    A folder belongs to one run: only an empty folder or one distill created (:data:`run_folder.MARKER`) is
    written, so files the tool did not write are never overwritten; a finished or checkpointed run
    needs --resume, and --resume must not change what the run computes."""
    run = Path(cfg.out or default_run_dir(cfg))
    check_outside_stores(run, "--out", itself=True)  # first: it also refuses a path no folder can be made at
    if run.exists() and not run.is_dir():
        raise UserError(f"run directory {run} is a file; choose another --out")
    if run.is_dir() and not run_folder.is_marked(run):
        stranger = run_folder.first_foreign_file(run)
        if stranger is not None:
            raise UserError(f"--out {run} holds files that are not a customkd run (e.g. {stranger}; distill marks the "
                            f"folders it creates with {run_folder.MARKER}); choose a new or empty --out")
    link = run_folder.first_link(run) if run.is_dir() else None
    if link is not None:
        raise UserError(f"--out {run} holds {link}, a link or special file; distill writes only regular files in its "
                        "run folder and never through a link: remove it or choose a new --out")
    has_checkpoint = run_folder.has_checkpoint(run)
    if run_folder.is_finished(run) and not has_checkpoint:
        raise UserError(f"run directory {run} holds a finished run (its checkpoint is removed at the end; "
                        "--keep-checkpoint keeps it): nothing to resume there; choose another --out")
    if cfg.resume and not has_checkpoint:
        raise UserError(f"--resume needs {run / run_folder.CHECKPOINT}; that run stopped before its first checkpoint: "
                        "rerun the same command without --resume to start it over")
    if has_checkpoint and not cfg.resume:
        raise UserError(f"run directory {run} already holds a run; pass --resume to continue it or choose another --out")
    if cfg.resume:
        _check_same_settings(cfg, run_folder.read_config(run).settings, run)
    return run


def _check_same_settings(cfg: DistillConfig, recorded: dict, run: Path) -> None:
    # a setting added after the run was recorded counts as its default, which is what the run used
    defaults = {f.name: f.default for f in dataclasses.fields(DistillConfig)}
    for key, value in cfg.to_dict().items():
        if key not in RESUME_MAY_CHANGE and recorded.get(key, defaults.get(key)) != value:
            raise UserError(f"--resume of {run} with another {key!r} ({value!r}, the run used {recorded.get(key)!r}); "
                            "resume with the run's own settings or start a new --out")


def claim_run_dir(cfg: DistillConfig, run: Path) -> None:
    """Create the run folder, lock it, check it again under the lock (another run may have won), and mark it as
    distill's own."""
    try:
        run.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create run directory {run} ({exc.strerror}); choose a writable --out") from None
    run_folder.lock(run)
    check_run_dir(cfg)
    if not run_folder.is_marked(run):
        run_folder.mark(run)


class EpochFeatures:
    """Normalised features of an epoch's (row, view) pairs, read lazily: ``[positions] -> [B, D]``."""

    def __init__(self, source, rows: np.ndarray, views: np.ndarray, norm: loop.FeatureNorm, device) -> None:
        self.source, self.rows, self.views, self.norm, self.device = source, rows, views, norm, device

    def __getitem__(self, positions: torch.Tensor) -> torch.Tensor:
        p = positions.numpy()
        return loop.to_device(self.norm(self.source[self.rows[p], self.views[p]]), self.device)


@dataclass
class BestEpoch:
    """With a validation split, the epoch kept by validation accuracy, and its student's tensors (on the CPU)."""

    epoch: int = 0  # counted from 1; 0 before the first epoch
    accuracy: float = -math.inf
    state: dict | None = None


def best_epoch(history: list[dict]) -> tuple[int, float]:
    """(epoch, validation accuracy) of the best epoch record. An epoch must beat every earlier one, so a tie keeps
    the earlier epoch, as Lightning's ``ModelCheckpoint(mode="max")`` and Keras's ``save_best_only`` do."""
    best = (0, -math.inf)
    for record in history:
        if record["val"]["accuracy"] > best[1]:
            best = (record["epoch"], record["val"]["accuracy"])
    return best


def cpu_copy(state_dict: dict) -> dict:
    return {key: tensor.detach().to("cpu", copy=True) for key, tensor in state_dict.items()}


@dataclass
class Session:
    """One training run: its inputs and trainee (:mod:`trainer.assemble`), where it writes, what it has done.
    Built once by :func:`setup`, advanced by :func:`run_epoch`."""

    cfg: DistillConfig
    env: distributed.DistEnv
    device: torch.device
    run: Path
    inputs: Inputs
    trainee: Trainee
    history: list = field(default_factory=list)
    best: BestEpoch = field(default_factory=BestEpoch)
    replay: DeviceReplay | None = None  # --replay device: batches replayed from the decoded images
    cache: ViewCache | None = None  # the worker replay's cache of replayed views

    @property
    def data(self) -> CachedData:
        return self.inputs.data

    @property
    def split(self) -> Split:
        return self.inputs.split

    @property
    def student(self) -> Student:
        return self.trainee.student

    @property
    def method(self) -> torch.nn.Module:
        return self.trainee.method

    @property
    def num_classes(self) -> int:
        return self.inputs.num_classes

    @property
    def epochs(self) -> int:
        return self.cfg.epochs_for(len(self.split.train))

    @property
    def validating(self) -> bool:
        """Whether epochs are scored on a validation split (``--val-fraction``) rather than on the test rows."""
        return len(self.split.val) > 0

    @property
    def scored(self) -> str:
        """The epoch record's key of the per-epoch evaluation: ``val`` or ``eval`` (the test rows)."""
        return "val" if self.validating else "eval"


def setup(cfg: DistillConfig, env: distributed.DistEnv, device: torch.device) -> Session:
    """Check the run folder, read the inputs, build the trainee, then claim the folder (seeded once, up front)."""
    resolve_method(cfg.method)
    resolve_student(cfg.student)
    run = Path(distributed.on_main(env, lambda: str(check_run_dir(cfg))))
    seed_everything(cfg.seed)
    pinned = run_folder.read_config(run).store_fingerprint if cfg.resume else None
    inputs = load_inputs(cfg, device, pinned)
    cache = view_cache(cfg, inputs.data, inputs.split.rows)
    cfg = dataclasses.replace(cfg, workers=resolve_workers(cfg.workers, device, cache is not None))
    epochs = cfg.epochs_for(len(inputs.split.train))
    log.info("%s", announce(cfg, inputs.split, epochs, device))
    if epochs > 4 * max(inputs.data.n_views - 1, 1):
        log.warning("%d epochs over %d cached views per sample: views repeat often", epochs, inputs.data.n_views)
    trainee = build_trainee(cfg, inputs, device, env)
    distributed.on_main(env, lambda: claim_run_dir(cfg, run))  # last: a run refused above leaves nothing behind
    return Session(cfg, env, device, run, inputs, trainee, cache=cache)


def announce(cfg: DistillConfig, split: Split, epochs: int, device: torch.device) -> str:
    """One line, printed once at the start: the labels, epochs, batch, workers, size and precision this run
    uses, and which of them were chosen for the user rather than given."""
    labeled = split.n_labeled
    if cfg.labels_per_class is not None:
        labels = f"{labeled} labeled (--labels-per-class {cfg.labels_per_class})"
    elif cfg.label_fraction is not None:
        labels = f"{labeled} labeled (--label-fraction {cfg.label_fraction:g})"
    else:
        labels = f"{labeled} labeled (every stored label; --labels-per-class or --label-fraction simulate a budget)"
    if cfg.epochs is not None:
        schedule = f"{epochs} KD epochs (--epochs)"
    else:
        schedule = (f"{epochs} KD epochs (no --epochs: at least {DEFAULT_EPOCHS}, extended to --min-steps "
                    f"{cfg.min_steps} optimizer steps; --epochs N runs exactly N)")
    return (f"{cfg.setting}: {len(split.train)} training rows, {labels}, {len(split.train) - labeled} unlabeled, "
            f"{len(split.val)} validation, {len(split.eval)} held out; {schedule}; batch {cfg.batch_size}, "
            f"{cfg.workers} workers, {cfg.image_size} px, {device}, {resolve_precision('auto', device)}")


def run_config(s: Session, started: dt.datetime, replay: dict | None = None) -> dict:
    """config.json: every setting, the values actually used, the store's fingerprint, how to preprocess an image
    for the student, and where the run came from (:func:`trainer.run_folder.config_record` names the student)."""
    fingerprint = s.data.manifest.fingerprint
    preprocess = {"size": s.cfg.image_size, "mean": list(s.student.mean), "std": list(s.student.std),
                  "interpolation": "bilinear", "crop": fingerprint.augmentation.centre_crop}
    return run_folder.config_record(s.cfg.to_dict(), resolve_student(s.cfg.student), {
            "preprocess": preprocess, "provenance": provenance(s.cfg.cache, s.cfg.student_weights, started),
            "out": str(s.run.resolve()), "teacher": fingerprint.teacher.to_dict(),
            "teacher_names": list(s.data.manifest.teacher_names),
            "store_fingerprint": fingerprint.hashes(),
            "n_train": len(s.split.train), "n_labeled": s.split.n_labeled, "n_eval": len(s.split.eval),
            "n_val": len(s.split.val),
            "num_classes": s.num_classes, "classes": s.data.classes, "device": str(s.device),
            "world_size": s.env.world, "batch_rule": ddp.BATCH_RULE,
            "effective_epochs": s.epochs, "optimizer_steps": s.epochs * s.cfg.steps_per_epoch(len(s.split.train)),
            "warmup_steps": s.cfg.warmup_steps(len(s.split.train)),
            "student_activation": type(s.method.dims.student_activation).__name__,
            "memory_format_used": "channels_last" if s.student.channels_last else "contiguous",
            "replay_used": replay or {"mode": "workers"}})


def resume(s: Session) -> int:
    """Load the run's checkpoint into the session; returns the first epoch still to run."""
    state, t = run_folder.load_checkpoint(s.run), s.trainee
    run_folder.restore(s.run, state, {"student": t.student, "method": t.method, "optimizer": t.optimizer,
                                      "scheduler": t.scheduler,
                                      "method_optimizers": SimpleNamespace(load_state_dict=t.method.load_optimizer_states)})
    torch.set_rng_state(state["torch_rng"])
    s.history = json.loads(state["history"])
    if s.validating:
        resume_best(s, state["epoch"] + 1)
    log.info("resuming %s after epoch %d", s.run, state["epoch"] + 1)
    return state["epoch"] + 1


def resume_best(s: Session, checkpointed: int) -> None:
    """The best epoch so far, from the restored history, and its student: the restored student when it is the
    checkpoint's own epoch (its student-best file may not have been written: the best file follows the
    checkpoint), else the run's student-best file, which must hold that epoch."""
    epoch, accuracy = best_epoch(s.history)
    if epoch == checkpointed:
        s.best = BestEpoch(epoch, accuracy, cpu_copy(s.student.model.state_dict()))
        if s.env.main:
            run_folder.save_best_student(s.run, s.best.state, epoch)
    else:
        s.best = BestEpoch(epoch, accuracy, run_folder.load_best_student(s.run, epoch, s.student.model.state_dict()))


def evaluate_epoch(s: Session, loader: EpochBatches | torch.utils.data.DataLoader) -> dict:
    """Metrics over the rows the loader holds (the held-out or validation rows: the same batches every epoch), each
    rank predicting its share."""
    parts = distributed.all_gather_objects(s.env, loop.predict(s.student, loader, s.device))
    seen, preds = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    return loop.classification_metrics(s.data.labels[seen], preds, s.num_classes)


def epoch_stage(s: Session, epoch: int, order: np.ndarray, views: np.ndarray) -> dict | None:
    """The method's work before this KD epoch, on this epoch's (row, view) pairs; when it ran, the method's tensors
    are then made equal to rank 0's on every rank. What it keeps on the host (CustomKD's round count) agrees
    without that: every rank runs every stage."""
    inputs = s.inputs
    ctx = EpochContext(epoch, s.cfg.seed, s.student.head, EpochFeatures(inputs.data.features, order, views,
                                                                        inputs.norm, s.device),
                       torch.from_numpy(inputs.row_labels[order]).to(s.device), inputs.probe, s.cfg.batch_size,
                       inputs.data.streaming)
    record = s.method.epoch_stage(ctx)
    if record is not None:
        ddp.broadcast_module(s.env, s.method)
    return record


def run_epoch(s: Session, epoch: int, train_loader: RunLoader, eval_loader: RunLoader,
              on_step: loop.StepLog | None = None) -> dict:
    """The method's epoch stage (when it has one due), KD epoch, evaluation; the loaders live for the whole run."""
    record: dict = {"epoch": epoch + 1}
    plan = epoch_plan(s.cfg, s.inputs, epoch, s.env)
    stage = epoch_stage(s, epoch, plan.order, plan.views)
    if stage is not None:
        record[s.method.stage_name] = stage
    record["train"] = loop.train_epoch(kd_step(s.cfg, s.inputs, s.trainee, s.device, s.env),
                                       train_loader.epoch(epoch), epoch, plan.counts, on_step)
    record[s.scored] = evaluate_epoch(s, eval_loader.epoch(epoch))
    return record


def keep_best(s: Session) -> None:
    """With a validation split: when the latest epoch is the best so far, keep its student (every rank, in memory,
    for the test at the end; rank 0 writes it after the epoch's checkpoint, which a resume relies on)."""
    epoch, accuracy = best_epoch(s.history)
    if epoch != s.best.epoch:
        s.best = BestEpoch(epoch, accuracy, cpu_copy(s.student.model.state_dict()))
        if s.env.main:
            run_folder.save_best_student(s.run, s.best.state, epoch)


def save_epoch(s: Session, epoch: int) -> None:
    t = s.trainee
    run_folder.save_checkpoint(s.run, {
        "epoch": epoch, "student": t.student.state_dict(), "method": t.method.state_dict(),
        "optimizer": t.optimizer.state_dict(), "scheduler": t.scheduler.state_dict(),
        "method_optimizers": t.method.optimizer_states(),
        "torch_rng": torch.get_rng_state(), "history": json.dumps(s.history)})
    run_folder.write_metrics(s.run, run_folder.RunMetrics(s.history, s.inputs.probe_metrics))
    run_folder.write_metrics_csv(s.run, s.history, s.data.classes)


def log_epoch(s: Session, epoch: int, record: dict) -> None:
    done = [r["epoch_seconds"] for r in s.history if "epoch_seconds" in r]
    scored = record[s.scored]
    log.info("epoch %d/%d  loss %.3f  %s acc %.3f  bal acc %.3f  (%.0f img/s, %.0fs, ETA %s)", epoch + 1, s.epochs,
             record["train"]["loss"], s.scored, scored["accuracy"], scored["balanced_accuracy"],
             record["train"]["samples_per_s"], record["epoch_seconds"],
             eta(sum(done) / len(done) * (s.epochs - epoch - 1)))


FINAL_KEYS = ("accuracy", "balanced_accuracy", "macro_f1", "per_class_accuracy", "confusion_matrix")


def score_on_test(s: Session, dataset: StudentViews) -> dict:
    """The student's metrics on the test rows, each rank predicting its share (as :func:`evaluate_epoch`)."""
    rows = s.split.eval[s.env.rank :: s.env.world]
    if s.replay is not None:
        loader = s.replay.batches(chunk_batches(rows, np.zeros(len(rows), np.int64), s.cfg.batch_size))
    else:
        loader = make_loader(dataset, rows, np.zeros(len(rows), np.int64), s.cfg.batch_size, s.cfg.workers,
                             device=s.device)
    metrics = evaluate_epoch(s, loader)
    return {k: metrics[k] for k in FINAL_KEYS}


def choose_student(s: Session, dataset: StudentViews) -> dict:
    """With a validation split: the last epoch's and the best epoch's students tested once each; the best one
    becomes the run's student (student.safetensors, the same file as student-best.safetensors), the last one
    stays in student-last.safetensors. ``final``: the chosen student's test metrics, its epoch, and the last's."""
    last_state, last = cpu_copy(s.student.model.state_dict()), score_on_test(s, dataset)
    chosen = last
    if s.best.epoch != s.epochs:
        s.student.model.load_state_dict(s.best.state)
        chosen = score_on_test(s, dataset)
    if s.env.main:
        run_folder.save_student(s.run, last_state, run_folder.STUDENT_LAST)
        run_folder.keep_best_student(s.run)
    return {**chosen, "chosen_epoch": s.best.epoch, "chosen_by": "val accuracy", "val_accuracy": s.best.accuracy,
            "last": {"epoch": s.epochs, **last}}


def resolve_workers(workers: int | None, device: torch.device, cached: bool) -> int:
    """``--workers`` as given; by default :data:`DEFAULT_WORKERS`, or none on a CPU when the view cache holds every
    view of the run (``cached``). There the workers' processes compete with the training threads for the cores and
    their hand-off costs more than reading a cached view in the training process: in ``make bench`` the student
    trained at 0.84x the rate of device-resident batches with 2 workers and 1.0x with none
    (docs/benchmarks.md, ``student_step_vs_synthetic``). The first epoch then replays in the training process."""
    if workers is not None:
        return workers
    return 0 if device.type == "cpu" and cached else DEFAULT_WORKERS


def view_cache(cfg: DistillConfig, data, rows: np.ndarray) -> ViewCache | None:
    """The loader's cache of replayed views (:mod:`trainer.view_cache`); None with ``--no-view-cache`` or when the
    views of ``rows`` do not fit it."""
    if not cfg.view_cache:
        return None
    return ViewCache.for_rows(rows, len(data.views), data.views.shape[1], cfg.image_size)


def make_loaders(s: Session, train_ds: StudentViews, eval_ds: StudentViews, scored: list, epochs: range,
                 decoded) -> tuple:
    """The run's training and evaluation loaders: DataLoader workers replaying with PIL, or (``decoded`` images,
    ``--replay device``) the same batches replayed on the device."""
    cfg = s.cfg
    plan = lambda epoch: epoch_plan(cfg, s.inputs, epoch, s.env).batches  # noqa: E731
    if decoded is not None:
        s.replay = DeviceReplay(decoded, s.data.views, cfg.image_size, cfg.replay_engine, s.device)
        train = DeviceReplay(decoded, s.data.views, cfg.image_size, cfg.replay_engine, s.device, plan)
        return train, DeviceReplay(decoded, s.data.views, cfg.image_size, cfg.replay_engine, s.device,
                                   lambda epoch: scored)
    return (run_loader(train_ds, plan, epochs, cfg.workers, s.device).start(),
            run_loader(eval_ds, lambda epoch: scored, epochs, cfg.workers, s.device).start())


def train(s: Session, started: dt.datetime) -> dict:
    """Every epoch still to run (the method's stage when due, KD, evaluation, checkpoint); the final metrics."""
    cfg, env = s.cfg, s.env
    decoded = resolve_replay(cfg.replay, s.data, s.split.rows, s.device, cfg.ssl == "fixmatch",
                             cfg.workers or DEFAULT_WORKERS)
    cache = s.cache if decoded is None else None
    eval_ds = StudentViews(s.data, cfg.image_size, cache=cache)
    train_ds = StudentViews(s.data, cfg.image_size, strong_seed=cfg.seed, cache=cache) \
        if cfg.ssl == "fixmatch" else eval_ds
    replayed = {**replay_record(decoded, cfg.replay_engine), **(cache.record() if cache is not None else {})}
    # a resumed run keeps its record
    config = run_config(s, started, replayed) if env.main and not cfg.resume else None
    if config is not None:
        run_folder.write_config(s.run, config)
    first_epoch = resume(s) if cfg.resume else 0
    # one loader per purpose for the whole run, both started here: persistent workers are forked once,
    # together, so the copy-on-write faults a fork costs the training process fall into the first epoch only
    epochs = range(first_epoch, s.epochs)
    scored = eval_batches(cfg, s.inputs, env, s.split.val if s.validating else None)
    train_loader, eval_loader = make_loaders(s, train_ds, eval_ds, scored, epochs, decoded)
    tracker = Tracker(s.run, env.main)
    try:
        if config is not None:
            tracker.log_config(config, s.scored)
        for epoch in epochs:
            epoch_started, lr = time.perf_counter(), s.trainee.optimizer.param_groups[0]["lr"]
            steps = tracker.step_log(epoch, cfg.steps_per_epoch(len(s.split.train)))
            record = run_epoch(s, epoch, train_loader, eval_loader, steps)
            record.update(lr=lr, epoch_seconds=time.perf_counter() - epoch_started)
            s.history.append(record)
            log_epoch(s, epoch, record)
            tracker.log_epoch(record)
            if env.main:
                save_epoch(s, epoch)
            if s.validating:
                keep_best(s)
    finally:
        tracker.close()
        train_loader.shutdown()
        eval_loader.shutdown()
    return finish(s, eval_ds)


def finish(s: Session, eval_ds: StudentViews) -> dict:
    """The final metrics; rank 0 writes the run's student, the method's modules, its model folder and metrics.json
    with ``final``, then removes what only training needed (:func:`trainer.run_folder.tidy`)."""
    if s.validating:
        final = choose_student(s, eval_ds)
    else:
        final = {k: s.history[-1]["eval"][k] for k in FINAL_KEYS}
        if s.env.main:
            run_folder.save_student(s.run, s.student.model.state_dict())
    if s.env.main:
        run_folder.save_method_state(s.run, s.method.state_dict())
        run_folder.write_model_folder(s.run, run_folder.read_config(s.run).values)
        run_folder.write_metrics(s.run, run_folder.RunMetrics(s.history, s.inputs.probe_metrics, final))
        run_folder.tidy(s.run, s.cfg.keep_checkpoint)
    distributed.barrier(s.env)
    return final


def distill(cfg: DistillConfig) -> DistillResult:
    """Train one student from a complete store into a run folder (:mod:`trainer.run_folder`).

    Under torchrun every rank runs this; only rank 0 writes files."""
    started, clock = dt.datetime.now(dt.UTC), time.perf_counter()
    cfg = dataclasses.replace(cfg, cache=absolute(cfg.cache))  # a run is usable from any directory
    env, device = distributed.init_distributed(cfg.device)
    try:
        s = setup(cfg, env, device)
        final = train(s, started)
    finally:
        run_folder.release_locks()
    return DistillResult(str(s.run), final, s.inputs.probe_metrics, time.perf_counter() - clock)
