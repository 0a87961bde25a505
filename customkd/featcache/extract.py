"""The extract process: run the frozen teacher once over every view and fill the store.

Top to bottom: list the dataset → build the teacher → fingerprint → create (or resume) the
store → stream pending shards through DataLoader workers (decode + view replay) → teacher
forward in batches → whole-shard writes in a background thread → mark the store complete.
"""

from __future__ import annotations

import datetime as dt
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from customkd.common import distributed
from customkd.common.devices import autocast, resolve_device, resolve_precision
from customkd.common.errors import UserError
from customkd.common.files import check_new_place
from customkd.common.provenance import library_versions
from customkd.featcache import location as where
from customkd.featcache import store as fs
from customkd.featcache.config import ExtractConfig
from customkd.featcache.datasets import IMAGE_ERRORS, DatasetListing, load_listing, unlabeled_spec, with_kind
from customkd.featcache.listing import content_hash, listing_arrays
from customkd.featcache.schema import (
    DataSpecError,
    Fingerprint,
    Layout,
    Manifest,
    ManifestError,
    parse_data_spec,
    shard_size_for,
)
from customkd.featcache.views import SEED_SCHEME_VERSION, VIEW_PARAMS, draw_views, replay

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExtractResult:
    path: str
    status: str  # "complete" or "unchanged"
    shape: tuple[int, int, int]
    shards_written: int
    seconds: float


class ViewImages(torch.utils.data.Dataset):
    """Sample row → (row, images [V,3,S,S], view params [V,P], content hash, error or "").

    An unreadable image yields zeros, NaN parameters and its error text instead of raising, so
    every bad file of the dataset is collected in one pass."""

    def __init__(self, listing: DatasetListing, rows: list[int], keys: np.ndarray, cfg: ExtractConfig, preprocess) -> None:
        self.listing, self.rows, self.keys, self.cfg, self.preprocess = listing, rows, keys, cfg, preprocess

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, item: int):
        row = self.rows[item]
        p = self.preprocess
        try:
            data = self.listing.read_bytes(row)
            image = self.listing.load_image(row, data)
            params = draw_views(*image.size, int(self.keys[row]), self.cfg.views, self.cfg.recipe, self.cfg.seed)
            images = torch.stack([replay(image, v, p.size, p.mean, p.std, p.interpolation) for v in params])
        except IMAGE_ERRORS as exc:
            reason = type(exc).__name__ if isinstance(exc, PermissionError) else str(exc).split("\n")[0][:80]
            params = np.full((self.cfg.views, len(VIEW_PARAMS)), np.nan, dtype=np.float32)
            return row, torch.zeros(self.cfg.views, 3, p.size, p.size), torch.from_numpy(params), 0, reason or "unreadable"
        signed_hash = int(np.array(content_hash(data), dtype=np.uint64).view(np.int64))  # collates as int64
        return row, images, torch.from_numpy(params), signed_hash, ""


class ShardWriter:
    """Writes finished shards in a background thread so teacher compute and I/O overlap."""

    def __init__(self, group, layout: Layout) -> None:
        self.group, self.layout = group, layout
        self.queue: queue.Queue = queue.Queue(maxsize=4)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (item := self.queue.get()) is not None:
            if self.error is None:
                try:
                    fs.write_shard(self.group, self.layout, *item)
                except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
                    self.error = exc

    def put(self, shard: int, features: np.ndarray, views: np.ndarray, hashes: np.ndarray, valid: np.ndarray) -> None:
        self._check()
        self.queue.put((shard, features, views, hashes, valid))

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join()
        self._check()

    def _check(self) -> None:
        if self.error is not None:
            raise UserError(f"writing the store failed ({self.error}); fix the cause (disk space, permissions) "
                            "and rerun the same command to resume")


def build_fingerprint(listing: DatasetListing, teacher, cfg: ExtractConfig, layout: Layout,
                      precision: str) -> Fingerprint:
    dataset = {"kind": parse_data_spec(listing.spec).kind, "n": len(listing), "listing_hash": listing.listing_hash(),
               "classes": list(listing.classes), "domains": list(listing.domains)}
    augmentation = {"recipe": cfg.recipe.to_dict(), "views": cfg.views, "base_seed": cfg.seed,
                    "seed_scheme": SEED_SCHEME_VERSION, "view_params": list(VIEW_PARAMS)}
    return Fingerprint.make(dataset, {**teacher.identity(), "precision": precision}, augmentation, layout.to_dict())


def build_manifest(listing: DatasetListing, fingerprint: Fingerprint, layout: Layout, cfg: ExtractConfig,
                   started: dt.datetime) -> Manifest:
    return Manifest(
        fingerprint=fingerprint, data_spec=listing.spec, classes=tuple(listing.classes),
        domains=tuple(listing.domains), splits=tuple(listing.splits), view_params=tuple(VIEW_PARAMS),
        shape=(layout.n_samples, layout.n_views, layout.feature_dim), n_shards=layout.n_shards,
        versions=library_versions(), created=started.isoformat(),
        extract_config={**asdict(cfg), "recipe": cfg.recipe.to_dict()},
    )


def _check_readable(manifest: Manifest) -> None:
    """Refuse, before the store is created, settings whose store no reader would open (the bounds a manifest is
    checked against, :meth:`featcache.schema.Manifest.from_attrs`), e.g. more views of the teacher's dimension
    than a sample may hold."""
    try:
        Manifest.from_attrs(manifest.to_attrs())
    except ManifestError as exc:
        raise UserError(f"these settings would make a store that no reader accepts ({exc}); lower --views or "
                        "--shard-size (nothing was written)") from None


def _check_data_outside_out(spec: str, out: str) -> None:
    """Refuse a dataset folder that is, lies inside or contains ``--out``: replacing the store would delete the
    images it reads, and a store never holds its dataset (a manifest pointing inside its store is refused too)."""
    if where.is_remote(out):
        return
    store = Path(where.to_local(out)).expanduser().resolve()
    try:
        folders = parse_data_spec(spec).folders
    except DataSpecError:
        return  # load_listing names the problem
    for folder in folders:
        images = Path(folder).expanduser().resolve()
        relation = ("is" if images == store else "lies inside" if store in images.parents
                    else "contains" if images in store.parents else None)
        if relation:
            raise UserError(f"dataset folder {folder} {relation} --out {where.display(out)}; replacing the store would "
                            "delete images it reads: choose an --out outside the dataset folders (nothing was touched)")


def _prepare_store(cfg: ExtractConfig, layout: Layout, manifest: Manifest, per_sample: dict):
    """Create the store, resume it, or refuse; returns (group, already_complete).

    ``--out`` may be a local path or a URL (s3://, gs://, file://); checks and deletes go through
    the store helpers so both behave the same, and messages show URLs redacted."""
    out = where.location(cfg.out)
    name = where.display(cfg.out)
    if fs.is_foreign(out):
        raise UserError(f"{name} exists and is not a customkd store; choose another --out (nothing was touched)")
    if isinstance(out, Path) and out.is_dir() and not fs.store_exists(out):
        out.rmdir()  # empty: zarr creates it again
    if cfg.overwrite and fs.store_exists(out):
        fs.check_removable(out)  # before anything says the store is being replaced
    if fs.store_exists(out):
        try:
            group = fs.open_store(out, mode="r+")
        except UserError:
            if not cfg.overwrite:
                raise
            log.warning("replacing store %s, which cannot be used as it is (--overwrite)", name)
            fs.delete_store(out)
            return _create(cfg, out, layout, manifest, per_sample), False
        if fs.read_status(group, out) == fs.STATUS_CREATING:  # killed while creating: nothing written yet
            log.warning("store %s was interrupted while being created; creating it again", name)
            fs.delete_store(out)
            return fs.create_store(out, layout, manifest, per_sample), False
        stored = fs.read_manifest(group, out)
        differs = stored.fingerprint.diff(manifest.fingerprint)
        complete = stored.status == fs.STATUS_COMPLETE
        if not differs and not (complete and cfg.overwrite):
            if not complete and fs.remove_partials(out):
                log.info("removed temporary files left by an interrupted run")
            return group, complete
        if not cfg.overwrite:
            raise UserError(f"store {name} was built with a different {', '.join(differs)}; choose another --out "
                            "or pass --overwrite to replace it")
        log.warning("replacing store %s (%s)", name, f"different {', '.join(differs)}" if differs else
                    "--overwrite rebuilds it, e.g. after images were edited in place")
        fs.delete_store(out)
    return _create(cfg, out, layout, manifest, per_sample), False


def _create(cfg: ExtractConfig, out, layout: Layout, manifest: Manifest, per_sample: dict):
    if isinstance(out, Path):
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"cannot create {out.parent} for --out ({exc.strerror or exc}); choose a writable "
                            "location") from None
    return fs.create_store(out, layout, manifest, per_sample)


class RankProgress:
    """One progress bar on rank 0 for every rank: its own images plus, polled every few seconds,
    the images of shards other ranks have flagged done."""

    def __init__(self, env: distributed.DistEnv, group, layout: Layout, pending: list[int], views: int) -> None:
        from tqdm import tqdm

        self.env, self.group, self.layout, self.views = env, group, layout, views
        self.others = [s for s in pending if s % env.world != env.rank]
        total = sum(self._images(s) for s in pending)
        self.bar = tqdm(total=total, unit="img", desc=f"extract ({env.world} ranks)" if env.active else "extract",
                        smoothing=0.1, disable=not env.main)
        self.own, self.last_poll = 0, 0.0

    def _images(self, shard: int) -> int:
        rows = self.layout.shard_rows(shard)
        return (rows.stop - rows.start) * self.views

    def update(self, images: int) -> None:
        self.own += images
        others = 0
        if self.others and self.env.main and time.monotonic() - self.last_poll > 2.0:
            done = np.asarray(self.group["done"][:])
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


def _run_pending(loader, teacher, device, cfg: ExtractConfig, layout: Layout, writer: ShardWriter,
                 progress: RankProgress, listing: DatasetListing, precision: str,
                 observe: BatchObserver | None = None) -> list[tuple[int, str]]:
    """Teacher forward over the loader; hands each finished shard to the writer. Returns bad rows."""
    buffers: dict[int, dict[int, tuple]] = {}
    bad: list[tuple[int, str]] = []
    layout_format = _memory_format(teacher, device)
    try:
        with torch.inference_mode(), autocast(device, precision):
            for batch_rows, images, params, hashes, errors in loader:
                b, v = images.shape[:2]
                pixels = images.flatten(0, 1).to(device, non_blocking=True, memory_format=layout_format)
                if observe is not None:
                    observe("start", b * v)
                feats = teacher(pixels).float().view(b, v, -1).cpu().numpy()
                if observe is not None:
                    observe("end", b * v)  # the batch's features are on the host: the device is done with it
                hashes = hashes.numpy().view(np.uint64)
                for i, row in enumerate(batch_rows.tolist()):
                    if errors[i]:
                        bad.append((row, errors[i]))
                        feats[i] = np.nan
                    shard = layout.shard_of(row)
                    buffers.setdefault(shard, {})[row] = (feats[i], params[i].numpy(), int(hashes[i]), not errors[i])
                    rows_in_shard = layout.shard_rows(shard)
                    if len(buffers[shard]) == rows_in_shard.stop - rows_in_shard.start:
                        done = buffers.pop(shard)
                        ordered = [done[r] for r in range(rows_in_shard.start, rows_in_shard.stop)]
                        valid = np.array([o[3] for o in ordered], dtype=np.uint8)
                        if valid.all() or cfg.skip_bad:  # a shard with bad images stays pending without --skip-bad
                            features = np.stack([o[0] for o in ordered])
                            _check_finite(features, valid, shard, rows_in_shard, cfg, listing)
                            writer.put(shard, features, np.stack([o[1] for o in ordered]),
                                       np.array([o[2] for o in ordered], dtype=np.uint64), valid)
                progress.update(b * v)
    finally:
        progress.close()
        writer.close()
    if bad and cfg.skip_bad:
        log.warning("skipped %d unreadable image(s), recorded as invalid: %s", len(bad),
                    ", ".join(listing.samples[r].relpath for r, _ in bad[:10]))
        return []
    return bad


def _memory_format(teacher, device: torch.device) -> torch.memory_format:
    """channels_last for CNN teachers on a GPU (faster convolutions under autocast); ViTs and CPU keep NCHW."""
    if device.type != "cuda" or teacher.tap in ("cls", "mean", "cls+mean") or teacher.spec.library == "open_clip":
        return torch.contiguous_format
    teacher.model.to(memory_format=torch.channels_last)
    return torch.channels_last


def _open_everywhere(cfg: ExtractConfig, env: distributed.DistEnv, layout: Layout, manifest: Manifest,
                     per_sample: dict):
    """Rank 0 creates, resumes or refuses the store; then every rank opens it. Returns (group, complete)."""
    complete = distributed.on_main(env, lambda: _prepare_store(cfg, layout, manifest, per_sample)[1])
    distributed.barrier(env)
    return fs.open_store(where.location(cfg.out), mode="r+"), complete


def _finish(cfg: ExtractConfig, env: distributed.DistEnv, group, bad: list, listing: DatasetListing) -> None:
    """After every rank is done: name all bad images, or (rank 0) check every flag and mark complete."""
    bad = [item for rank_bad in distributed.all_gather_objects(env, bad) for item in rank_bad]
    distributed.barrier(env)
    if bad:
        listed = "; ".join(f"{listing.samples[r].relpath} ({reason})" for r, reason in sorted(bad))
        raise UserError(f"{len(bad)} unreadable image(s): {listed}. Rerun with --skip-bad to record them as invalid "
                        "samples (the store keeps its finished shards and resumes), or fix or remove them and rerun "
                        "with --overwrite (the dataset changed, so the store is rebuilt)")

    def mark() -> None:
        if fs.pending_shards(group):
            raise UserError(f"store {where.display(cfg.out)} still has unfinished shards; rerun the same command to resume")
        fs.remove_partials(cfg.out)
        fs.mark_complete(group)

    distributed.on_main(env, mark)


# called as observe("start", images) just before each teacher forward and observe("end", images) once that
# batch's features are on the host; images = samples x views of the batch
BatchObserver = Callable[[str, int], None]


def extract(cfg: ExtractConfig, observe: BatchObserver | None = None) -> ExtractResult:
    """Run the whole extraction; idempotent and resumable. Under torchrun, rank k writes the shards
    k, k + world, …; the store is the same whatever the number of ranks.

    ``observe`` (optional, e.g. a benchmark's clock) is told when each teacher batch starts and ends on
    this rank: ``observe("start", images)`` before the forward, ``observe("end", images)`` once its features
    are on the host. It changes nothing the extraction computes."""
    from customkd.featcache.teachers import create_teacher

    started = dt.datetime.now(dt.UTC)
    if fs.is_foreign(cfg.out):  # before loading anything; also refuses a URL that carries credentials
        raise UserError(f"{where.display(cfg.out)} exists and is not a customkd store; choose another --out "
                        "(nothing was touched)")
    if not where.is_remote(cfg.out):
        check_new_place(where.to_local(cfg.out), "--out")
    spec = "|".join([with_kind(cfg.data), *(unlabeled_spec(u) for u in cfg.unlabeled)])
    _check_data_outside_out(spec, cfg.out)
    listing = load_listing(spec)
    device = resolve_device(cfg.device)
    env, device = distributed.init_distributed(str(device) if cfg.device != "auto" else "auto")
    teacher = create_teacher(cfg.teacher, cfg.weights, str(device), size=cfg.teacher_size, tap=cfg.tap)
    precision = resolve_precision(cfg.precision, device)
    layout = Layout(len(listing), cfg.views, teacher.feature_dim, len(VIEW_PARAMS),
                    shard_size_for(len(listing), cfg.shard_size, cfg.chunk_size), cfg.chunk_size, cfg.compress)
    manifest = build_manifest(listing, build_fingerprint(listing, teacher, cfg, layout, precision), layout, cfg,
                              started)
    _check_readable(manifest)
    per_sample = listing_arrays(listing)
    keys = per_sample["sample_key"]
    group, complete = _open_everywhere(cfg, env, layout, manifest, per_sample)
    shape = (layout.n_samples, layout.n_views, layout.feature_dim)
    if complete:
        log.info("store %s is already complete with the same fingerprint: nothing to do", where.display(cfg.out))
        return ExtractResult(cfg.out, "unchanged", shape, 0, 0.0)

    pending = fs.pending_shards(group)
    owned = [shard for shard in pending if shard % env.world == env.rank]
    rows = [r for shard in owned for r in range(*layout.shard_rows(shard).indices(layout.n_samples))]
    loader = torch.utils.data.DataLoader(
        ViewImages(listing, rows, keys, cfg, teacher.preprocess), batch_size=max(1, cfg.batch_size // cfg.views),
        num_workers=cfg.workers, pin_memory=device.type == "cuda", prefetch_factor=4 if cfg.workers else None,
    )
    progress = RankProgress(env, group, layout, pending, cfg.views)
    bad = _run_pending(loader, teacher, device, cfg, layout, ShardWriter(group, layout), progress, listing, precision,
                       observe)
    _finish(cfg, env, group, bad, listing)
    seconds = (dt.datetime.now(dt.UTC) - started).total_seconds()
    log.info("store %s complete: N=%d V=%d D=%d in %.1fs", where.display(cfg.out), *shape, seconds)
    return ExtractResult(cfg.out, fs.STATUS_COMPLETE, shape, len(pending), seconds)
