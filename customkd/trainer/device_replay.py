"""``--replay device``: every image decoded once into a uint8 cache, each batch's views replayed on the device.

The worker path (:class:`trainer.data.StudentViews` in DataLoader workers) decodes and replays every sample with PIL
on the host, every epoch. Here the images are decoded once (in device memory when they fit its budget, else in
pinned host memory), and a batch is its rows gathered from that cache and replayed by :func:`trainer.replay.
replay_batch`: crop + resize, flip and colour jitter as batched tensor ops. The batches, their order and their
(row, view) pairs are the worker loaders' own, so a run differs from ``--replay workers`` only by the engine:
``exact`` gives the same pixels, ``fast`` pixels within :data:`trainer.replay.FAST_TOLERANCE`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from customkd.common.errors import UserError
from customkd.trainer.data import CachedData
from customkd.trainer.replay import FILTERS, on_device, replay_batch

log = logging.getLogger(__name__)

REPLAY_MODES = ("auto", "workers", "device")
DEVICE_BUDGET = 0.25  # share of the GPU's memory the decoded images may take there
HOST_BUDGET = 0.25  # share of the host's physical memory they may take in pinned pages


@dataclass(frozen=True)
class DecodedImages:
    """Rows of a store decoded once: ``pixels`` uint8 ``[R, C, H, W]`` (C = 1 when every image is grey), zero-padded
    past each image's ``sizes`` ``[R, 2]`` (width, height); ``position[row]`` is the row's index in ``pixels``."""

    pixels: torch.Tensor
    sizes: np.ndarray
    position: np.ndarray

    @property
    def nbytes(self) -> int:
        return self.pixels.numel()

    def batch(self, rows: np.ndarray, device: torch.device) -> tuple[torch.Tensor, np.ndarray]:
        """The rows' images ``[B, C, H, W]`` on ``device`` and their sizes ``[B, 2]``."""
        index = self.position[rows]
        if self.pixels.device.type == device.type:
            images = self.pixels[on_device(index, self.pixels.device)]
        else:  # host cache, GPU training: gather on the host, one pinned copy queued on the stream
            images = self.pixels[torch.from_numpy(index)].pin_memory().to(device, non_blocking=True)
        return images, self.sizes[index]


def _decode(data: CachedData, row: int) -> np.ndarray:
    """One image as PIL's replay sees it: ``[H, W, 1]`` for a grey image, ``[H, W, 3]`` RGB otherwise."""
    image = data.listing.load_image(row)
    if image.mode == "L":
        return np.asarray(image, dtype=np.uint8)[..., None]
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def decode_images(data: CachedData, rows: np.ndarray, budget: int, workers: int = 2) -> DecodedImages | None:
    """``rows`` decoded (``workers`` threads; PIL decodes outside the GIL) into host memory, or ``None`` as soon
    as the padded cache would exceed ``budget`` bytes."""
    rows = np.unique(rows)
    arrays: list[np.ndarray] = []
    height = width = channels = 0
    pool = ThreadPoolExecutor(max(workers, 1))
    try:
        for array in pool.map(lambda row: _decode(data, int(row)), rows):
            height, width = max(height, array.shape[0]), max(width, array.shape[1])
            channels = max(channels, array.shape[2])
            if len(rows) * height * width * channels > budget:
                return None
            arrays.append(array)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    pixels = np.zeros((len(rows), channels, height, width), np.uint8)
    for i, array in enumerate(arrays):
        pixels[i, :, : array.shape[0], : array.shape[1]] = array.transpose(2, 0, 1)  # a grey image broadcasts
    position = np.full(len(data.views), -1, np.int64)
    position[rows] = np.arange(len(rows))
    sizes = np.array([(a.shape[1], a.shape[0]) for a in arrays], np.int64).reshape(-1, 2)
    return DecodedImages(torch.from_numpy(pixels), sizes, position)


def memory_budget(device: torch.device) -> tuple[int, torch.device]:
    """(bytes, where): the decoded images' budget on the GPU, or in host memory on a CPU run."""
    if device.type == "cuda":
        return int(DEVICE_BUDGET * torch.cuda.get_device_properties(device).total_memory), device
    import os

    return int(HOST_BUDGET * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")), torch.device("cpu")


def place(decoded: DecodedImages, device: torch.device) -> DecodedImages:
    """The cache on the GPU when it fits its budget there, else in pinned host memory (or plain, on a CPU run)."""
    if device.type != "cuda":
        return decoded
    if decoded.nbytes <= memory_budget(device)[0]:
        return DecodedImages(decoded.pixels.to(device), decoded.sizes, decoded.position)
    return DecodedImages(decoded.pixels.pin_memory(), decoded.sizes, decoded.position)


def check_replay(replay: str, engine: str, interpolation: str, strong: bool) -> None:
    """Refuse ``--replay device`` where it cannot replay what the workers would."""
    if replay != "device":
        return
    if strong:
        raise UserError("--replay device does not replay FixMatch's RandAugment views; use --replay workers with "
                        "--ssl fixmatch")
    if interpolation not in FILTERS:
        raise UserError(f"--replay device resamples with {', '.join(FILTERS)}, not {interpolation}; use --replay "
                        "workers")


def resolve_replay(replay: str, data: CachedData, rows: np.ndarray, device: torch.device, strong: bool,
                   workers: int = 2) -> DecodedImages | None:
    """The decoded cache when views are replayed on the device, ``None`` for the worker path.

    ``auto``: the device on CUDA when the images fit :func:`memory_budget` (and no FixMatch), workers elsewhere;
    ``device``: decoded whatever their size within the host budget, refused past it."""
    if replay == "workers" or (replay == "auto" and (device.type != "cuda" or strong)):
        return None
    budget = max(memory_budget(device)[0], memory_budget(torch.device("cpu"))[0]) if replay == "device" \
        else memory_budget(device)[0]
    decoded = decode_images(data, rows, budget, workers)
    if decoded is None:
        if replay == "device":
            raise UserError(f"--replay device: the decoded images need more than {budget / 2**30:.1f} GiB; use "
                            "--replay workers")
        log.info("decoded images exceed %.1f GiB: views are replayed by the loader workers", budget / 2**30)
        return None
    log.info("views replayed on %s from %d decoded images (%.1f MiB)", device, len(rows), decoded.nbytes / 2**20)
    return place(decoded, device)


def replay_record(decoded: DecodedImages | None, engine: str) -> dict:
    """config.json's account of how views were replayed."""
    if decoded is None:
        return {"mode": "workers"}
    return {"mode": "device", "engine": engine, "cache": decoded.pixels.device.type,
            "decoded_mib": round(decoded.nbytes / 2**20, 1)}


class DeviceReplay:
    """Batches of (uint8 pixels ``[B, 3, S, S]`` on the device, rows ``[B]``, views ``[B]``), the worker loaders'
    batches replayed from the decoded cache; the same interface as :class:`trainer.data.RunLoader`."""

    def __init__(self, decoded: DecodedImages, views: np.ndarray, size: int, engine: str, device: torch.device,
                 plan: Callable[[int], list[list[tuple]]] | None = None, interpolation: str = "bilinear") -> None:
        self.decoded, self.views, self.size, self.engine = decoded, views, size, engine
        self.device, self.plan, self.interpolation = device, plan, interpolation

    def replay(self, items: list[tuple]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One batch of (row, view[, epoch]) items."""
        rows = np.fromiter((item[0] for item in items), np.int64, len(items))
        views = np.fromiter((item[1] for item in items), np.int64, len(items))
        images, sizes = self.decoded.batch(rows, self.device)
        pixels = replay_batch(images, sizes, self.views[rows, views], self.size, self.interpolation, self.engine)
        return pixels, torch.from_numpy(rows), torch.from_numpy(views)

    def start(self) -> DeviceReplay:
        return self

    def shutdown(self) -> None:
        pass

    def epoch(self, epoch: int) -> ReplayBatches:
        return ReplayBatches(self, self.plan(epoch))

    def batches(self, batches: list[list[tuple]]) -> ReplayBatches:
        return ReplayBatches(self, batches)


class ReplayBatches:
    """Iterate for the batches; ``batch_sampler`` lists them, as an epoch of a RunLoader does."""

    def __init__(self, replay: DeviceReplay, batches: list[list[tuple]]) -> None:
        self.replay, self.batch_sampler = replay, batches

    def __iter__(self):
        return (self.replay.replay(items) for items in self.batch_sampler)

    def __len__(self) -> int:
        return len(self.batch_sampler)
