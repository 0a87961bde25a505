"""Adding a teacher to a store: ``extract --into`` vs the new teacher's forward alone.

The pipeline is the real ``extract --teacher B --into STORE`` (:mod:`featcache.extract_into`) on a copy of the
store the extraction section wrote: the images are decoded again and the stored views replayed (nothing is
sampled), B runs, and only B's arrays are written. The reference is B's forward on pre-made tensors of the same
batch size and resolution, under the same precision (autocast) as extraction uses. Each repetition runs both
back to back, so the ratio sees the same machine load. ``add_teacher_efficiency`` is the steady pipeline rate
(after the first teacher batch) over the reference.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from pathlib import Path

import torch

from bench.config import BenchConfig
from bench.contention import clean, cpu_snapshot, foreign_cpu_share
from bench.extraction import BatchClock
from bench.timing import summary, timed

log = logging.getLogger(__name__)


def run_add(cfg: BenchConfig, store: Path, work: Path) -> dict:
    """One ``extract --into`` of ``cfg.add_teacher`` on a fresh copy of ``store``; steady images/s."""
    from customkd.featcache.extract import ExtractConfig, extract

    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(store, work)
    config = ExtractConfig(teacher=cfg.add_teacher, into=str(work), batch_size=cfg.extract_batch,
                           workers=cfg.workers, device=cfg.device, weights="random")
    clock = BatchClock()
    started = time.perf_counter()
    result = extract(config, observe=clock)
    ended = time.perf_counter()
    images = result.shape[0] * result.shape[1]
    return {"images": images, "steady_img_s": (images - clock.first_images) / max(ended - clock.first_end, 1e-9),
            "end_to_end_img_s": images / (ended - started)}


def forward_alone(teacher, device: torch.device, precision: str, batch: int, n_images: int) -> float:
    """Images/s of the teacher forward on pre-made tensors ``[batch, 3, S, S]`` under extraction's precision."""
    from customkd.common.devices import autocast

    size = teacher.preprocess.size
    images = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
    n_batches = math.ceil(n_images / batch)

    def forward_all() -> None:
        with torch.inference_mode(), autocast(device, precision):
            for _ in range(n_batches):
                teacher(images).float()

    return n_batches * batch / timed(forward_all, device)


def measure_add_teacher(cfg: BenchConfig, store: Path, work: Path) -> dict:
    """Interleaved repetitions of (``extract --into``, the new teacher alone); medians and the ratio."""
    from customkd.common.devices import resolve_precision
    from customkd.featcache.teachers import create_teacher

    device = torch.device(cfg.device)
    teacher = create_teacher(cfg.add_teacher, weights="random", device=str(device))
    precision = resolve_precision("auto", device)  # what extract's default --precision resolves to
    batch = cfg.views * max(1, cfg.extract_batch // cfg.views)  # what extract() feeds the teacher
    forward_alone(teacher, device, precision, batch, batch)
    pipeline, alone, shares = [], [], []
    for rep in range(cfg.repeats):
        before = cpu_snapshot()
        pipeline.append(run_add(cfg, store, work / "add-teacher.zarr"))
        middle = cpu_snapshot()
        alone.append(forward_alone(teacher, device, precision, batch, pipeline[-1]["images"]))
        parts = [foreign_cpu_share(before, middle), foreign_cpu_share(middle, cpu_snapshot())]
        shares.append(None if None in parts else max(parts))
        log.info("add-teacher rep %d: extract --into %.1f img/s steady, teacher alone %.1f img/s", rep,
                 pipeline[-1]["steady_img_s"], alone[-1])
    shutil.rmtree(work / "add-teacher.zarr", ignore_errors=True)
    ratios = [p["steady_img_s"] / a for p, a in zip(pipeline, alone, strict=True)]
    used, info = clean(ratios, shares)
    return {"teacher": cfg.add_teacher, "teacher_size": teacher.preprocess.size, "precision": precision,
            "batch_images": batch, "images_per_rep": pipeline[0]["images"],
            "pipeline_steady_img_s": summary([p["steady_img_s"] for p in pipeline]),
            "pipeline_end_to_end_img_s": summary([p["end_to_end_img_s"] for p in pipeline]),
            "teacher_alone_img_s": summary(alone), "foreign_cpu_share_per_rep": shares, "repetitions": info,
            "ratio_steady": summary(used), "ratio_steady_all": summary(ratios)}
