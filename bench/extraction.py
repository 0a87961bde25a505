"""Extraction efficiency: the full extract pipeline vs the teacher forward alone.

The pipeline is the real :func:`featcache.extract.extract` on a generated JPEG folder: decode,
view sampling and replay in DataLoader workers, teacher forward, whole-shard Zarr writes. The
reference is the same teacher's forward on pre-made tensors of the same batch size and
resolution, run in the precision ``extract()`` runs it in (its ``--precision auto``: bf16 autocast on a GPU, fp32 on a
CPU), so the ratio compares like with like. Each repetition runs both back to back, so the per-repetition ratio sees the same
machine load.

Two pipeline throughputs are recorded: *steady* (images after the first teacher batch ÷ time
from the end of that batch to the end of ``extract()``, store finalisation included) and *end to
end* (all images ÷ the whole ``extract()`` call, which also pays the fixed cost of building and
hashing the teacher, creating the store and starting the workers).
"""

from __future__ import annotations

import logging
import math
import shutil
import statistics
import time
from pathlib import Path

import torch

from bench.config import BenchConfig
from bench.contention import clean, cpu_snapshot, foreign_cpu_share
from bench.timing import summary, timed

log = logging.getLogger(__name__)


class BatchClock:
    """``extract()``'s batch observer: when each teacher batch starts, and when the first one ends (its
    features on the host) with its size."""

    def __init__(self) -> None:
        self.starts: list[float] = []
        self.first_end: float | None = None
        self.first_images = 0

    def __call__(self, event: str, images: int) -> None:
        if event == "start":
            self.starts.append(time.perf_counter())
        elif self.first_end is None:
            self.first_end, self.first_images = time.perf_counter(), images


def run_extract(cfg: BenchConfig, folder: Path, out: Path) -> dict:
    """One full extraction into a fresh store; steady and end-to-end images/s."""
    from customkd.featcache.extract import ExtractConfig, extract

    shutil.rmtree(out, ignore_errors=True)
    config = ExtractConfig(teacher=cfg.teacher, data=f"folder:{folder}", out=str(out), views=cfg.views,
                           batch_size=cfg.extract_batch, workers=cfg.workers, device=cfg.device, weights="random")
    clock = BatchClock()
    started = time.perf_counter()
    result = extract(config, observe=clock)
    ended = time.perf_counter()
    images = result.shape[0] * result.shape[1]
    steady_images = images - clock.first_images
    starts = [*clock.starts, ended]
    intervals = [b - a for a, b in zip(starts[:-1], starts[1:], strict=True)]
    return {
        "images": images,
        "end_to_end_img_s": images / (ended - started),
        "steady_img_s": steady_images / max(ended - clock.first_end, 1e-9),
        "batch_interval_median_img_s": clock.first_images / statistics.median(intervals),
        "until_first_batch_s": clock.first_end - started,
        "seconds": ended - started,
    }


def extract_precision(device: torch.device) -> str:
    """The precision ``extract()`` runs the teacher in by default (``--precision auto``) on this device."""
    from customkd.common.devices import resolve_precision
    from customkd.featcache.config import ExtractConfig

    return resolve_precision(ExtractConfig().precision, device)


def teacher_alone(teacher, device: torch.device, batch: int, n_images: int) -> float:
    """Images/s of the teacher forward on pre-made tensors ``[batch, 3, S, S]``, under the autocast extract uses."""
    from customkd.common.devices import autocast

    size = teacher.preprocess.size
    images = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
    n_batches = math.ceil(n_images / batch)
    precision = extract_precision(device)

    def forward_all() -> None:
        with torch.inference_mode(), autocast(device, precision):
            for _ in range(n_batches):
                teacher(images).float()

    return n_batches * batch / timed(forward_all, device)


def measure_extraction(cfg: BenchConfig, folder: Path, warmup_folder: Path, work: Path) -> tuple[dict, Path]:
    """Interleaved repetitions of (full extract, teacher alone); returns the raw record and the last store."""
    from customkd.featcache.teachers import create_teacher

    device = torch.device(cfg.device)
    teacher = create_teacher(cfg.teacher, weights="random", device=str(device))
    images_per_batch = cfg.views * max(1, cfg.extract_batch // cfg.views)  # what extract() feeds the teacher
    run_extract(cfg, warmup_folder, work / "warmup.zarr")
    teacher_alone(teacher, device, images_per_batch, images_per_batch)
    pipeline, alone, shares = [], [], []
    for rep in range(cfg.repeats):
        before = cpu_snapshot()
        pipeline.append(run_extract(cfg, folder, work / f"extract-{rep}.zarr"))
        middle = cpu_snapshot()
        alone.append(teacher_alone(teacher, device, images_per_batch, pipeline[-1]["images"]))
        parts = [foreign_cpu_share(before, middle), foreign_cpu_share(middle, cpu_snapshot())]
        shares.append(None if None in parts else max(parts))
        log.info("extract rep %d: pipeline %.1f img/s steady, teacher alone %.1f img/s", rep,
                 pipeline[-1]["steady_img_s"], alone[-1])
        if rep < cfg.repeats - 1:
            shutil.rmtree(work / f"extract-{rep}.zarr", ignore_errors=True)
    return _extraction_raw(cfg, teacher, images_per_batch, pipeline, alone, shares), work / f"extract-{cfg.repeats - 1}.zarr"


def _extraction_raw(cfg: BenchConfig, teacher, batch: int, pipeline: list[dict], alone: list[float],
                    shares: list[float | None]) -> dict:
    """Medians over repetitions; the ratios use the repetitions run while the machine was quiet, if any."""
    steady = [p["steady_img_s"] / a for p, a in zip(pipeline, alone, strict=True)]
    end_to_end = [p["end_to_end_img_s"] / a for p, a in zip(pipeline, alone, strict=True)]
    steady_used, info = clean(steady, shares)
    end_to_end_used, _ = clean(end_to_end, shares)
    return {
        "teacher": cfg.teacher, "teacher_size": teacher.preprocess.size, "feature_dim": teacher.feature_dim,
        "reference_precision": extract_precision(torch.device(cfg.device)),
        "batch_images": batch, "images_per_rep": pipeline[0]["images"],
        "pipeline_steady_img_s": summary([p["steady_img_s"] for p in pipeline]),
        "pipeline_end_to_end_img_s": summary([p["end_to_end_img_s"] for p in pipeline]),
        "pipeline_batch_interval_median_img_s": summary([p["batch_interval_median_img_s"] for p in pipeline]),
        "until_first_batch_s": summary([p["until_first_batch_s"] for p in pipeline]),
        "extract_seconds": summary([p["seconds"] for p in pipeline]),
        "teacher_alone_img_s": summary(alone),
        "foreign_cpu_share_per_rep": shares, "repetitions": info,
        "ratio_steady": summary(steady_used), "ratio_steady_all": summary(steady),
        "ratio_end_to_end": summary(end_to_end_used), "ratio_end_to_end_all": summary(end_to_end),
    }
