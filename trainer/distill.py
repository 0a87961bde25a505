"""The distill process, top to bottom: store → split → probe → student + method → epochs → run dir."""

from __future__ import annotations

import datetime as dt
import json
import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from featcache.errors import UserError
from trainer import loop
from trainer.config import DistillConfig
from trainer.data import (
    CachedData,
    Split,
    StudentViews,
    epoch_order,
    epoch_views,
    load_cached_data,
    make_loader,
    make_split,
)
from trainer.features import block_shuffle, feature_stats
from trainer.methods import MethodContext, create_method, resolve_method
from trainer.probe import accuracy, fit_teacher_probe
from trainer.students import create_student, resolve_student

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


def prepare_run_dir(cfg: DistillConfig) -> Path:
    run = Path(cfg.out or default_run_dir(cfg))
    if run.exists() and not run.is_dir():
        raise UserError(f"run directory {run} is a file; choose another --out")
    if (run / "config.json").exists() and not cfg.resume:
        raise UserError(f"run directory {run} already holds a run; pass --resume to continue it or choose another --out")
    if cfg.resume and not (run / CHECKPOINT).exists():
        raise UserError(f"--resume needs {run / CHECKPOINT}; that run has no checkpoint yet, start it without --resume")
    run.mkdir(parents=True, exist_ok=True)
    return run


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def make_optimizers(cfg: DistillConfig, student, method, steps: int):
    params = list(student.parameters()) + method.student_side_parameters()
    if cfg.optimizer == "sgd":
        optimizer = torch.optim.SGD(params, lr=cfg.effective_lr, momentum=0.9, weight_decay=cfg.weight_decay, nesterov=True)
    else:
        optimizer = torch.optim.AdamW(params, lr=cfg.effective_lr, weight_decay=cfg.weight_decay)
    customizer_opt = torch.optim.Adam(method.customizer.parameters(), lr=cfg.customizer_lr) if method.customizes else None
    return optimizer, loop.cosine_schedule(optimizer, steps), customizer_opt


def write_json(path: Path, payload: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    tmp.replace(path)


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
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)


class EpochFeatures:
    """Normalised features of an epoch's (row, view) pairs, read lazily: ``[positions] -> [B, D]``."""

    def __init__(self, source, rows: np.ndarray, views: np.ndarray, norm: loop.FeatureNorm, device) -> None:
        self.source, self.rows, self.views, self.norm, self.device = source, rows, views, norm, device

    def __getitem__(self, positions: torch.Tensor) -> torch.Tensor:
        p = positions.numpy()
        return self.norm(self.source[self.rows[p], self.views[p]]).to(self.device)


def fit_probe(data: CachedData, split: Split, norm: loop.FeatureNorm, seed: int):
    """θ^c_t on centre-view features of labeled training samples; accuracy on the eval rows."""
    labeled = split.train[split.train_labels >= 0]
    centre = norm(data.features[labeled, 0])
    probe, val_acc = fit_teacher_probe(centre, torch.from_numpy(data.labels[labeled]), len(data.classes), seed)
    eval_acc = accuracy(probe, norm(data.features[split.eval, 0]), torch.from_numpy(data.labels[split.eval]))
    return probe, {"accuracy": eval_acc, "heldout_labeled_accuracy": val_acc, "n_labeled": len(labeled)}


def distill(cfg: DistillConfig) -> DistillResult:
    """Train one student from a complete store; writes config.json, metrics.json, student.safetensors."""
    started = time.perf_counter()
    resolve_method(cfg.method)
    resolve_student(cfg.student)
    run = prepare_run_dir(cfg)
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    pinned = json.loads((run / "config.json").read_text())["store_fingerprint"] if cfg.resume else None
    data = load_cached_data(cfg, pinned)
    split = make_split(cfg, data)
    if cfg.epochs > 4 * max(data.n_views - 1, 1):
        log.warning("%d epochs over %d cached views per sample: views repeat often", cfg.epochs, data.n_views)
    norm = loop.FeatureNorm(cfg.feature_norm, stats=feature_stats(data.features, split.train, data.n_views))
    probe, probe_metrics = fit_probe(data, split, norm, cfg.seed)
    num_classes = len(data.classes)

    student = create_student(cfg.student, num_classes, cfg.image_size, cfg.student_pretrained,
                             cfg.student_weights).to(device)
    ctx = MethodContext(data.features.shape[-1], student.feature_dim, num_classes, cfg)
    method = create_method(cfg.method, ctx).to(device)
    views_ds = StudentViews(data, cfg.image_size, student.mean, student.std)
    train_ds = (StudentViews(data, cfg.image_size, student.mean, student.std, strong_seed=cfg.seed)
                if cfg.ssl == "fixmatch" else views_ds)
    fixmatch = (cfg.fixmatch_threshold, cfg.fixmatch_weight) if cfg.ssl == "fixmatch" else None
    steps_per_epoch = -(-len(split.train) // cfg.batch_size)
    optimizer, scheduler, customizer_opt = make_optimizers(cfg, student, method, cfg.epochs * steps_per_epoch)
    row_labels = np.full(len(data.labels), -1, dtype=np.int64)
    row_labels[split.train] = split.train_labels
    eval_loader = make_loader(views_ds, split.eval, np.zeros(len(split.eval), np.int64), cfg.batch_size, cfg.workers)
    config = {**cfg.to_dict(), "out": str(run), "teacher": data.manifest["fingerprint"]["teacher"],
              "store_fingerprint": {k: v["hash"] for k, v in data.manifest["fingerprint"].items()},
              "n_train": len(split.train), "num_classes": num_classes, "classes": data.classes, "n_labeled": split.n_labeled, "n_eval": len(split.eval),
              "device": str(device), "alternation": "one customization epoch before every alternate_every-th KD epoch"}
    write_json(run / "config.json", config)

    history, first_epoch = [], 0
    if cfg.resume:
        state = loop.load_checkpoint(run / CHECKPOINT)
        student.load_state_dict(state["student"])
        method.load_state_dict(state["method"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if customizer_opt is not None:
            customizer_opt.load_state_dict(state["customizer_optimizer"])
        torch.set_rng_state(state["torch_rng"])
        history, first_epoch = json.loads(state["history"]), state["epoch"] + 1
        log.info("resuming %s after epoch %d", run, first_epoch)

    for epoch in range(first_epoch, cfg.epochs):
        record: dict = {"epoch": epoch + 1}
        positions = (block_shuffle(split.train, data.shard_size, epoch, cfg.seed) if data.streaming
                     else epoch_order(len(split.train), epoch, cfg.seed))
        order = split.train[positions]
        views = epoch_views(order, data.n_views, epoch, cfg.view_sampling, cfg.seed)
        if method.customizes and epoch % cfg.alternate_every == 0:
            generator = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
            record["customize"] = loop.customize_epoch(
                method, student.head, EpochFeatures(data.features, order, views, norm, device),
                torch.from_numpy(row_labels[order]).to(device), probe.to(device), customizer_opt, generator,
                order=torch.arange(len(order)) if data.streaming else None)
        loader = make_loader(train_ds, order, views, cfg.batch_size, cfg.workers, epoch)
        record["train"] = loop.train_epoch(student, method, loader, row_labels, data.features, norm, probe.to(device),
                                           optimizer, scheduler, epoch, cfg.grad_clip, device, fixmatch)
        rows, preds = loop.predict(student, eval_loader, device)
        record["eval"] = loop.classification_metrics(data.labels[rows], preds, num_classes)
        history.append(record)
        log.info("epoch %d/%d  loss %.3f  eval acc %.3f  bal acc %.3f  (%.0f img/s)", epoch + 1, cfg.epochs,
                 record["train"]["loss"], record["eval"]["accuracy"], record["eval"]["balanced_accuracy"],
                 record["train"]["samples_per_s"])
        loop.save_checkpoint(run / CHECKPOINT, {
            "epoch": epoch, "student": student.state_dict(), "method": method.state_dict(),
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "customizer_optimizer": customizer_opt.state_dict() if customizer_opt else {},
            "torch_rng": torch.get_rng_state(), "history": json.dumps(history)})
        write_json(run / "metrics.json", {"epochs": history, "teacher_probe": probe_metrics})
        write_metrics_csv(run / "metrics.csv", history)

    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in student.model.state_dict().items()}, str(run / "student.safetensors"))
    final = {k: history[-1]["eval"][k] for k in ("accuracy", "balanced_accuracy", "per_class_accuracy")}
    write_json(run / "metrics.json", {"epochs": history, "final": final, "teacher_probe": probe_metrics})
    return DistillResult(str(run), final, probe_metrics, time.perf_counter() - started)
