"""Per-epoch fixed overhead of the trainer's loaders: persistent workers (now) vs fresh workers per epoch (before).

Both modes run the trainer's own pieces (:func:`trainer.data.run_loader`, ``train_epoch``,
``predict``) on the store the extraction section wrote, driving the loaders as
:func:`trainer.distill.run_epoch` does: with persistent workers the next epoch's batches are
prefetched while this one evaluates, and the evaluation's during the next KD epoch. The modes run one
after the other, so a prefetch overlaps only its own run's work. An epoch is one KD epoch over
``overhead_samples`` (row, view) pairs — the CPU profile's 2,048 are the embedded default's epoch
(2,099 training rows) — plus one evaluation over the split's held-out rows tiled to a quarter of that
(at least three batches), as the default's held-out fifth. Epoch 1 only starts the workers (four
batches) and is not measured; every measured epoch is a middle one (the next epoch is prefetched).

Overhead of one loader in one epoch: the time from creating the epoch's iterator (``iter(loader)``)
to the arrival of its *second* batch, minus one steady batch interval (with nothing fixed to pay,
batch 1 is there at once and batch 2 one step later). That covers the worker start, the pipeline
fill and the first step's excess (after a fork the training process pays copy-on-write page faults
during its first step; a batch that reaches the loop is not yet a step done). The steady interval is
the median of the later batch-to-batch intervals of that loader and mode, pooled over the measured
epochs; a negative estimate (noise) counts as 0. The metric is (train + evaluation overhead) ÷
(KD epoch + evaluation time), averaged over epochs ≥ 2.

On 2 CPU cores the persistent workers' remaining "overhead" is mostly loading work moved, not saved:
the next epoch's prefetch slows the evaluation's first steps, the evaluation's prefetch the KD
epoch's first steps. With spare cores (a GPU machine) it disappears.
"""

from __future__ import annotations

import logging
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from bench.config import BenchConfig
from bench.timing import summary, sync

log = logging.getLogger(__name__)
MODES = {"fresh": False, "persistent": True}  # name → persistent_workers


class IterClock:
    """Wraps a loader: when each ``iter()`` starts, when each batch reaches the caller, when iteration ends."""

    def __init__(self, loader, device: torch.device) -> None:
        self.loader, self.batch_sampler, self.device = loader, loader.batch_sampler, device
        self.epochs: list[dict] = []

    def __iter__(self):
        marks = {"created": time.perf_counter(), "batches": []}
        self.epochs.append(marks)
        for batch in self.loader:
            sync(self.device)
            marks["batches"].append(time.perf_counter())
            yield batch
        sync(self.device)
        marks["ended"] = time.perf_counter()


def later_intervals(marks: dict) -> list[float]:
    """Batch-to-batch intervals after the second batch: steady-state steps."""
    batches = marks["batches"]
    return [b - a for a, b in zip(batches[1:-1], batches[2:], strict=True)]


def loader_overhead(marks: dict, steady: float) -> float:
    """Iterator creation → second batch, minus one steady interval; at least 0."""
    return max(0.0, marks["batches"][1] - marks["created"] - steady)


def overhead_fractions(train: list[dict], evaluation: list[dict]) -> dict:
    """Overhead fractions of one mode from its clocks' per-epoch marks, epoch 1 left out."""
    first = train[0]["batches"][1] - train[0]["created"]
    train, evaluation = train[1:], evaluation[1:]
    steady_train = statistics.median(t for m in train for t in later_intervals(m))
    steady_eval = statistics.median(t for m in evaluation for t in later_intervals(m))
    overheads = [loader_overhead(t, steady_train) + loader_overhead(e, steady_eval)
                 for t, e in zip(train, evaluation, strict=True)]
    seconds = [(t["ended"] - t["created"]) + (e["ended"] - e["created"]) for t, e in zip(train, evaluation, strict=True)]
    fractions = [o / s for o, s in zip(overheads, seconds, strict=True)]
    return {"fraction": statistics.mean(fractions), "fractions": fractions, "overhead_s": summary(overheads),
            "epoch_s": summary(seconds), "steady_train_step_s": steady_train, "steady_eval_step_s": steady_eval,
            "epoch_1_train_until_second_batch_s": first}


def _clocked_loaders(cfg: BenchConfig, session, persistent: bool, first_batches: list,
                     eval_rows: np.ndarray) -> dict:
    """A fresh trainee with its training and evaluation loaders, built and started as ``distill.train`` does."""
    from bench.training import build_trainee
    from trainer.data import StudentViews, chunk_batches, run_loader

    trainee = build_trainee(session, "customkd")
    dataset = StudentViews(session.data, cfg.image_size, trainee.student.mean, trainee.student.std)
    workers = max(1, cfg.workers)  # the overhead is the workers' start: without workers there is none to measure
    train = run_loader(dataset, workers, session.device, persistent).prefetch(first_batches)
    evaluation = run_loader(dataset, workers, session.device, persistent)
    evaluation.prefetch(chunk_batches(eval_rows, np.zeros(len(eval_rows), np.int64), cfg.batch_size))
    return {"trainee": trainee, "train": IterClock(train, session.device),
            "eval": IterClock(evaluation, session.device)}


def measure_epoch_overhead(cfg: BenchConfig, store: Path) -> dict:
    """Both modes, one after the other; each mode's overhead fraction (:func:`overhead_fractions`)."""
    from bench.training import open_session, quiet_progress
    from trainer.data import chunk_batches
    from trainer.loop import predict, train_epoch

    quiet_progress()
    session = open_session(cfg, store)
    n = cfg.overhead_samples
    rows, views = np.resize(session.rows, n), np.resize(session.views, n)
    eval_rows = np.resize(session.eval_rows, max(n // 4, 3 * cfg.batch_size))

    def batches(epoch: int) -> list:  # epoch 1 only starts the workers (not measured): four batches do that
        count = 4 * cfg.batch_size if epoch == 0 else n
        return chunk_batches(rows[:count], views[:count], cfg.batch_size, epoch)

    runs = {}
    for mode, persistent in MODES.items():
        run = runs[mode] = _clocked_loaders(cfg, session, persistent, batches(0), eval_rows)
        t, train, evaluation = run["trainee"], run["train"], run["eval"]
        for epoch in range(cfg.overhead_epochs):  # as trainer.distill.run_epoch drives the loaders
            train_epoch(t.student, t.method, train, session.row_labels, session.data.features, session.norm,
                        session.probe, t.optimizer, t.scheduler, epoch, session.config.grad_clip, session.device)
            # every measured epoch is a middle one: the next epoch's batches are prefetched even after the last
            train.loader.prefetch(batches(epoch + 1))
            predict(t.student, evaluation, session.device)
            evaluation.loader.prefetch(evaluation.loader.batch_sampler.batches)
        train.loader.shutdown()
        evaluation.loader.shutdown()
    raw = {"workers": max(1, cfg.workers), "epochs": cfg.overhead_epochs, "train_samples": n,
           "eval_samples": len(eval_rows), "batch_size": cfg.batch_size,
           "definition": "(iter() -> 2nd batch - 1 steady interval) of the train and eval loaders / epoch time, "
                         "mean over epochs >= 2 (bench.epoch_overhead)"}
    for mode, run in runs.items():
        raw[mode] = overhead_fractions(run["train"].epochs, run["eval"].epochs)
        log.info("epoch overhead, %s workers: %.3f of the epoch (%.2f s of %.2f s)", mode, raw[mode]["fraction"],
                 raw[mode]["overhead_s"]["median"], raw[mode]["epoch_s"]["median"])
    return raw
