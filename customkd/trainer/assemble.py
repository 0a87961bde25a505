"""Assembling a run, in the stages every user of a run shares: inputs → trainee → epochs.

``distill`` trains through these, the bench times them, ``evaluate`` / ``predict`` and the report load a
finished run through them: one way to build a run, with the same random draws in the same order.

- :func:`load_inputs` → :class:`Inputs`: the store read once, split, feature normalisation, teacher probe θ^c_t.
- :func:`build_trainee` → :class:`Trainee`: student, method, the (DDP-wrapped) model, optimisers, schedule.
- :func:`epoch_plan`, :func:`eval_batches`, :func:`kd_step`: what an epoch iterates and what its KD steps use.
- :func:`load_student`, :func:`load_trained`: a finished run's student, or its inputs and trainee with weights.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from customkd.common.config_file import convert
from customkd.common.distributed import DistEnv
from customkd.common.errors import UserError
from customkd.common.options import field_hints
from customkd.trainer import ddp, loop, run_folder
from customkd.trainer.config import DistillConfig
from customkd.trainer.data import (
    CachedData,
    Split,
    chunk_batches,
    epoch_order,
    epoch_views,
    load_cached_data,
    make_split,
)
from customkd.trainer.feature_range import output_activation
from customkd.trainer.features import block_shuffle, feature_stats
from customkd.trainer.methods import BatchCounts, Method, MethodContext, create_method
from customkd.trainer.optim import CosineSchedule, create_optimizer, create_scheduler
from customkd.trainer.probe import accuracy, fit_teacher_probe
from customkd.trainer.students import Student, create_student


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass(frozen=True)
class Inputs:
    """What a run reads from its store, once. N rows, D teacher dimensions, C classes."""

    data: CachedData  # features [N, V, D], labels [N], …
    split: Split  # training rows (with the labels training may see) and held-out rows
    norm: loop.FeatureNorm  # per-dimension statistics of the training rows' features
    probe: nn.Linear  # θ^c_t: [B, D] → [B, C], frozen, on the run's device
    probe_metrics: dict  # the probe's held-out accuracy
    row_labels: np.ndarray  # [N] the label training sees for each row, -1 for none

    @property
    def num_classes(self) -> int:
        return len(self.data.classes)

    @property
    def teacher_dim(self) -> int:
        return int(self.data.features.shape[-1])


def fit_probe(data: CachedData, split: Split, norm: loop.FeatureNorm, seed: int) -> tuple[nn.Linear, dict]:
    """θ^c_t on centre-view features of labeled training samples; accuracy on the eval rows."""
    labeled = split.train[split.train_labels >= 0]
    centre = norm(data.features[labeled, 0])
    probe, val_acc = fit_teacher_probe(centre, torch.from_numpy(data.labels[labeled]), len(data.classes), seed)
    eval_acc = accuracy(probe, norm(data.features[split.eval, 0]), torch.from_numpy(data.labels[split.eval]))
    return probe, {"accuracy": eval_acc, "heldout_labeled_accuracy": val_acc, "n_labeled": len(labeled)}


def load_inputs(cfg: DistillConfig, device: torch.device, pinned: dict[str, str] | None = None) -> Inputs:
    """Read the store (refused unless its fingerprint starts with ``pinned``'s hashes), split it, fit the
    feature statistics and the teacher probe. The probe's random draws come from its own seeded generator,
    but building it advances torch's global generator: call this before :func:`build_trainee`, as ``distill`` does."""
    data = load_cached_data(cfg, pinned)
    split = make_split(cfg, data)
    norm = loop.FeatureNorm(cfg.feature_norm, stats=feature_stats(data.features, split.train, data.n_views))
    probe, probe_metrics = fit_probe(data, split, norm, cfg.seed)
    row_labels = np.full(len(data.labels), -1, dtype=np.int64)
    row_labels[split.train] = split.train_labels
    return Inputs(data, split, norm, probe.to(device), probe_metrics, row_labels)


@dataclass
class Trainee:
    """One student being trained, with its method and the optimiser they share (a method may keep others of its own)."""

    student: Student
    method: Method
    model: nn.Module  # DistillModule(student, method), DDP-wrapped under torchrun
    optimizer: torch.optim.Optimizer
    scheduler: CosineSchedule  # advanced after every optimiser step


def make_student(cfg: DistillConfig, num_classes: int, device: torch.device) -> Student:
    """The configured student on ``device``, in the memory layout :func:`trainer.loop.to_memory_format` picks."""
    student = create_student(cfg.student, num_classes, cfg.image_size, cfg.student_pretrained, cfg.student_weights)
    return loop.to_memory_format(student.to(device), device, cfg.memory_format)


def wrap_model(student: Student, method: Method, env: DistEnv, device: torch.device) -> nn.Module:
    """Student + method as one :class:`trainer.loop.DistillModule`; under torchrun DDP-wrapped, with
    synchronised BatchNorm on CUDA (per-rank statistics would make results depend on the rank count)."""
    model = loop.DistillModule(student, method)
    if env.active:
        if device.type == "cuda":
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None,
                                        find_unused_parameters=True)  # modules a method trains in its epoch stage get no KD gradient
    return model


def total_steps(cfg: DistillConfig, inputs: Inputs) -> int:
    """Optimiser steps of the whole run: the length of the lr schedule."""
    n_train = len(inputs.split.train)
    return cfg.epochs_for(n_train) * cfg.steps_per_epoch(n_train)


def build_trainee(cfg: DistillConfig, inputs: Inputs, device: torch.device, env: DistEnv | None = None,
                  steps: int | None = None) -> Trainee:
    """A fresh student (drawing from torch's global generator: seed first) with the configured method, model
    and optimisers; the schedule lasts ``steps`` optimiser steps (default: the whole run's), the first
    ``--warmup-epochs`` of them warming up."""
    student = make_student(cfg, inputs.num_classes, device)
    activation = output_activation(student.features, student, cfg.image_size)
    method = create_method(cfg.method, MethodContext(inputs.teacher_dim, student.feature_dim,
                                                     inputs.num_classes, cfg, activation)).to(device)
    model = wrap_model(student, method, env or DistEnv(), device)
    optimizer = create_optimizer(cfg, student, method)
    warmup = cfg.warmup_steps(len(inputs.split.train))
    scheduler = create_scheduler(cfg, optimizer, steps if steps is not None else total_steps(cfg, inputs), warmup)
    return Trainee(student, method, model, optimizer, scheduler)


@dataclass(frozen=True)
class EpochPlan:
    """One epoch's (row, view) pairs: pure functions of (seed, epoch), so a resumed run replays them."""

    order: np.ndarray  # [T] training rows in this epoch's order
    views: np.ndarray  # [T] the cached view of each
    batches: list  # this rank's batches of (row, view, epoch)
    counts: list[BatchCounts]  # the global batch's denominators, one per batch


def epoch_plan(cfg: DistillConfig, inputs: Inputs, epoch: int, env: DistEnv) -> EpochPlan:
    """The epoch's row order, views, this rank's batches and their global counts (block-local when streaming)."""
    data, train = inputs.data, inputs.split.train
    positions = (block_shuffle(train, data.shard_size, epoch, cfg.seed) if data.streaming
                 else epoch_order(len(train), epoch, cfg.seed))
    order = train[positions][: cfg.samples_per_epoch(len(train))]
    views = epoch_views(order, data.n_views, epoch, cfg.view_sampling, cfg.seed)
    items = list(zip(order.tolist(), views.tolist(), [epoch] * len(order), strict=True))
    batches, counts = ddp.split_global_batches(items, cfg.batch_size, env, inputs.row_labels)
    return EpochPlan(order, views, batches, counts)


def eval_batches(cfg: DistillConfig, inputs: Inputs, env: DistEnv, rows: np.ndarray | None = None) -> list[list[tuple]]:
    """This rank's share of the held-out rows (or of ``rows``: the validation split), centre views, the same every
    epoch."""
    rows = (inputs.split.eval if rows is None else rows)[env.rank :: env.world]
    return chunk_batches(rows, np.zeros(len(rows), np.int64), cfg.batch_size)


def kd_step(cfg: DistillConfig, inputs: Inputs, trainee: Trainee, device: torch.device, env: DistEnv | None = None,
            progress: bool = True) -> loop.KDStep:
    """What :func:`trainer.loop.train_epoch` needs, from the run's inputs and trainee (features from the store)."""
    fixmatch = (cfg.fixmatch_threshold, cfg.fixmatch_weight) if cfg.ssl == "fixmatch" else None
    return loop.KDStep(trainee.student, trainee.method, trainee.model, trainee.optimizer, trainee.scheduler, inputs.data.features,
                       inputs.norm, inputs.probe, inputs.row_labels, device, cfg.grad_clip, fixmatch, env, progress)


def read_run_config(run_dir: str | Path) -> run_folder.RunConfig:
    """config.json of a finished run (one that wrote its student), checked (:func:`trainer.run_folder.read_config`)."""
    if not run_folder.is_finished(run_dir):
        raise UserError(f"{run_dir} is not a finished run (needs {run_folder.CONFIG} and {run_folder.STUDENT})")
    return run_folder.read_config(run_dir)


def config_from_run(config: dict, run: str | Path = "RUN") -> DistillConfig:
    """The :class:`DistillConfig` a run recorded in its config.json (the student as it was given, not resuming)."""
    hints = {f.name: hint for f, hint in field_hints(DistillConfig)}
    record = Path(run) / run_folder.CONFIG
    try:  # each value checked and converted as the same key of a --config file is
        values = {k: convert(hints[k], v, k, str(record)) for k, v in run_folder.as_given(config).items() if k in hints}
        values.update(source=tuple(config["source"]), target=tuple(config["target"]), resume=False)
        return DistillConfig(**values)
    except (KeyError, TypeError, ValueError, UserError) as exc:
        raise UserError(f"run {run}: {run_folder.CONFIG} does not hold a distill configuration "
                        f"({str(exc).removeprefix('--config ')[:200]}); restore the run's {run_folder.CONFIG} or "
                        "train the run again") from None


def load_student(run_dir: str | Path) -> tuple[run_folder.RunConfig, Student]:
    """A finished run's config.json and its student with the saved weights (CPU, eval mode); no store needed."""
    config = read_run_config(run_dir)
    student = create_student(config.settings["student"], config.num_classes, config.image_size)
    run_folder.load_student_weights(config, student.model)
    return config, student.eval()


@dataclass(frozen=True)
class TrainedRun:
    """A finished run rebuilt: its records, its inputs, and its trainee with the saved weights (eval mode)."""

    run_dir: Path
    config: dict  # config.json as written
    cfg: DistillConfig
    inputs: Inputs
    trainee: Trainee


def load_trained(run_dir: str | Path, device: torch.device | None = None) -> TrainedRun:
    """Rebuild a finished run from its own store (pinned to the fingerprint it trained on): the inputs (the probe
    is refitted: it is seeded and deterministic), the student from student.safetensors, the method's modules from
    method.safetensors (or the checkpoint of a run that kept only that)."""
    device = device or torch.device("cpu")
    config = read_run_config(run_dir)
    cfg = config_from_run(config.values, run_dir)
    inputs = load_inputs(cfg, device, config.store_fingerprint)
    # the weights come from the run, so no pretrained or warm-start weights need be at hand
    trainee = build_trainee(dataclasses.replace(cfg, student_pretrained=False, student_weights=None), inputs, device)
    run_folder.load_student_weights(config, trainee.student.model)
    trainee.student.eval()
    run_folder.restore(run_dir, {"method": run_folder.load_method_state(run_dir, trainee.method.state_dict())}, {"method": trainee.method})
    trainee.method.eval()
    return TrainedRun(Path(run_dir), config.values, cfg, inputs, trainee)
