"""``extract --teacher B --into STORE``: add a teacher to a complete store by replaying its recorded views.

Nothing is sampled again: every view's parameters are read from the store and replayed on the image, whose
bytes must still hash to the stored content hash. Only the new teacher's arrays (``features_t<k>``,
``teacher_done_t<k>``) and the manifest are written; the views, listing and other teachers stay byte for byte.
Resumable shard by shard and multi-rank (rank k takes shards k, k + world, …) like a first extraction.
One process adds to a local store at a time: rank 0 holds an exclusive lock on the store's folder
(:func:`common.files.hold_lock`, the lock distill holds on its run folder) from before the teacher loads to the end.
"""

from __future__ import annotations

import datetime as dt
import logging

import numpy as np

from customkd.common import distributed, files
from customkd.common.devices import resolve_device, resolve_precision
from customkd.common.errors import UserError
from customkd.contract import location as where
from customkd.contract import store as fs
from customkd.contract.datasets import DatasetListing, load_listing
from customkd.contract.listing import compare_listing, listing_arrays
from customkd.contract.schema import LISTING_ARRAYS, MAX_TEACHERS, Manifest, TeacherEntry
from customkd.featcache.config import ExtractConfig
from customkd.featcache.extract_loop import (
    BatchObserver,
    ExtractResult,
    StoredViews,
    extract_shards,
    finish,
    lock_store,
    teacher_entry,
)

log = logging.getLogger(__name__)

CHANGED_IMAGES_ADVICE = ("The store's views are replayed on the very images it was extracted from; restore those "
                         "images, or extract a new store with --out")


def _open_extendable(path: str, mode: str = "r") -> fs.Store:
    """The store to add a teacher to: complete (its view set) and of this schema version."""
    opened = fs.Store.open_complete(path) if mode == "r" else fs.Store.open(path, mode=mode)
    manifest = opened.stored_manifest()
    if not manifest.writable:
        raise UserError(f"cache {where.display(path)} has store schema version {manifest.schema_version}, which "
                        "holds one teacher and is read-only here; extract it again with this customkd (`customkd "
                        "extract ... --out NEW`) to add teachers to it")
    return opened


def _check_rows(listing: DatasetListing, manifest: Manifest, group, path: str) -> None:
    """The dataset's rows must be the store's (names, paths, labels, splits); image bytes are checked as read."""
    counted = compare_listing(listing, manifest)
    stored = {name: np.asarray(group[name][:]) for name in LISTING_ARRAYS}
    differs = [name for name, values in listing_arrays(listing).items() if not np.array_equal(values, stored[name])]
    problems = counted.problems() or [f"array {name} differs from the dataset listing" for name in differs]
    if problems:
        raise UserError(f"cache {where.display(path)} does not match its dataset ({problems[0]}); a teacher is added "
                        "by replaying the store's views on the same images: put them back where the store's dataset says")


def _slot_for(cfg: ExtractConfig, manifest: Manifest, wanted: TeacherEntry) -> tuple[int, bool]:
    """Where the teacher goes and whether its arrays are (re)created; raises when it is there already, different."""
    existing = manifest.teacher(wanted.name)
    if existing is None:
        if len(manifest.teachers) >= MAX_TEACHERS:
            raise UserError(f"cache {where.display(cfg.into)} already holds {MAX_TEACHERS} teachers, the most a store "
                            "may hold; extract a new store with --out")
        return len(manifest.teachers), True
    if cfg.overwrite_teacher:
        return existing.slot, True
    if existing.component.hash != wanted.component.hash:
        differs = sorted(key for key in {*existing.component.body, *wanted.component.body}
                         if existing.component.body.get(key) != wanted.component.body.get(key))
        raise UserError(f"cache {where.display(cfg.into)} already has teacher {wanted.name} with another "
                        f"{', '.join(differs)}; pass --overwrite-teacher to compute it again (only its features are "
                        "replaced)")
    return existing.slot, existing.status == fs.STATUS_CREATING


def _prepare(cfg: ExtractConfig, wanted: TeacherEntry) -> str:
    """Rank 0: list the teacher in the store (or find it there); ``unchanged`` when it is complete already."""
    opened = _open_extendable(cfg.into, mode="r+")
    group, manifest = opened.group, opened.stored_manifest()
    slot, create = _slot_for(cfg, manifest, wanted)
    existing = manifest.teacher(wanted.name)
    if not create and existing.status == fs.STATUS_COMPLETE:
        return "unchanged"
    if create:
        if existing is not None:
            log.warning("computing teacher %s of %s again (--overwrite-teacher)", wanted.name, where.display(cfg.into))
        fs.add_teacher(group, manifest, TeacherEntry(wanted.name, wanted.component, wanted.feature_dim,
                                                     fs.STATUS_IN_PROGRESS, slot))
    elif fs.remove_partials(cfg.into):
        log.info("removed temporary files left by an interrupted run")
    return "pending"


def extract_into(cfg: ExtractConfig, observe: BatchObserver | None = None) -> ExtractResult:
    """Add ``cfg.teacher`` to the complete store ``cfg.into``; a no-op when it holds that teacher complete with
    the same fingerprint component, refused when it holds it different (unless ``cfg.overwrite_teacher``), and
    refused while another process adds a teacher to the same local store."""
    started = dt.datetime.now(dt.UTC)
    opened = _open_extendable(cfg.into)
    group, manifest = opened.group, opened.manifest
    listing = load_listing(manifest.data_spec)
    _check_rows(listing, manifest, group, cfg.into)
    device = resolve_device(cfg.device)
    env, device = distributed.init_distributed(str(device) if cfg.device != "auto" else "auto")
    key = distributed.on_main(env, lambda: lock_store(cfg.into))
    try:
        return _add_teacher(cfg, env, device, manifest, listing, started, observe)
    finally:
        if key is not None and env.main:
            files.release_lock(key)


def _add_teacher(cfg: ExtractConfig, env: distributed.DistEnv, device, manifest: Manifest, listing: DatasetListing,
                 started: dt.datetime, observe: BatchObserver | None) -> ExtractResult:
    """Load the teacher, list it in the store (rank 0) and compute its pending shards on every rank."""
    from customkd.featcache.teachers import create_teacher

    path = cfg.into
    teacher = create_teacher(cfg.teacher, cfg.weights, str(device), size=cfg.teacher_size, tap=cfg.tap)
    precision = resolve_precision(cfg.precision, device)
    wanted = teacher_entry(teacher, precision, len(manifest.teachers))
    state = distributed.on_main(env, lambda: _prepare(cfg, wanted))
    distributed.barrier(env)
    shape = (manifest.n_samples, manifest.n_views, teacher.feature_dim)
    if state == "unchanged":
        log.info("store %s already has teacher %s complete: nothing to do", where.display(path), wanted.name)
        return ExtractResult(path, "unchanged", shape, 0, 0.0)
    opened = fs.Store.open(where.location(path), mode="r+")
    group, manifest = opened.group, opened.stored_manifest()
    entry = manifest.teacher(wanted.name)
    stored = StoredViews(np.asarray(group["views"][:]), np.asarray(group["content_hash"][:]),
                         np.asarray(group["valid"][:]).astype(bool))
    pending = fs.pending_shards(group, entry)
    bad = extract_shards(group, teacher, entry, device, cfg, manifest.teacher_layout(entry), listing,
                         np.asarray(group["sample_key"][:]), pending, env, precision, observe, stored)
    finish(path, env, group, entry, bad, listing, CHANGED_IMAGES_ADVICE)
    seconds = (dt.datetime.now(dt.UTC) - started).total_seconds()
    log.info("store %s: teacher %s added, D=%d, in %.1fs", where.display(path), entry.name, entry.feature_dim, seconds)
    return ExtractResult(path, fs.STATUS_COMPLETE, shape, len(pending), seconds)
