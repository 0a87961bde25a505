"""What the teacher's default input size saves: forward time per image at the default vs the native size.

DINOv2 is trained at 518 px but extracts at 224 px by default (``featcache.teachers``: ``default_size``
vs ``native_size``; timm resamples the position embeddings). Both sizes are built from the same
random-weight entry and timed side by side: one warm-up forward each, then ``size_rounds``
interleaved forwards of ``size_batch`` pre-made images per size, with the precision extraction uses
(bf16 autocast on CUDA, fp32 on CPU). The metric is the median seconds per image at the default size
÷ that at the native size.
"""

from __future__ import annotations

import logging
import statistics

import torch

from bench.config import BenchConfig
from bench.contention import cpu_snapshot, foreign_cpu_share
from bench.timing import timed

log = logging.getLogger(__name__)


def teacher_sizes(cfg: BenchConfig) -> tuple[int, int]:
    """(default, native) input size of ``cfg.size_teacher``, unless ``cfg.size_pair`` names them."""
    from customkd.featcache.teachers import resolve_spec

    if cfg.size_pair is not None:
        return int(cfg.size_pair[0]), int(cfg.size_pair[1])
    spec = resolve_spec(cfg.size_teacher)
    if not spec.native_size:
        raise ValueError(f"teacher {cfg.size_teacher} records no native size; pass size_pair")
    return spec.default_size or spec.native_size, spec.native_size


def measure_teacher_size(cfg: BenchConfig) -> dict:
    """Seconds per image of the teacher forward at its default and its native size, and their ratio."""
    from customkd.featcache.teachers import create_teacher

    device = torch.device(cfg.device)
    default, native = teacher_sizes(cfg)
    sizes = {"default": default, "native": native}
    teachers = {k: create_teacher(cfg.size_teacher, weights="random", device=cfg.device, size=s) for k, s in sizes.items()}
    generator = torch.Generator().manual_seed(0)
    images = {k: torch.randn(cfg.size_batch, 3, t.preprocess.size, t.preprocess.size, generator=generator).to(device)
              for k, t in teachers.items()}
    seconds: dict[str, list[float]] = {k: [] for k in sizes}
    shares: dict[str, list[float | None]] = {k: [] for k in sizes}

    def forward(key: str) -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            teachers[key](images[key]).float()

    with torch.inference_mode():
        for key in sizes:
            timed(lambda key=key: forward(key), device)  # warm-up
        for _ in range(cfg.size_rounds):
            for key in sizes:
                before = cpu_snapshot()
                seconds[key].append(timed(lambda key=key: forward(key), device) / cfg.size_batch)
                shares[key].append(foreign_cpu_share(before, cpu_snapshot()))
    per_image = {k: statistics.median(v) for k, v in seconds.items()}
    ratio = per_image["default"] / per_image["native"]
    log.info("teacher %s: %.4f s/img at %d px, %.4f s/img at %d px (ratio %.3f)", cfg.size_teacher,
             per_image["default"], default, per_image["native"], native, ratio)
    return {"teacher": cfg.size_teacher, "default_size": default, "native_size": native,
            "batch_images": cfg.size_batch, "rounds": cfg.size_rounds,
            "seconds_per_image": {k: {"runs": [round(s, 6) for s in v], "median": per_image[k]}
                                  for k, v in seconds.items()},
            "foreign_cpu_share": shares, "ratio_default_vs_native": ratio}
