"""Timing helpers and the machine / library description recorded beside every result."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import torch


def sync(device: torch.device) -> None:
    """Wait for queued GPU work so a wall-clock reading covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def summary(values: list[float]) -> dict:
    """``{"runs": [...], "median": m}`` of repeated measurements."""
    return {"runs": [round(v, 6) for v in values], "median": statistics.median(values)}


def repeat(measure: Callable[[], float], repeats: int, warmup: int = 1) -> dict:
    """Run ``measure`` ``warmup`` times untimed, then ``repeats`` times; summary of the results."""
    for _ in range(warmup):
        measure()
    return summary([measure() for _ in range(repeats)])


def timed(action: Callable[[], object], device: torch.device) -> float:
    """Seconds ``action`` takes, including its queued GPU work."""
    sync(device)
    started = time.perf_counter()
    action()
    sync(device)
    return time.perf_counter() - started


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> float | None:
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        return round(pages * size / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        return None


def machine_info(device: torch.device) -> dict:
    """Host, CPU, memory, accelerator, allocator setting and load when the run started."""
    info = {
        "hostname": platform.node(), "platform": platform.platform(), "python": platform.python_version(),
        "cpu": _cpu_model(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "memory_gib": _memory_gib(), "device": str(device),
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
        "load_average_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def library_versions() -> dict:
    """Installed versions of the libraries the timings depend on, plus the git commit."""
    from customkd.common.provenance import library_versions as installed

    versions = {"python": platform.python_version(), **installed()}
    versions["git_commit"] = _git("rev-parse", "HEAD")
    versions["git_dirty"] = bool(_git("status", "--porcelain", "--untracked-files=no"))
    return versions


def _git(*args: str) -> str:
    try:
        result = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return ""
    return result.stdout.strip()

