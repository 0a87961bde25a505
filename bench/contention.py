"""How much of the machine other processes took while something was timed.

The benchmark shares a 2-core machine with other people's work. Every timed step and section
records the share of all cores used by processes *outside* this process tree, from ``/proc/stat``
minus the CPU time of this process, its live descendants (DataLoader workers, ``bench.worker``
children) and its reaped children. Steps taken while others used more than :data:`CLEAN_SHARE`
are set aside when enough clean ones exist (:func:`clean`), and every metric says how many it used.
"""

from __future__ import annotations

import os
import resource
import time
from pathlib import Path

CLEAN_SHARE = 0.10  # a step is "clean" when other processes used at most 10 % of all cores meanwhile
MIN_CLEAN = 3
MIN_WINDOW_S = 0.25  # /proc/stat counts in 10-ms ticks: shorter windows say nothing


def _ticks() -> int:
    return os.sysconf("SC_CLK_TCK")


def _live_descendants_cpu(root: int) -> float:
    """CPU seconds of the live descendants of ``root`` (reaped ones are in ``RUSAGE_CHILDREN``)."""
    parents, cpu = {}, {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # the process ended meanwhile
        pid = int(stat.parent.name)
        parents[pid], cpu[pid] = int(fields[1]), (int(fields[11]) + int(fields[12])) / _ticks()
    tree, frontier = set(), {root}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - tree
        tree |= frontier
    return sum(cpu[pid] for pid in tree)


def cpu_snapshot() -> dict:
    """Wall clock, CPU seconds busy on the whole machine, and CPU seconds of this process tree."""
    own = sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
              for f in ("ru_utime", "ru_stime"))
    busy = None
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        busy = (sum(fields[:8]) - idle) / _ticks()  # guest time is already inside user
        own += _live_descendants_cpu(os.getpid())
    except (OSError, ValueError, IndexError):
        busy = None
    return {"wall": time.perf_counter(), "busy": busy, "own": own}


def foreign_cpu_share(before: dict, after: dict) -> float | None:
    """Share of the machine's CPU capacity used by *other* processes between two snapshots."""
    wall = after["wall"] - before["wall"]
    if before["busy"] is None or after["busy"] is None or wall < MIN_WINDOW_S:
        return None  # unknown: no /proc, or a window too short for 10-ms CPU ticks
    foreign = (after["busy"] - before["busy"]) - (after["own"] - before["own"])
    return round(max(foreign, 0.0) / (wall * (os.cpu_count() or 1)), 3)


def clean(values: list[float], shares: list[float | None]) -> tuple[list[float], dict]:
    """The values timed while the machine was otherwise quiet, if at least :data:`MIN_CLEAN` (or half)
    of them were; else all of them, flagged ``contended``."""
    quiet = [v for v, s in zip(values, shares, strict=True) if s is None or s <= CLEAN_SHARE]  # None: unknown
    enough = len(quiet) >= min(MIN_CLEAN, max(1, len(values) // 2))
    used = quiet if enough else values
    known = [s for s in shares if s is not None]
    return used, {"used": len(used), "of": len(values), "contended": not enough,
                  "foreign_share_median": sorted(known)[len(known) // 2] if known else None}
