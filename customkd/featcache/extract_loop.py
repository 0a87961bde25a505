"""The extraction loop shared by a new store (:mod:`featcache.extract`) and a teacher added to one
(:mod:`featcache.extract_into`): decode + view replay in DataLoader workers → teacher forward in batches →
whole-shard writes in a background thread."""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from customkd.common import distributed, files
from customkd.common.devices import autocast
from customkd.common.errors import UserError
from customkd.contract import location as where
from customkd.contract import store as fs
from customkd.contract.datasets import IMAGE_ERRORS, DatasetListing
from customkd.contract.listing import content_hash
from customkd.contract.schema import Layout, TeacherEntry
from customkd.contract.views import VIEW_PARAMS, draw_views, normalize_uint8, replay_pil, to_uint8
from customkd.featcache.config import ExtractConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExtractResult:
    path: str
    status: str  # "complete" or "unchanged"
    shape: tuple[int, int, int]  # N, V and the teacher's D
    shards_written: int
    seconds: float


def teacher_entry(teacher, precision: str, slot: int) -> TeacherEntry:
    """A teacher of a store: its fingerprint component (identity, weights hash, size, tap, precision), in ``slot``."""
    return TeacherEntry.make({**teacher.identity(), "precision": precision}, teacher.feature_dim, slot)



# called as observe("start", images) just before each teacher forward and observe("end", images) once that
# batch's features are on the host; images = samples x views of the batch
BatchObserver = Callable[[str, int], None]


SKIPPED = "skipped at extraction"  # a row the store records as invalid (``--skip-bad``): no image, NaN features


@dataclass(frozen=True)
class StoredViews:
    """What a teacher added to a store replays: the store's views ``[N, V, P]``, content hashes ``[N]`` and valid
    flags ``[N]``, read once. Its views are never drawn again."""

    views: np.ndarray
    hashes: np.ndarray
    valid: np.ndarray


class ViewImages(torch.utils.data.Dataset):
    """Sample row → (row, images [V,3,S,S] uint8, view params [V,P], content hash, error or "").

    Workers return the views' bytes, not normalised floats: a quarter of the bytes to collate, pin and copy, and
    no float arithmetic in the workers; :func:`run_pending` normalises on the device (:func:`normalize_uint8`).

    Views are drawn from the seed, or with ``stored`` replayed exactly as a store recorded them (then an image
    whose bytes changed since is an error, and a row stored invalid yields :data:`SKIPPED`). An unreadable image
    yields zeros, NaN parameters and its error text instead of raising, so every bad file of the dataset is
    collected in one pass."""

    def __init__(self, listing: DatasetListing, rows: list[int], keys: np.ndarray, cfg: ExtractConfig, preprocess,
                 stored: StoredViews | None = None) -> None:
        self.listing, self.rows, self.keys, self.cfg, self.preprocess = listing, rows, keys, cfg, preprocess
        self.stored = stored
        self.n_views = cfg.views if stored is None else stored.views.shape[1]

    def _params(self, row: int, image, data: bytes) -> np.ndarray:
        if self.stored is None:
            return draw_views(*image.size, int(self.keys[row]), self.cfg.views, self.cfg.recipe, self.cfg.seed)
        if content_hash(data) != int(self.stored.hashes[row]):
            raise ValueError("its bytes changed since the store was extracted")
        return self.stored.views[row]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, item: int):
        row = self.rows[item]
        p = self.preprocess
        if self.stored is not None and not self.stored.valid[row]:
            return row, *self._nothing(), SKIPPED
        try:
            data = self.listing.read_bytes(row)
            image = self.listing.load_image(row, data)
            params = self._params(row, image, data)
            images = torch.stack([to_uint8(replay_pil(image, v, p.size, p.interpolation)) for v in params])
        except (*IMAGE_ERRORS, ValueError) as exc:
            reason = type(exc).__name__ if isinstance(exc, PermissionError) else str(exc).split("\n")[0][:80]
            return row, *self._nothing(), reason or "unreadable"
        signed_hash = int(np.array(content_hash(data), dtype=np.uint64).view(np.int64))  # collates as int64
        return row, images, torch.from_numpy(np.asarray(params, dtype=np.float32)), signed_hash, ""

    def _nothing(self) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Zero pixels, NaN view parameters and hash 0: a row without an image."""
        size = self.preprocess.size
        params = np.full((self.n_views, len(VIEW_PARAMS)), np.nan, dtype=np.float32)
        return torch.zeros(self.n_views, 3, size, size, dtype=torch.uint8), torch.from_numpy(params), 0


class ShardWriter:
    """Writes finished shards in a background thread so teacher compute and I/O overlap."""

    def __init__(self, group, layout: Layout, teacher: TeacherEntry) -> None:
        self.group, self.layout, self.teacher = group, layout, teacher
        self.queue: queue.Queue = queue.Queue(maxsize=4)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (item := self.queue.get()) is not None:
            if self.error is None:
                try:
                    fs.write_shard(self.group, self.layout, item[0], self.teacher, *item[1:])
                except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
                    self.error = exc

    def put(self, shard: int, features: np.ndarray, view_set: tuple | None) -> None:
        """Queue one shard: ``features [S, V, D]`` and (a new store) ``view_set`` = (views, hashes, valid)."""
        self._check()
        self.queue.put((shard, features, view_set))

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join()
        self._check()

    def _check(self) -> None:
        if self.error is not None:
            raise UserError(f"writing the store failed ({self.error}); fix the cause (disk space, permissions) "
                            "and rerun the same command to resume")


class RankProgress:
    """One progress bar on rank 0 for every rank, counting views (images × views per image, each one teacher
    forward): its own plus, polled every few seconds, those of shards other ranks have flagged done."""

    def __init__(self, env: distributed.DistEnv, group, layout: Layout, pending: list[int], teacher: TeacherEntry) -> None:
        from tqdm import tqdm

        self.env, self.group, self.layout, self.views = env, group, layout, layout.n_views
        self.flags = teacher.array("teacher_done")
        self.others = [s for s in pending if s % env.world != env.rank]
        total = sum(self._images(s) for s in pending)
        self.bar = tqdm(total=total, unit="view", desc=f"extract ({env.world} ranks)" if env.active else "extract",
                        smoothing=0.1, disable=not env.main)
        self.own, self.last_poll = 0, 0.0

    def _images(self, shard: int) -> int:
        rows = self.layout.shard_rows(shard)
        return (rows.stop - rows.start) * self.views

    def update(self, images: int) -> None:
        self.own += images
        others = 0
        if self.others and self.env.main and time.monotonic() - self.last_poll > 2.0:
            done = np.asarray(self.group[self.flags][:])
            others = sum(self._images(s) for s in self.others if done[s])
            self.last_poll = time.monotonic()
            self.bar.n = 0
        self.bar.update(max(self.own + others - self.bar.n, 0) if others else images)

    def close(self) -> None:
        self.bar.close()


def _check_finite(features: np.ndarray, valid: np.ndarray, shard: int, rows: slice, cfg: ExtractConfig,
                  listing: DatasetListing) -> None:
    """Refuse a shard whose stored (float16) features are inf or NaN for a readable image: the store would
    look complete and every reader would fail later or train on garbage. Nothing of the shard is written."""
    with np.errstate(over="ignore"):
        finite = np.isfinite(features.astype(np.float16)).reshape(len(features), -1).all(axis=1)
    bad = np.flatnonzero(valid.astype(bool) & ~finite)
    if not len(bad):
        return
    stored = features[bad]
    first = listing.samples[rows.start + int(bad[0])].relpath
    what = ("NaN (check the weights: NaN weights give NaN everywhere)" if np.isnan(stored).any() else
            f"values beyond float16's range (|x| > 65504, largest {float(np.nanmax(np.abs(stored))):.3g})")
    raise UserError(f"teacher {cfg.teacher} produced non-finite features for {len(bad)} image(s) of shard {shard}, "
                    f"e.g. {first}: {what}. The store keeps float16 features, so use weights or a feature tap "
                    "whose outputs are finite and within float16's range; nothing of this shard was written and "
                    "the store stays unfinished")


def run_pending(loader, teacher, device, cfg: ExtractConfig, layout: Layout, writer: ShardWriter,
                progress: RankProgress, listing: DatasetListing, precision: str,
                observe: BatchObserver | None = None, replaying: bool = False) -> list[tuple[int, str]]:
    """Teacher forward over the loader; hands each finished shard to the writer (with its view set unless
    ``replaying``: a teacher added to a store writes its features only). Returns bad rows."""
    buffers: dict[int, dict[int, tuple]] = {}
    bad: list[tuple[int, str]] = []
    layout_format = memory_format(teacher, device)
    # copied to the device once: a pageable host copy per batch would wait on the device
    mean = torch.tensor(teacher.preprocess.mean, dtype=torch.float32).to(device)
    std = torch.tensor(teacher.preprocess.std, dtype=torch.float32).to(device)
    try:
        with torch.inference_mode(), autocast(device, precision):
            for batch_rows, images, params, hashes, errors in loader:
                b, v = images.shape[:2]
                pixels = images.flatten(0, 1).to(device, non_blocking=True, memory_format=layout_format)
                pixels = normalize_uint8(pixels, mean, std)  # float32, in the uint8 batch's memory format
                if observe is not None:
                    observe("start", b * v)
                feats = teacher(pixels).float().view(b, v, -1).cpu().numpy()
                if observe is not None:
                    observe("end", b * v)  # the batch's features are on the host: the device is done with it
                hashes = hashes.numpy().view(np.uint64)
                for i, row in enumerate(batch_rows.tolist()):
                    if errors[i]:
                        bad.extend([(row, errors[i])] if errors[i] != SKIPPED else [])
                        feats[i] = np.nan
                    shard = layout.shard_of(row)
                    buffers.setdefault(shard, {})[row] = (feats[i], params[i].numpy(), int(hashes[i]), errors[i])
                    rows_in_shard = layout.shard_rows(shard)
                    if len(buffers[shard]) == rows_in_shard.stop - rows_in_shard.start:
                        done = buffers.pop(shard)
                        ordered = [done[r] for r in range(rows_in_shard.start, rows_in_shard.stop)]
                        _shard_complete(shard, ordered, cfg, layout, writer, listing, replaying)
                progress.update(b * v)
    finally:
        progress.close()
        writer.close()
    if bad and cfg.skip_bad and not replaying:
        log.warning("skipped %d unreadable image(s), recorded as invalid: %s", len(bad),
                    ", ".join(listing.samples[r].relpath for r, _ in bad[:10]))
        return []
    return bad


def _shard_complete(shard: int, ordered: list[tuple], cfg: ExtractConfig, layout: Layout, writer: ShardWriter,
                    listing: DatasetListing, replaying: bool) -> None:
    """Write a shard whose every row is computed: rows (features, params, hash, error or ""). A shard with a bad
    image stays pending (unless ``--skip-bad`` on a new store: then the image is recorded invalid)."""
    errors = [o[3] for o in ordered]
    valid = np.array([not e for e in errors], dtype=np.uint8)
    if any(e and e != SKIPPED for e in errors) and (replaying or not cfg.skip_bad):
        return
    features = np.stack([o[0] for o in ordered])
    _check_finite(features, valid, shard, layout.shard_rows(shard), cfg, listing)
    view_set = None if replaying else (np.stack([o[1] for o in ordered]),
                                        np.array([o[2] for o in ordered], dtype=np.uint64), valid)
    writer.put(shard, features, view_set)


def memory_format(teacher, device: torch.device) -> torch.memory_format:
    """channels_last for CNN teachers on a GPU (faster convolutions under autocast); ViTs and CPU keep NCHW."""
    if device.type != "cuda" or teacher.tap in ("cls", "mean", "cls+mean") or teacher.spec.library == "open_clip":
        return torch.contiguous_format
    teacher.model.to(memory_format=torch.channels_last)
    return torch.channels_last




def extract_shards(group, teacher, entry: TeacherEntry, device, cfg: ExtractConfig, layout: Layout,
                   listing: DatasetListing, keys: np.ndarray, pending: list[int], env: distributed.DistEnv,
                   precision: str, observe: BatchObserver | None = None,
                   stored: StoredViews | None = None) -> list[tuple[int, str]]:
    """This rank's share of the ``pending`` shards (k, k + world, …) of ``entry``: drawn views, or ``stored``
    ones replayed. Returns the rows whose image could not be used, with the reason."""
    owned = [shard for shard in pending if shard % env.world == env.rank]
    rows = [r for shard in owned for r in range(*layout.shard_rows(shard).indices(layout.n_samples))]
    loader = torch.utils.data.DataLoader(
        ViewImages(listing, rows, keys, cfg, teacher.preprocess, stored),
        batch_size=max(1, cfg.batch_size // layout.n_views), num_workers=cfg.workers,
        pin_memory=device.type == "cuda", prefetch_factor=4 if cfg.workers else None,
    )
    progress = RankProgress(env, group, layout, pending, entry)
    return run_pending(loader, teacher, device, cfg, layout, ShardWriter(group, layout, entry), progress, listing,
                       precision, observe, replaying=stored is not None)


BAD_IMAGES_ADVICE = ("Rerun with --skip-bad to record them as invalid samples (the store keeps its finished shards "
                     "and resumes), or fix or remove them and rerun with --overwrite (the dataset changed, so the "
                     "store is rebuilt)")


def finish(path: str, env: distributed.DistEnv, group, teacher: TeacherEntry, bad: list, listing: DatasetListing,
           advice: str = BAD_IMAGES_ADVICE) -> None:
    """After every rank is done: name all bad images, or (rank 0) check every flag of ``teacher`` and mark it
    (and the view set) complete."""
    bad = [item for rank_bad in distributed.all_gather_objects(env, bad) for item in rank_bad]
    distributed.barrier(env)
    if bad:
        listed = "; ".join(f"{listing.samples[r].relpath} ({reason})" for r, reason in sorted(bad))
        raise UserError(f"{len(bad)} unreadable image(s): {listed}. {advice}")

    def mark() -> None:
        if fs.pending_shards(group, teacher):
            raise UserError(f"store {where.display(path)} still has unfinished shards; rerun the same command to resume")
        fs.remove_partials(path)
        fs.mark_complete(group, teacher.name)

    distributed.on_main(env, mark)


def lock_store(path: str) -> str | None:
    """Hold the local store ``path`` for this process while it writes; the lock's key (None for an object store,
    which has no locks: zarr's one writer per object). A second extraction writing the same store (``--out`` or
    ``--into``) is refused in one line before its teacher loads: writing beside the first, it would delete the
    first one's temporary files as an interrupted run's leftovers. The lock is on the store's folder itself (its
    real path), so nothing is added to the store."""
    key = store_lock_key(path)
    if key is None:
        return None
    try:
        fd = os.open(Path(where.to_local(path)).resolve(), os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise UserError(f"cannot open store {where.display(path)} to lock it ({exc.strerror}); pass the store "
                        "folder `customkd extract --out` wrote") from None
    if not files.hold_lock(fd, key):
        raise UserError(f"another `customkd extract` is writing store {where.display(path)}; wait for it to finish, "
                        "then run this command again (nothing was written)")
    return key


def store_lock_key(path: str) -> str | None:
    """The key :func:`lock_store` holds a local store's lock under (its real path), None for an object store."""
    return None if where.is_remote(path) else f"store:{Path(where.to_local(path)).resolve()}"
