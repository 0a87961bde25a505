"""Training cost: the student alone, CustomKD from the cache, and CustomKD with the teacher online.

All three use the trainer's own pieces (:func:`trainer.assemble.load_inputs` and
:func:`~trainer.assemble.build_trainee` as ``distill`` builds a run, ``StudentViews``, ``make_loader``,
``train_epoch``, ``CustomKD.customize_epoch``) on the store the extraction section wrote; the online mode is
:mod:`bench.online`.

Timing. A shared 2-core machine sees bursts from other processes that last seconds, so the
configurations run in interleaved *rounds* (student, customization + cached KD, online KD, teacher
alone), and a configuration's throughput is ``batch`` ÷ the median *step* time pooled over all
rounds: a step is the time from one batch reaching the training loop to the next (the last one
ends when ``train_epoch`` returns), so it includes any wait for data but not the worker start,
pipeline fill and first step of each epoch (a per-epoch fixed cost, the same for every
configuration). Steps taken while other processes used more than 10 % of the CPU are left out
when enough quiet ones exist (:mod:`bench.contention`). Whole-epoch rates and first-step times are
kept in the raw record too.
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bench.config import BenchConfig
from bench.contention import clean, cpu_snapshot, foreign_cpu_share
from bench.online import OnlineBatches, OnlineFeatures, OnlineViews
from bench.timing import summary, sync, timed
from customkd.trainer.assemble import Inputs, Trainee
from customkd.trainer.config import DistillConfig
from customkd.trainer.data import StudentViews

log = logging.getLogger(__name__)
SCHEDULE_STEPS = 10_000  # the cosine schedule's length; irrelevant to speed, long enough not to end


@dataclass(frozen=True)
class Workload:
    """A run's inputs, read once as ``distill`` reads them, plus the fixed (row, view) order of a timed epoch."""

    config: DistillConfig
    inputs: Inputs
    rows: np.ndarray  # [n] training rows, tiled to the longest timed epoch
    views: np.ndarray  # [n] view of each row
    device: torch.device


def open_workload(cfg: BenchConfig, store: Path, method: str = "customkd") -> Workload:
    """Read the store exactly as ``distill`` does, for the SSL default setting."""
    from customkd.trainer.assemble import load_inputs, seed_everything
    from customkd.trainer.data import epoch_views

    seed_everything(0)
    dcfg = DistillConfig(cache=str(store), student=cfg.student, method=method, image_size=cfg.image_size,
                         batch_size=cfg.batch_size, workers=cfg.workers, device=cfg.device)
    device = torch.device(cfg.device)
    inputs = load_inputs(dcfg, device)
    longest = max(cfg.train_samples, cfg.online_samples, 2 * cfg.batch_size)
    tiled = np.resize(np.random.default_rng(0).permutation(inputs.split.train), longest)
    views = epoch_views(tiled, inputs.data.n_views, 0, dcfg.view_sampling, dcfg.seed)
    return Workload(dcfg, inputs, tiled, views, device)


def new_trainee(work: Workload, method_name: str) -> Trainee:
    """A fresh trainee seeded alike for every configuration, as ``distill`` builds it (its cosine schedule is
    long enough never to end)."""
    from customkd.trainer.assemble import build_trainee, seed_everything

    seed_everything(0)
    return build_trainee(dataclasses.replace(work.config, method=method_name), work.inputs, work.device,
                         steps=SCHEDULE_STEPS)


class StepClock:
    """Wraps a loader for ``train_epoch``: records when each batch reaches the training loop, and the
    machine's CPU accounting at that moment (:mod:`bench.contention`)."""

    def __init__(self, loader, device: torch.device) -> None:
        self.loader, self.batch_sampler, self.device, self.marks = loader, loader.batch_sampler, device, []

    def __iter__(self):
        for batch in self.loader:
            sync(self.device)
            self.marks.append(cpu_snapshot())
            yield batch


def epoch_rates(clock: StepClock, started: float, end: dict, n_samples: int) -> dict:
    """Step durations (with other processes' CPU share during each) and whole-epoch rates of one epoch.

    ``steps`` leaves out each epoch's first step: it also pays a per-epoch fixed cost (with DataLoader
    workers, copy-on-write faults in the freshly forked training process, about 2-3 s here), kept
    apart as ``first_step`` and included in the whole-epoch rate ``epoch``.
    """
    marks = [*clock.marks, end]
    pairs = list(zip(marks[:-1], marks[1:], strict=True))
    durations = [b["wall"] - a["wall"] for a, b in pairs]
    return {"steps": durations[1:], "shares": [foreign_cpu_share(a, b) for a, b in pairs][1:],
            "first_step": durations[0], "steady": n_samples / (end["wall"] - marks[0]["wall"]),
            "epoch": n_samples / (end["wall"] - started), "seconds": end["wall"] - started}


def quiet_step(work: Workload, trainee: Trainee, features=None):
    """``train_epoch``'s step parts for the bench: no progress bar, features from the store unless given."""
    from customkd.trainer.assemble import kd_step

    step = kd_step(work.config, work.inputs, trainee, work.device, progress=False)
    return step if features is None else dataclasses.replace(step, features=features)


def _train(work: Workload, trainee: Trainee, loader, features, n_samples: int) -> dict:
    from customkd.trainer.loop import train_epoch

    clock = StepClock(loader, work.device)
    sync(work.device)
    started = time.perf_counter()
    train_epoch(quiet_step(work, trainee, features), clock, 0)
    sync(work.device)
    return epoch_rates(clock, started, cpu_snapshot(), n_samples)


def cached_epoch(work: Workload, trainee: Trainee, n_samples: int) -> dict:
    """Throughputs of one ``train_epoch`` over ``n_samples`` reading cached features from RAM."""
    from customkd.trainer.data import make_loader

    dataset = StudentViews(work.inputs.data, work.config.image_size)
    rows, views = work.rows[:n_samples], work.views[:n_samples]
    loader = make_loader(dataset, rows, views, work.config.batch_size, work.config.workers, device=work.device)
    return _train(work, trainee, loader, None, n_samples)


def customization_seconds(work: Workload, trainee: Trainee, n_samples: int) -> float:
    """Seconds of one ``CustomKD.customize_epoch`` over the same ``n_samples`` (row, view) features, on the
    context ``distill`` gives the method's epoch stage."""
    from customkd.trainer.distill import EpochFeatures
    from customkd.trainer.methods import EpochContext

    rows, views, inputs, device = work.rows[:n_samples], work.views[:n_samples], work.inputs, work.device

    def run() -> None:
        ctx = EpochContext(0, work.config.seed, trainee.student.head,
                           EpochFeatures(inputs.data.features, rows, views, inputs.norm, device),
                           torch.from_numpy(inputs.row_labels[rows]).to(device), inputs.probe, 256,
                           block_local=False)
        trainee.method.customize_epoch(ctx, torch.Generator().manual_seed(0))

    return timed(run, device)


def online_epoch(work: Workload, trainee: Trainee, teacher, n_samples: int) -> dict:
    """Throughputs of the same ``train_epoch`` with the teacher run on every replayed view."""
    from customkd.trainer.data import make_loader

    dataset = OnlineViews(work.inputs.data, work.config.image_size, teacher.preprocess)
    rows, views = work.rows[:n_samples], work.views[:n_samples]
    batches = OnlineBatches(make_loader(dataset, rows, views, work.config.batch_size, work.config.workers,
                                        device=work.device))
    return _train(work, trainee, batches, OnlineFeatures(teacher, batches, work.device), n_samples)


def teacher_steps(teacher, device: torch.device, batch: int, batches: int) -> dict:
    """Seconds of each teacher forward alone on pre-made tensors ``[batch, 3, S, S]`` in extract()'s precision,
    with other processes' CPU share during each."""
    from customkd.common.devices import autocast, resolve_precision

    size = teacher.preprocess.size
    images = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
    steps, shares = [], []
    with torch.inference_mode(), autocast(device, resolve_precision("auto", device)):
        for _ in range(batches):
            before = cpu_snapshot()
            steps.append(timed(lambda: teacher(images).float(), device))
            shares.append(foreign_cpu_share(before, cpu_snapshot()))
    return {"steps": steps, "shares": shares}


def make_teacher(cfg: BenchConfig):
    from customkd.featcache.teachers import create_teacher

    return create_teacher(cfg.teacher, weights="random", device=cfg.device)


def training_round(work: Workload, trainees: dict[str, Trainee], teacher, n: int, n_online: int) -> dict:
    """One interleaved round: student, customization + cached CustomKD, online KD, teacher alone (one batch)."""
    return {"student": cached_epoch(work, trainees["student"], n),
            "customize_s": customization_seconds(work, trainees["cached"], n),
            "cached": cached_epoch(work, trainees["cached"], n),
            "online": online_epoch(work, trainees["online"], teacher, n_online),
            "teacher": teacher_steps(teacher, work.device, work.config.batch_size, 1)}


def measure_training(cfg: BenchConfig, store: Path) -> dict:
    """A one-batch warm-up round, then ``train_rounds`` timed rounds (:func:`training_round`)."""
    work = open_workload(cfg, store)
    trainees = {name: new_trainee(work, method) for name, method in
                (("student", "student"), ("cached", "customkd"), ("online", "customkd"))}
    teacher = make_teacher(cfg)
    training_round(work, trainees, teacher, cfg.batch_size, cfg.batch_size)
    rounds = []
    for rep in range(cfg.train_rounds):
        rounds.append(training_round(work, trainees, teacher, cfg.train_samples, cfg.online_samples))
        rates = {k: cfg.batch_size / statistics.median(rounds[-1][k]["steps"]) for k in ("student", "cached", "online")}
        log.info("train round %d: student %.1f, cached %.1f, online %.1f samples/s", rep, rates["student"],
                 rates["cached"], rates["online"])
    return _training_raw(cfg, work, rounds)


def pooled_rate(batch: int, records: list[dict]) -> tuple[float, dict]:
    """``batch`` ÷ the median step time pooled over ``records``, using only clean steps when enough exist."""
    steps = [t for r in records for t in r["steps"]]
    shares = [s for r in records for s in r["shares"]]
    used, info = clean(steps, shares)
    return batch / statistics.median(used), {**info, "step_s": summary(steps)}


def _training_raw(cfg: BenchConfig, work: Workload, rounds: list[dict]) -> dict:
    """Pooled clean step medians (the metrics), per-round and whole-epoch values (cross-checks)."""
    batch = cfg.batch_size

    def per_round(key: str, kind: str) -> list[float]:
        return [r[key][kind] for r in rounds]

    pooled = {k: pooled_rate(batch, [r[k] for r in rounds]) for k in ("student", "cached", "online", "teacher")}
    rate = {k: v[0] for k, v in pooled.items()}
    kd_epoch = per_round("cached", "seconds")
    configs = ("student", "cached", "online")
    return {
        "student": cfg.student, "method": "customkd", "image_size": cfg.image_size, "batch_size": batch,
        "workers": cfg.workers, "samples_per_epoch": cfg.train_samples, "online_samples_per_epoch": cfg.online_samples,
        "teacher_dim": work.inputs.teacher_dim, "n_train_rows": len(set(work.rows.tolist())),
        "rate": "batch / median step time pooled over rounds, clean steps only when enough (bench.training)",
        **{f"{k}_samples_s": rate[k] for k in configs},
        "teacher_alone_img_s_at_train_batch": rate["teacher"],
        "steps": {k: v[1] for k, v in pooled.items()},
        **{f"{k}_first_step_s": summary(per_round(k, "first_step")) for k in configs},
        **{f"{k}_samples_s_{kind}": summary(per_round(k, kind)) for k in configs for kind in ("steady", "epoch")},
        "customize_epoch_s": summary([r["customize_s"] for r in rounds]),
        "kd_epoch_s": summary(kd_epoch),
        "ratio_cached_vs_student": rate["cached"] / rate["student"],
        "ratio_cached_vs_online": rate["cached"] / rate["online"],
        "ideal_cached_vs_online": 1 + rate["student"] / rate["teacher"],
        "ratio_cached_vs_student_epoch": summary([c / s for s, c in zip(per_round("student", "epoch"),
                                                                        per_round("cached", "epoch"), strict=True)]),
        "ratio_customize_vs_kd_epoch": summary([r["customize_s"] / k for r, k in zip(rounds, kd_epoch, strict=True)]),
    }


def epoch_throughput(cfg: BenchConfig, store: Path, mode: str, epochs: int, samples: int, warmup: bool) -> dict:
    """One configuration (student / cached / online) in this process: optional warm-up batch, timed epochs."""
    work = open_workload(cfg, store)
    trainee = new_trainee(work, "student" if mode == "student" else "customkd")
    teacher = make_teacher(cfg) if mode == "online" else None
    records = []
    for epoch in range(-1 if warmup else 0, epochs):
        size = cfg.batch_size if epoch < 0 else samples
        if mode == "online":
            rates = online_epoch(work, trainee, teacher, size)
        else:
            if mode == "cached":
                customization_seconds(work, trainee, size)
            rates = cached_epoch(work, trainee, size)
        if epoch >= 0:
            records.append(rates)
    rate, info = pooled_rate(cfg.batch_size, records)
    return {"median": rate, **info}
