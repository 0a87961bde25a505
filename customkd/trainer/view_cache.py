"""Replayed views kept once made, in memory the training process shares with its loader workers.

A store's views are fixed: the (row, view) pair a loader worker replays (decode the image, crop, resize, flip,
colour jitter with PIL) gives the same uint8 pixels every time it comes back, epoch after epoch. The first worker to
replay a pair writes its pixels here; every later request for it, from any worker, copies them instead of decoding
and replaying the image again. The pixels are the replay's own bytes, so a run with the cache trains exactly as one
without it; only the loader's CPU time changes (on a 2-core machine the workers otherwise take it from the student's
training step).

The memory is one anonymous shared ``mmap`` made before the workers fork: it is not a file, needs no ``/dev/shm``
space, and its pages are only taken when a pair is first written. It is used when every pair of the run's rows fits
:func:`host_budget`; a loader started another way than by ``fork`` gets no cache (the pixels are
then replayed every time, as without it).
"""

from __future__ import annotations

import logging
import mmap
import os
import threading

import numpy as np
import torch

log = logging.getLogger(__name__)

HOST_SHARE = 0.25  # share of the host's physical memory the cached views may take


def host_budget() -> int:
    """Bytes one process's cached views may take: :data:`HOST_SHARE` of the host's physical memory, shared by the
    processes torchrun started on this host (``LOCAL_WORLD_SIZE``), each of which keeps its own cache."""
    local_ranks = max(int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1), 1)
    return int(HOST_SHARE * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")) // local_ranks


class ViewCache:
    """uint8 pixels ``[R, V, 3, S, S]`` of the views of ``rows`` (of a store of ``n_rows`` rows and ``n_views``
    views), each with a flag saying it was written. :meth:`get` and :meth:`put` may be called from any process
    forked after the cache was made."""

    def __init__(self, rows: np.ndarray, n_rows: int, n_views: int, size: int) -> None:
        rows = np.unique(np.asarray(rows, dtype=np.int64))
        self.position = np.full(n_rows, -1, dtype=np.int64)
        self.position[rows] = np.arange(len(rows))
        slots, self.shape = len(rows) * n_views, (3, size, size)
        self.nbytes = slots * 3 * size * size
        self._memory: mmap.mmap | None = mmap.mmap(-1, max(slots + self.nbytes, 1))  # MAP_SHARED | MAP_ANONYMOUS
        self.written = np.frombuffer(self._memory, np.uint8, slots).reshape(len(rows), n_views)
        self.pixels = np.frombuffer(self._memory, np.uint8, self.nbytes, offset=slots).reshape(
            len(rows), n_views, *self.shape)
        # An uncontended lock taken between a flag and its pixels is a full memory barrier: a reader that sees
        # the flag set sees the pixels written before it, also on CPUs that reorder memory accesses.
        self._fence = threading.Lock()

    @classmethod
    def for_rows(cls, rows: np.ndarray, n_rows: int, n_views: int, size: int) -> ViewCache | None:
        """A cache of every view of ``rows`` when it fits :func:`host_budget`, else None (logged)."""
        needed = len(np.unique(rows)) * n_views * 3 * size * size
        if needed > host_budget():
            log.info("replayed views would take %.1f GiB, over %.1f GiB: the workers replay each view every time",
                     needed / 2**30, host_budget() / 2**30)
            return None
        return cls(rows, n_rows, n_views, size)

    def get(self, row: int, view: int) -> torch.Tensor | None:
        """The pixels ``[3, S, S]`` of (row, view) when a worker has replayed them, else None."""
        slot = self.position[row]
        if self._memory is None or slot < 0 or not self.written[slot, view]:
            return None
        with self._fence:
            pass
        return torch.from_numpy(self.pixels[slot, view].copy())

    def put(self, row: int, view: int, pixels: torch.Tensor) -> None:
        """Keep the replayed ``pixels`` ``[3, S, S]`` of (row, view). Workers writing the same pair write the same
        bytes, so two at once cannot tear it."""
        slot = self.position[row]
        if self._memory is None or slot < 0 or tuple(pixels.shape) != self.shape:
            return
        self.pixels[slot, view] = pixels.numpy()
        with self._fence:
            pass
        self.written[slot, view] = 1

    def record(self) -> dict:
        """config.json's account of the cache."""
        return {"view_cache_mib": round(self.nbytes / 2**20, 1)}

    def __getstate__(self) -> dict:
        # a process started by spawn or forkserver cannot share the mapping: it gets a cache that holds nothing
        state = dict(self.__dict__, _memory=None, written=None, pixels=None)
        state.pop("_fence")
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _fence=threading.Lock())
