"""Peak memory per training configuration, and the allocator effect — each in a fresh subprocess."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from bench.config import BenchConfig
from bench.worker import run_worker
from customkd.common.devices import GLIBC_TUNABLES

log = logging.getLogger(__name__)
MODES = ("student", "cached", "online")


def measure_memory(cfg: BenchConfig, store: Path) -> dict:
    """Peak memory (and throughput, a cross-check) of student / cached CustomKD / online KD, one process each.

    Each process runs one epoch of two batches: optimiser state and every activation buffer exist
    after the first step, so the peak is steady-state training's (its samples/s are a rough cross-check).
    """
    raw = {}
    for mode in MODES:
        spec = {"config": cfg.to_dict(), "store": str(store), "mode": mode, "epochs": 1, "samples": 2 * cfg.batch_size,
                "warmup": False}
        raw[mode] = run_worker(spec)
        log.info("memory %s: peak %.0f MiB", mode, raw[mode]["peak_bytes"] / 2**20)
    student = raw["student"]["peak_bytes"]
    raw["ratio_cached_vs_student"] = raw["cached"]["peak_bytes"] / student
    raw["ratio_online_vs_student"] = raw["online"]["peak_bytes"] / student
    if not cfg.device.startswith("cuda"):  # the same ratios above the RSS a process has after its imports
        base = {mode: raw[mode]["peak_bytes"] - raw[mode]["rss_after_imports_bytes"] for mode in MODES}
        raw["ratio_cached_vs_student_above_imports"] = base["cached"] / base["student"]
        raw["ratio_online_vs_student_above_imports"] = base["online"] / base["student"]
    gpu = cfg.device.startswith("cuda")
    raw["measure"] = "torch.cuda.max_memory_allocated" if gpu else "VmHWM of the training process (RSS high-water mark)"
    return raw


def measure_allocator(cfg: BenchConfig, store: Path) -> dict:
    """The student configuration with glibc's default allocator vs with ``GLIBC_TUNABLES`` (docs/design.md §9)."""
    if cfg.device.startswith("cuda"):
        return {"skipped": "the allocator setting matters for CPU runs only"}
    spec = {"config": cfg.to_dict(), "store": str(store), "mode": "student", "epochs": 2,
            "samples": cfg.train_samples, "warmup": True}
    off = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    on = {**off, "GLIBC_TUNABLES": GLIBC_TUNABLES}
    raw = {"tunables": GLIBC_TUNABLES, "default": run_worker(spec, off), "tunables_on": run_worker(spec, on)}
    raw["speedup"] = raw["tunables_on"]["samples_s"]["median"] / raw["default"]["samples_s"]["median"]
    raw["peak_rss_ratio"] = raw["tunables_on"]["peak_bytes"] / raw["default"]["peak_bytes"]
    log.info("allocator: tunables on %.2fx the samples/s of glibc's default", raw["speedup"])
    return raw
