"""Per-epoch fixed overhead of the trainer's loaders: persistent workers (now) vs fresh workers per epoch (before).

Both modes run the trainer's own pieces (:func:`trainer.data.run_loader`, ``train_epoch``,
``predict``) on the store the extraction section wrote, building, starting and iterating the loaders
as :func:`trainer.distill.train` does; with persistent workers the loaders move on to the next
epoch's batches as soon as this epoch's are handed out, so evaluation overlaps the next epoch's
loading. The modes run one after the other. An epoch is one KD epoch over ``overhead_samples``
(row, view) pairs — the CPU profile's 2,048 are the embedded default's epoch (2,099 training rows) —
plus one evaluation over the split's held-out rows tiled to a quarter of that (at least three
batches), as the default's held-out fifth. Epoch 1 only starts the workers (four batches) and is not
measured; the loaders are built for one epoch more than is run, so every measured epoch is a middle one.

Overhead of one loader in one epoch: the time from the start of the epoch's iteration (``iter()``)
to the arrival of its *second* batch, minus one steady batch interval (with nothing fixed to pay,
batch 1 is there at once and batch 2 one step later). That covers the worker start, the pipeline
fill and the first step's excess (after a fork the training process pays copy-on-write page faults
during its first step; a batch that reaches the loop is not yet a step done). The steady interval is
the median of the later batch-to-batch intervals of that loader and mode, pooled over the measured
epochs; a negative estimate (noise) counts as 0. The metric is (train + evaluation overhead) ÷
(KD epoch + evaluation time), averaged over epochs ≥ 2.

On 2 CPU cores what remains with persistent workers is mostly loading work moved, not saved (the
next epoch's loading slows the evaluation, the next evaluation's the KD epoch): no core is idle.
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


class TimedEpoch:
    """One epoch's batches (a :class:`trainer.data.EpochBatches`) as ``train_epoch`` / ``predict`` take them,
    appending to ``marks`` when the iteration starts, when each batch reaches the caller and when it ends."""

    def __init__(self, epoch_batches, marks: list[dict], device: torch.device) -> None:
        self.epoch_batches, self.marks, self.device = epoch_batches, marks, device
        self.batch_sampler = epoch_batches.batch_sampler

    def __iter__(self):
        marks = {"created": time.perf_counter(), "batches": []}
        self.marks.append(marks)
        for batch in self.epoch_batches:
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
    """Overhead fractions of one mode from its per-epoch marks, epoch 1 left out."""
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


def _started_loaders(cfg: BenchConfig, work, persistent: bool, plan, eval_rows: np.ndarray) -> dict:
    """A fresh trainee with its training and evaluation loaders, built and started as ``distill.train`` does."""
    from bench.training import new_trainee
    from customkd.trainer.data import StudentViews, chunk_batches, run_loader

    trainee = new_trainee(work, "customkd")
    dataset = StudentViews(work.inputs.data, cfg.image_size)
    workers = max(1, cfg.workers)  # the overhead is the workers' start: without workers there is none to measure
    held_out = chunk_batches(eval_rows, np.zeros(len(eval_rows), np.int64), cfg.batch_size)
    epochs = range(cfg.overhead_epochs + 1)  # one more than measured: every measured epoch is a middle one
    train = run_loader(dataset, plan, epochs, workers, work.device, persistent).start()
    evaluation = run_loader(dataset, lambda epoch: held_out, epochs, workers, work.device, persistent).start()
    return {"trainee": trainee, "train": train, "eval": evaluation, "train_marks": [], "eval_marks": []}


def measure_epoch_overhead(cfg: BenchConfig, store: Path) -> dict:
    """Both modes, one after the other; each mode's overhead fraction (:func:`overhead_fractions`)."""
    from bench.training import open_workload, quiet_step
    from customkd.trainer.data import chunk_batches
    from customkd.trainer.loop import predict, train_epoch

    work = open_workload(cfg, store)
    n, device = cfg.overhead_samples, work.device
    rows, views = np.resize(work.rows, n), np.resize(work.views, n)
    eval_rows = np.resize(work.inputs.split.eval, max(n // 4, 3 * cfg.batch_size))

    def plan(epoch: int) -> list:  # epoch 1 only starts the workers (not measured): four batches do that
        count = 4 * cfg.batch_size if epoch == 0 else n
        return chunk_batches(rows[:count], views[:count], cfg.batch_size, epoch)

    runs = {}
    for mode, persistent in MODES.items():
        run = runs[mode] = _started_loaders(cfg, work, persistent, plan, eval_rows)
        step = quiet_step(work, run["trainee"])
        for epoch in range(cfg.overhead_epochs):  # as trainer.distill.run_epoch iterates the loaders
            train_epoch(step, TimedEpoch(run["train"].epoch(epoch), run["train_marks"], device), epoch)
            predict(step.student, TimedEpoch(run["eval"].epoch(epoch), run["eval_marks"], device), device)
        run["train"].shutdown()
        run["eval"].shutdown()
    raw = {"workers": max(1, cfg.workers), "epochs": cfg.overhead_epochs, "train_samples": n,
           "eval_samples": len(eval_rows), "batch_size": cfg.batch_size,
           "definition": "(epoch iter() -> 2nd batch - 1 steady interval) of the train and eval loaders / epoch time, "
                         "mean over epochs >= 2 (bench.epoch_overhead)"}
    for mode, run in runs.items():
        raw[mode] = overhead_fractions(run["train_marks"], run["eval_marks"])
        log.info("epoch overhead, %s workers: %.3f of the epoch (%.2f s of %.2f s)", mode, raw[mode]["fraction"],
                 raw[mode]["overhead_s"]["median"], raw[mode]["epoch_s"]["median"])
    return raw
