"""The distill process, top to bottom: store → split → probe → student + method → epochs → run dir."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from common import distributed
from common.errors import UserError
from common.files import atomic_path, write_json
from trainer import ddp, loop
from trainer.config import DistillConfig
from trainer.data import (
    CachedData,
    EpochBatches,
    RunLoader,
    Split,
    StudentViews,
    chunk_batches,
    epoch_order,
    epoch_views,
    load_cached_data,
    make_split,
    run_loader,
)
from trainer.feature_range import output_activation
from trainer.features import block_shuffle, feature_stats
from trainer.methods import MethodContext, create_method, resolve_method
from trainer.probe import accuracy, fit_teacher_probe
from trainer.students import create_student, resolve_student
from trainer.tracking import Tracker, absolute, eta, provenance

log = logging.getLogger(__name__)
CHECKPOINT = "checkpoint.pt"


@dataclass(frozen=True)
class DistillResult:
    run_dir: str
    final: dict
    teacher_probe: dict
    seconds: float


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def default_run_dir(cfg: DistillConfig) -> str:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"runs/{cfg.method}-{cfg.student}-{stamp}"


LOCK = ".lock"
# settings a resumed run may change: where and how it runs, not what it computes
RESUME_MAY_CHANGE = ("resume", "workers", "device", "features", "out", "allow_stale", "data", "expect_fingerprint")
_HELD_LOCKS: dict[str, object] = {}


def _inside_store(run: Path) -> Path | None:
    for parent in [run.resolve(), *run.resolve().parents]:
        if (parent / "zarr.json").is_file():
            return parent
    return None


def check_run_dir(cfg: DistillConfig) -> Path:
    """The run directory, checked but not created: a run refused later leaves nothing behind.

    A folder belongs to one run: a folder holding other files is refused, a finished or checkpointed
    run needs --resume, and --resume must not change what the run computes."""
    run = Path(cfg.out or default_run_dir(cfg))
    if run.exists() and not run.is_dir():
        raise UserError(f"run directory {run} is a file; choose another --out")
    store = _inside_store(run)
    if store is not None:
        raise UserError(f"--out {run} is inside the feature store {store}; choose a folder outside it")
    has_config, has_checkpoint = (run / "config.json").is_file(), (run / CHECKPOINT).is_file()
    if run.is_dir() and not has_config and any(p.name != LOCK for p in run.iterdir()):
        raise UserError(f"{run} holds files that are not a customkd run; choose a new or empty --out")
    if cfg.resume and not has_checkpoint:
        raise UserError(f"--resume needs {run / CHECKPOINT}; that run stopped before its first checkpoint: "
                        "rerun the same command without --resume to start it over")
    if has_checkpoint and not cfg.resume:
        raise UserError(f"run directory {run} already holds a run; pass --resume to continue it or choose another --out")
    if cfg.resume:
        _check_same_settings(cfg, json.loads((run / "config.json").read_text()), run)
    return run


def _check_same_settings(cfg: DistillConfig, recorded: dict, run: Path) -> None:
    recorded = {**recorded, "student": recorded.get("student_alias", recorded.get("student"))}  # as it was given
    for key, value in cfg.to_dict().items():
        if key not in RESUME_MAY_CHANGE and recorded.get(key) != value:
            raise UserError(f"--resume of {run} with another {key!r} ({value!r}, the run used {recorded.get(key)!r}); "
                            "resume with the run's own settings or start a new --out")


def release_run_dir() -> None:
    """Drop every lock this process holds (one run per process; tests and the bench run several)."""
    for handle in _HELD_LOCKS.values():
        handle.close()
    _HELD_LOCKS.clear()


def claim_run_dir(cfg: DistillConfig, run: Path) -> None:
    """Create the run folder, lock it, and check it again under the lock (another run may have won)."""
    try:
        run.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create run directory {run} ({exc.strerror}); choose a writable --out") from None
    lock_run_dir(run)
    check_run_dir(cfg)


def lock_run_dir(run: Path) -> None:
    """An exclusive lock on the run folder for as long as this process writes it."""
    import fcntl

    handle = open(run / LOCK, "a")  # noqa: SIM115 - held open until the process ends
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise UserError(f"another distill is writing {run}; wait for it or choose another --out") from None
    _HELD_LOCKS[str(run)] = handle


def make_optimizers(cfg: DistillConfig, student, method, steps: int):
    params = list(student.parameters()) + method.student_side_parameters()
    if cfg.optimizer == "sgd":
        optimizer = torch.optim.SGD(params, lr=cfg.effective_lr, momentum=0.9, weight_decay=cfg.weight_decay, nesterov=True)
    else:
        optimizer = torch.optim.AdamW(params, lr=cfg.effective_lr, weight_decay=cfg.weight_decay)
    return optimizer, loop.cosine_schedule(optimizer, steps), make_customizer_optimizer(cfg, method)


def make_customizer_optimizer(cfg: DistillConfig, method) -> torch.optim.Optimizer | None:
    """AdamW on θ^h_t (and a jointly trained random head); its weight decay bounds θ^h_t's scale."""
    if not method.customizes:
        return None
    return torch.optim.AdamW(method.customizer_parameters(), lr=cfg.customizer_lr,
                             weight_decay=cfg.customizer_weight_decay)


def flatten(record: dict, prefix: str = "") -> dict:
    """{"train": {"loss": 1}} → {"train/loss": 1}; lists become one column per item."""
    flat = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}/"))
        elif isinstance(value, list):
            flat.update({f"{name}/{i}": v for i, v in enumerate(value)})
        else:
            flat[name] = value
    return flat


def write_metrics_csv(path: Path, history: list[dict]) -> None:
    import csv

    rows = [flatten(record) for record in history]
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with atomic_path(path) as partial, open(partial, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


class EpochFeatures:
    """Normalised features of an epoch's (row, view) pairs, read lazily: ``[positions] -> [B, D]``."""

    def __init__(self, source, rows: np.ndarray, views: np.ndarray, norm: loop.FeatureNorm, device) -> None:
        self.source, self.rows, self.views, self.norm, self.device = source, rows, views, norm, device

    def __getitem__(self, positions: torch.Tensor) -> torch.Tensor:
        p = positions.numpy()
        return loop.to_device(self.norm(self.source[self.rows[p], self.views[p]]), self.device)


def fit_probe(data: CachedData, split: Split, norm: loop.FeatureNorm, seed: int):
    """θ^c_t on centre-view features of labeled training samples; accuracy on the eval rows."""
    labeled = split.train[split.train_labels >= 0]
    centre = norm(data.features[labeled, 0])
    probe, val_acc = fit_teacher_probe(centre, torch.from_numpy(data.labels[labeled]), len(data.classes), seed)
    eval_acc = accuracy(probe, norm(data.features[split.eval, 0]), torch.from_numpy(data.labels[split.eval]))
    return probe, {"accuracy": eval_acc, "heldout_labeled_accuracy": val_acc, "n_labeled": len(labeled)}


@dataclass
class Session:
    """Everything one training run holds; built once by :func:`setup`, advanced by :func:`run_epoch`."""

    cfg: DistillConfig
    env: distributed.DistEnv
    device: torch.device
    run: Path
    data: CachedData
    split: Split
    norm: loop.FeatureNorm
    probe: torch.nn.Linear
    probe_metrics: dict
    student: torch.nn.Module
    method: torch.nn.Module
    model: torch.nn.Module  # DistillModule, DDP-wrapped under torchrun
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    customizer_opt: torch.optim.Optimizer | None
    row_labels: np.ndarray
    history: list = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.data.classes)

    @property
    def epochs(self) -> int:
        return self.cfg.epochs_for(len(self.split.train))


def setup(cfg: DistillConfig, env: distributed.DistEnv, device: torch.device) -> Session:
    resolve_method(cfg.method)
    resolve_student(cfg.student)
    run = Path(distributed.on_main(env, lambda: str(check_run_dir(cfg))))
    seed_everything(cfg.seed)
    pinned = json.loads((run / "config.json").read_text())["store_fingerprint"] if cfg.resume else None
    data = load_cached_data(cfg, pinned)
    split = make_split(cfg, data)
    if cfg.epochs > 4 * max(data.n_views - 1, 1):
        log.warning("%d epochs over %d cached views per sample: views repeat often", cfg.epochs, data.n_views)
    norm = loop.FeatureNorm(cfg.feature_norm, stats=feature_stats(data.features, split.train, data.n_views))
    probe, probe_metrics = fit_probe(data, split, norm, cfg.seed)
    student = loop.to_memory_format(create_student(cfg.student, len(data.classes), cfg.image_size,
                                                   cfg.student_pretrained, cfg.student_weights).to(device), device)
    activation = output_activation(student.features, student, cfg.image_size)
    method = create_method(cfg.method, MethodContext(data.features.shape[-1], student.feature_dim,
                                                     len(data.classes), cfg, activation)).to(device)
    model = loop.DistillModule(student, method)
    if env.active:
        if device.type == "cuda":  # per-rank BatchNorm statistics would make results depend on the rank count
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None,
                                        find_unused_parameters=True)  # the customizer trains outside DDP
    steps = cfg.epochs_for(len(split.train)) * cfg.steps_per_epoch(len(split.train))
    optimizer, scheduler, customizer_opt = make_optimizers(cfg, student, method, steps)
    distributed.on_main(env, lambda: claim_run_dir(cfg, run))  # last: a run refused above leaves nothing behind
    row_labels = np.full(len(data.labels), -1, dtype=np.int64)
    row_labels[split.train] = split.train_labels
    return Session(cfg, env, device, run, data, split, norm, probe.to(device), probe_metrics, student, method,
                   model, optimizer, scheduler, customizer_opt, row_labels)


def run_config(s: Session, started: dt.datetime) -> dict:
    """config.json: every setting, the values actually used, the store's fingerprint, how to preprocess an image
    for the student, and where the run came from. ``student`` is the timm model name (``timm.create_model``
    takes it); ``student_alias`` is the name as given."""
    recipe = s.data.manifest["fingerprint"]["augmentation"]["recipe"]
    preprocess = {"size": s.cfg.image_size, "mean": list(s.student.mean), "std": list(s.student.std),
                  "interpolation": "bilinear", "crop": recipe["centre_crop"]}
    return {**s.cfg.to_dict(), "student": resolve_student(s.cfg.student), "student_alias": s.cfg.student,
            "preprocess": preprocess, "provenance": provenance(s.cfg.cache, s.cfg.student_weights, started),
            "out": str(s.run.resolve()), "teacher": s.data.manifest["fingerprint"]["teacher"],
            "store_fingerprint": {k: v["hash"] for k, v in s.data.manifest["fingerprint"].items()},
            "n_train": len(s.split.train), "n_labeled": s.split.n_labeled, "n_eval": len(s.split.eval),
            "num_classes": s.num_classes, "classes": s.data.classes, "device": str(s.device),
            "world_size": s.env.world, "batch_rule": ddp.BATCH_RULE,
            "effective_epochs": s.epochs, "optimizer_steps": s.epochs * s.cfg.steps_per_epoch(len(s.split.train)),
            "student_activation": type(s.method.ctx.student_activation).__name__,
            "alternation": "after customize_warmup KD epochs, one customization epoch before every "
                           "alternate_every-th KD epoch"}


def resume(s: Session) -> int:
    """Load the run's checkpoint into the session; returns the first epoch still to run."""
    state = loop.load_checkpoint(s.run / CHECKPOINT)
    s.student.load_state_dict(state["student"])
    s.method.load_state_dict(state["method"])
    s.optimizer.load_state_dict(state["optimizer"])
    s.scheduler.load_state_dict(state["scheduler"])
    if s.customizer_opt is not None:
        s.customizer_opt.load_state_dict(state["customizer_optimizer"])
    torch.set_rng_state(state["torch_rng"])
    s.history = json.loads(state["history"])
    log.info("resuming %s after epoch %d", s.run, state["epoch"] + 1)
    return state["epoch"] + 1


def eval_batches(s: Session) -> list[list[tuple]]:
    """This rank's share of the held-out rows, centre views, the same every epoch."""
    rows = s.split.eval[s.env.rank :: s.env.world]
    return chunk_batches(rows, np.zeros(len(rows), np.int64), s.cfg.batch_size)


def evaluate_epoch(s: Session, loader: EpochBatches) -> dict:
    """Eval metrics over the held-out rows (the same batches every epoch), each rank predicting its share."""
    parts = distributed.all_gather_objects(s.env, loop.predict(s.student, loader, s.device))
    seen, preds = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    return loop.classification_metrics(s.data.labels[seen], preds, s.num_classes)


def customize(s: Session, epoch: int, order: np.ndarray, views: np.ndarray) -> dict:
    """One customization epoch on this epoch's views; θ^h_t then equals rank 0's on every rank."""
    cfg, data = s.cfg, s.data
    if cfg.customizer_reset:
        torch.manual_seed(cfg.seed * 1000 + epoch)
        for module in s.method.customizer.modules():
            if isinstance(module, torch.nn.Linear):
                module.reset_parameters()
        s.customizer_opt = make_customizer_optimizer(cfg, s.method)
    generator = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
    record = loop.customize_epoch(
        s.method, s.student.head, EpochFeatures(data.features, order, views, s.norm, s.device),
        torch.from_numpy(s.row_labels[order]).to(s.device), s.probe, s.customizer_opt, generator,
        batch_size=cfg.batch_size, order=torch.arange(len(order)) if data.streaming else None)
    ddp.broadcast_module(s.env, s.method)
    return record


def epoch_plan(s: Session, epoch: int) -> tuple[np.ndarray, np.ndarray, list, list]:
    """The epoch's row order ``[T]``, views ``[T]``, this rank's batches and their global counts:
    pure functions of (seed, epoch), so resume replays them and the loader can start the next epoch early."""
    cfg, data = s.cfg, s.data
    positions = (block_shuffle(s.split.train, data.shard_size, epoch, cfg.seed) if data.streaming
                 else epoch_order(len(s.split.train), epoch, cfg.seed))
    order = s.split.train[positions]
    views = epoch_views(order, data.n_views, epoch, cfg.view_sampling, cfg.seed)
    items = list(zip(order.tolist(), views.tolist(), [epoch] * len(order), strict=True))
    batches, counts = ddp.split_global_batches(items, cfg.batch_size, s.env, s.row_labels)
    return order, views, batches, counts


def run_epoch(s: Session, epoch: int, train_loader: RunLoader, eval_loader: RunLoader) -> dict:
    """Customization epoch (when due), KD epoch, evaluation; the loaders live for the whole run."""
    cfg, data = s.cfg, s.data
    record: dict = {"epoch": epoch + 1}
    order, views, _, counts = epoch_plan(s, epoch)
    if s.method.customizes and cfg.customizes_at(epoch):
        record["customize"] = customize(s, epoch, order, views)
    record["train"] = loop.train_epoch(
        s.student, s.method, train_loader.epoch(epoch), s.row_labels, data.features, s.norm,
        s.probe, s.optimizer, s.scheduler, epoch, cfg.grad_clip, s.device,
        (cfg.fixmatch_threshold, cfg.fixmatch_weight) if cfg.ssl == "fixmatch" else None, s.model, counts, s.env)
    record["eval"] = evaluate_epoch(s, eval_loader.epoch(epoch))
    return record


def save_epoch(s: Session, epoch: int) -> None:
    loop.save_checkpoint(s.run / CHECKPOINT, {
        "epoch": epoch, "student": s.student.state_dict(), "method": s.method.state_dict(),
        "optimizer": s.optimizer.state_dict(), "scheduler": s.scheduler.state_dict(),
        "customizer_optimizer": s.customizer_opt.state_dict() if s.customizer_opt else {},
        "torch_rng": torch.get_rng_state(), "history": json.dumps(s.history)})
    write_json(s.run / "metrics.json", {"epochs": s.history, "teacher_probe": s.probe_metrics})
    write_metrics_csv(s.run / "metrics.csv", s.history)


def save_student(s: Session) -> None:
    """student.safetensors, written whole (temporary file, then rename) with the umask's permissions."""
    from safetensors.torch import save_file

    # safetensors creates its file 0600; the other run files are 0644 under the usual umask
    with atomic_path(s.run / "student.safetensors", mode=0o666) as partial:
        save_file({k: v.contiguous() for k, v in s.student.model.state_dict().items()}, str(partial))


def train(s: Session, started: dt.datetime) -> dict:
    """Every epoch still to run (customization when due, KD, evaluation, checkpoint); the final metrics."""
    cfg, env = s.cfg, s.env
    eval_ds = StudentViews(s.data, cfg.image_size, s.student.mean, s.student.std)
    train_ds = (StudentViews(s.data, cfg.image_size, s.student.mean, s.student.std, strong_seed=cfg.seed)
                if cfg.ssl == "fixmatch" else eval_ds)
    if env.main and not cfg.resume:  # a resumed run keeps its record
        write_json(s.run / "config.json", run_config(s, started))
    first_epoch = resume(s) if cfg.resume else 0
    # one loader per purpose for the whole run, both started here: persistent workers are forked once,
    # together, so the copy-on-write faults a fork costs the training process fall into the first epoch only
    epochs, held_out = range(first_epoch, s.epochs), eval_batches(s)
    train_loader = run_loader(train_ds, lambda epoch: epoch_plan(s, epoch)[2], epochs, cfg.workers, s.device).start()
    eval_loader = run_loader(eval_ds, lambda epoch: held_out, epochs, cfg.workers, s.device).start()
    tracker = Tracker(s.run, env.main)
    try:
        for epoch in range(first_epoch, s.epochs):
            epoch_started, lr = time.perf_counter(), s.optimizer.param_groups[0]["lr"]
            record = run_epoch(s, epoch, train_loader, eval_loader)
            record.update(lr=lr, epoch_seconds=time.perf_counter() - epoch_started)
            s.history.append(record)
            done = [r["epoch_seconds"] for r in s.history if "epoch_seconds" in r]
            log.info("epoch %d/%d  loss %.3f  eval acc %.3f  bal acc %.3f  (%.0f img/s, %.0fs, ETA %s)", epoch + 1,
                     s.epochs, record["train"]["loss"], record["eval"]["accuracy"], record["eval"]["balanced_accuracy"],
                     record["train"]["samples_per_s"], record["epoch_seconds"],
                     eta(sum(done) / len(done) * (s.epochs - epoch - 1)))
            tracker.log_epoch(record)
            if env.main:
                save_epoch(s, epoch)
    finally:
        tracker.close()
        train_loader.shutdown()
        eval_loader.shutdown()
    final = {k: s.history[-1]["eval"][k] for k in ("accuracy", "balanced_accuracy", "per_class_accuracy")}
    if env.main:
        save_student(s)
        write_json(s.run / "metrics.json", {"epochs": s.history, "final": final, "teacher_probe": s.probe_metrics})
    distributed.barrier(env)
    return final


def distill(cfg: DistillConfig) -> DistillResult:
    """Train one student from a complete store; writes config.json, metrics.json, student.safetensors.

    Under torchrun every rank runs this; only rank 0 writes files."""
    started, clock = dt.datetime.now(dt.UTC), time.perf_counter()
    cfg = dataclasses.replace(cfg, cache=absolute(cfg.cache))  # a run is usable from any directory
    env, device = distributed.init_distributed(cfg.device)
    try:
        s = setup(cfg, env, device)
        final = train(s, started)
    finally:
        release_run_dir()
    return DistillResult(str(s.run), final, s.probe_metrics, time.perf_counter() - clock)
