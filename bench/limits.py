"""The student against its physical limit (issue 24), every configuration in the same interleaved rounds.

- *real*: the trainer's ``train_epoch`` (method ``student``) through its real loader: DataLoader workers
  replaying views with PIL, uint8 batches normalised on the device.
- *synthetic*: the same trainee, the same ``train_epoch`` and step, fed one device-resident uint8 batch over and
  over: everything of the trainer but the loader. ``student_step_vs_synthetic`` = real ÷ synthetic.
- *plain*: a fresh timm model of the same architecture trained by a plain loop (forward, cross-entropy, backward,
  AdamW's step; the loop of timm's ``benchmark.py`` ``TrainBenchmarkRunner``, which is a script of timm's
  repository and not importable from its package) on a normalised float batch on the device, in the precision
  and memory format the trainer uses. ``synthetic_vs_timm_train`` = synthetic ÷ plain: what our step adds to the
  model's own cost. The plain loop also runs in the other memory format (channels_last vs NCHW), the measurement
  behind :func:`trainer.loop.prefers_channels_last`.
- *loader alone*: the worker loader's batches without training, and the decoded-image device replay's
  (``--replay device``, both engines): ``loader_capacity_vs_synthetic`` = workers loader ÷ synthetic.
- *threads vs workers* (CPU): the real configuration again with one worker and one intra-op thread, and with no
  worker (replay in the training process) and every thread.

Rates are ``batch`` ÷ the median step time pooled over rounds (clean steps when enough, :mod:`bench.contention`),
each epoch's first step left out, as :mod:`bench.training` does.
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bench.config import BenchConfig
from bench.contention import cpu_snapshot, foreign_cpu_share
from bench.timing import summary, sync
from bench.training import Workload, _train, new_trainee, open_workload, pooled_rate
from customkd.trainer.data import loader_options

log = logging.getLogger(__name__)
LOADER_EPOCHS = 4  # the loader alone runs 4 timed epochs' samples, so its prefetched head start is a small part
PLAIN_LOOP = "plain loop (timm's benchmark.py TrainBenchmarkRunner is not part of the timm package)"


class SyntheticBatches:
    """``n`` batches of one device-resident uint8 batch, shaped as the real loader's (pixels, rows, views)."""

    def __init__(self, work: Workload, n: int) -> None:
        batch = work.config.batch_size
        generator = torch.Generator().manual_seed(0)
        size = work.config.image_size
        self.pixels = torch.randint(0, 256, (batch, 3, size, size), generator=generator, dtype=torch.uint8)
        self.pixels = self.pixels.to(work.device)
        self.rows = torch.from_numpy(work.rows[:batch].copy())
        self.views = torch.from_numpy(work.views[:batch].copy())
        self.batch_sampler = [list(range(batch))] * n

    def __iter__(self):
        return ((self.pixels, self.rows, self.views) for _ in self.batch_sampler)


def timed_steps(step, n: int, device: torch.device) -> dict:
    """Seconds of ``n`` calls of ``step`` (the first one left out) and other processes' CPU share in each."""
    steps, shares = [], []
    for _ in range(n + 1):
        before = cpu_snapshot()
        sync(device)
        started = time.perf_counter()
        step()
        sync(device)
        steps.append(time.perf_counter() - started)
        shares.append(foreign_cpu_share(before, cpu_snapshot()))
    return {"steps": steps[1:], "shares": shares[1:]}


def plain_train(work: Workload, channels_last: bool, n: int) -> dict:
    """The plain timm-style training loop on a device-resident float batch (see the module docstring)."""
    from customkd.common.devices import autocast, optimizer_implementation, resolve_precision
    from customkd.trainer.students import create_student

    torch.manual_seed(0)
    cfg, device = work.config, work.device
    model = create_student(cfg.student, work.inputs.num_classes, cfg.image_size).model.to(device)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=layout).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, **optimizer_implementation(model.parameters()))
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(cfg.batch_size, 3, cfg.image_size, cfg.image_size, generator=generator)
    images = images.to(device).contiguous(memory_format=layout)
    labels = torch.randint(0, work.inputs.num_classes, (cfg.batch_size,), generator=generator).to(device)
    precision = resolve_precision("auto", device)

    def step() -> None:
        with autocast(device, precision):
            loss = F.cross_entropy(model(images).float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return timed_steps(step, n, device)


def loader_alone(loader, device: torch.device, queued: int = 0) -> dict:
    """Step times of iterating a loader without training (its batches on the device). The first batch and the
    ``queued`` batches the workers prefetched while it was made are left out: they arrive at once and would
    count a loader's head start as speed."""
    marks = []
    for batch in loader:
        batch[0].to(device, non_blocking=True)
        sync(device)
        marks.append(cpu_snapshot())
    pairs = list(zip(marks[queued:-1], marks[queued + 1:], strict=True))
    return {"steps": [b["wall"] - a["wall"] for a, b in pairs], "shares": [foreign_cpu_share(a, b) for a, b in pairs]}


def worker_loader(work: Workload, n_samples: int, workers: int, cache=None):
    """The trainer's worker loader over ``n_samples`` of the workload's (row, view) pairs, tiled as needed, reading
    replayed views from ``cache`` (:class:`trainer.view_cache.ViewCache`) when given, as ``distill`` does."""
    from customkd.trainer.data import StudentViews, make_loader

    dataset = StudentViews(work.inputs.data, work.config.image_size, cache=cache)
    return make_loader(dataset, np.resize(work.rows, n_samples), np.resize(work.views, n_samples),
                       work.config.batch_size, workers, device=work.device)


def real_workers(work: Workload, cache) -> int:
    """The loader workers ``distill`` runs with by default on this device, with or without the view cache."""
    from customkd.trainer.distill import resolve_workers

    return resolve_workers(None, work.device, cache is not None)


def device_replay(work: Workload, decoded, engine: str, n_samples: int):
    from customkd.trainer.data import chunk_batches
    from customkd.trainer.device_replay import DeviceReplay

    replay = DeviceReplay(decoded, work.inputs.data.views, work.config.image_size, engine, work.device)
    return replay.batches(chunk_batches(work.rows[:n_samples], work.views[:n_samples], work.config.batch_size))


def with_threads(threads: int, action):
    """``action()`` with ``threads`` intra-op threads in this process."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return action()
    finally:
        torch.set_num_threads(before)


def limits_round(cfg: BenchConfig, work: Workload, trainee, decoded, cache, n: int) -> dict:
    """One interleaved round of every configuration, ``n`` samples (``n // batch`` steps) each."""
    steps = max(n // cfg.batch_size, 2)
    channels_last = work.device.type == "cuda"  # the trainer's layout (trainer.loop.prefers_channels_last)
    record = {
        "real": _train(work, trainee, worker_loader(work, n, real_workers(work, cache), cache), None, n),
        "real_replaying": _train(work, trainee, worker_loader(work, n, real_workers(work, None)), None, n),
        "synthetic": _train(work, trainee, SyntheticBatches(work, steps), None, steps * cfg.batch_size),
        "plain": plain_train(work, channels_last, steps),
        "plain_other_layout": plain_train(work, not channels_last, steps),
        "workers_loader": loader_alone(worker_loader(work, LOADER_EPOCHS * n, cfg.workers), work.device,
                                       queued=cfg.workers * loader_options(cfg.workers)["prefetch_factor"]
                                       if cfg.workers else 0),
        "replay_fast": loader_alone(device_replay(work, decoded, "fast", n), work.device),
        "replay_exact": loader_alone(device_replay(work, decoded, "exact", 2 * cfg.batch_size), work.device),
    }
    if work.device.type == "cpu":
        threads = torch.get_num_threads()
        record["real_1worker_1thread"] = with_threads(
            1, lambda: _train(work, trainee, worker_loader(work, n, 1, cache), None, n))
        record["real_2workers"] = with_threads(
            threads, lambda: _train(work, trainee, worker_loader(work, n, 2, cache), None, n))
    return record


def measure_limits(cfg: BenchConfig, store: Path) -> dict:
    """A warm-up round of one batch per configuration, then ``train_rounds`` timed rounds."""
    from customkd.trainer.device_replay import decode_images, place
    from customkd.trainer.distill import view_cache

    work = open_workload(cfg, store)
    work = dataclasses.replace(work, config=dataclasses.replace(work.config, method="student"))
    trainee = new_trainee(work, "student")
    decoded = place(decode_images(work.inputs.data, np.unique(work.rows), budget=2**34, workers=cfg.workers),
                    work.device)
    cache = view_cache(work.config, work.inputs.data, np.unique(work.rows))  # filled by the warm-up round
    limits_round(cfg, work, trainee, decoded, cache, 2 * cfg.batch_size)
    rounds = []
    for rep in range(cfg.train_rounds):
        rounds.append(limits_round(cfg, work, trainee, decoded, cache, cfg.train_samples))
        log.info("limits round %d: %s samples/s", rep, {k: round(cfg.batch_size / statistics.median(v["steps"]), 1)
                                                         for k, v in rounds[-1].items()})
    return {**_limits_raw(cfg, work, rounds, decoded.nbytes), "view_cache_mib": cache.record()["view_cache_mib"]}


def _limits_raw(cfg: BenchConfig, work: Workload, rounds: list[dict], decoded_bytes: int) -> dict:
    pooled = {key: pooled_rate(cfg.batch_size, [r[key] for r in rounds]) for key in rounds[0]}
    rate = {key: value[0] for key, value in pooled.items()}
    channels_last = work.device.type == "cuda"
    layouts = {"channels_last": rate["plain"] if channels_last else rate["plain_other_layout"],
               "nchw": rate["plain_other_layout"] if channels_last else rate["plain"]}
    raw = {
        "student": cfg.student, "image_size": cfg.image_size, "batch_size": cfg.batch_size, "workers": cfg.workers,
        "threads": torch.get_num_threads(), "precision": "bf16 autocast" if work.device.type == "cuda" else "fp32",
        "trainer_memory_format": "channels_last" if channels_last else "nchw", "reference_loop": PLAIN_LOOP,
        "decoded_images_mib": round(decoded_bytes / 2**20, 1),
        **{f"{key}_samples_s": value for key, value in rate.items()},
        "steps": {key: value[1] for key, value in pooled.items()},
        "ratio_student_step_vs_synthetic": rate["real"] / rate["synthetic"],
        "ratio_replaying_vs_synthetic": rate["real_replaying"] / rate["synthetic"],
        "ratio_synthetic_vs_plain": rate["synthetic"] / rate["plain"],
        "ratio_channels_last_vs_nchw": layouts["channels_last"] / layouts["nchw"],
        "ratio_workers_loader_vs_synthetic": rate["workers_loader"] / rate["synthetic"],
        "ratio_replay_fast_vs_workers_loader": rate["replay_fast"] / rate["workers_loader"],
        "ratio_replay_exact_vs_workers_loader": rate["replay_exact"] / rate["workers_loader"],
        "per_round_real_vs_synthetic": summary([
            statistics.median(r["synthetic"]["steps"]) / statistics.median(r["real"]["steps"]) for r in rounds]),
    }
    if "real_2workers" in rate:
        raw["ratio_1worker_1thread_vs_default"] = rate["real_1worker_1thread"] / rate["real"]
        raw["ratio_2workers_vs_default"] = rate["real_2workers"] / rate["real"]
    return raw
