"""The extract process: run the frozen teacher once over every view and fill the store.

Top to bottom: list the dataset → build the teacher → fingerprint → create (or resume) the
store → stream pending shards through DataLoader workers (decode + view replay) → teacher
forward in batches → whole-shard writes in a background thread → mark the store complete.
``--into STORE`` instead adds a teacher to a complete store, replaying its views
(:mod:`featcache.extract_into`).
"""

from __future__ import annotations

import datetime as dt
import fcntl
import logging
import os
from dataclasses import asdict
from pathlib import Path

from customkd.common import distributed, files
from customkd.common.devices import resolve_device, resolve_precision
from customkd.common.errors import UserError
from customkd.common.provenance import library_versions
from customkd.contract import location as where
from customkd.contract import store as fs
from customkd.contract.datasets import (
    DatasetListing,
    check_outside_data,
    load_listing,
    unlabeled_spec,
    with_kind,
)
from customkd.contract.fingerprint import Fingerprint
from customkd.contract.listing import listing_arrays
from customkd.contract.schema import (
    Layout,
    Manifest,
    ManifestError,
    TeacherEntry,
    make_fingerprint,
    parse_data_spec,
    shard_size_for,
)
from customkd.contract.storage import storage_for
from customkd.contract.views import SEED_SCHEME_VERSION, VIEW_PARAMS
from customkd.featcache.config import ExtractConfig
from customkd.featcache.extract_loop import (
    BatchObserver,
    ExtractResult,
    extract_shards,
    finish,
    lock_store,
    store_lock_key,
    teacher_entry,
)

log = logging.getLogger(__name__)


def build_fingerprint(listing: DatasetListing, cfg: ExtractConfig, layout: Layout) -> Fingerprint:
    """The store's own components (dataset, augmentation, layout, schema); each teacher has its own beside."""
    dataset = {"kind": parse_data_spec(listing.spec).kind, "n": len(listing), "listing_hash": listing.listing_hash(),
               "classes": list(listing.classes), "domains": list(listing.domains)}
    augmentation = {"recipe": cfg.recipe.to_dict(), "views": cfg.views, "base_seed": cfg.seed,
                    "seed_scheme": SEED_SCHEME_VERSION, "view_params": list(VIEW_PARAMS)}
    return Fingerprint.from_dict(make_fingerprint(dataset, None, augmentation, layout.to_dict()), with_teacher=False)


def build_manifest(listing: DatasetListing, fingerprint: Fingerprint, teacher: TeacherEntry, layout: Layout,
                   cfg: ExtractConfig, started: dt.datetime) -> Manifest:
    return Manifest(
        fingerprint=fingerprint, data_spec=listing.spec, classes=tuple(listing.classes),
        domains=tuple(listing.domains), splits=tuple(listing.splits), view_params=tuple(VIEW_PARAMS),
        shape=(layout.n_samples, layout.n_views), teachers=(teacher,), n_shards=layout.n_shards,
        versions=library_versions(), created=started.isoformat(),
        extract_config={**asdict(cfg), "recipe": cfg.recipe.to_dict()},
    )


def _check_readable(manifest: Manifest) -> None:
    """Refuse, before the store is created, settings whose store no reader would open (the bounds a manifest is
    checked against, :meth:`contract.schema.Manifest.from_attrs`), e.g. more views of the teacher's dimension
    than a sample may hold."""
    try:
        Manifest.from_attrs(manifest.to_attrs())
    except ManifestError as exc:
        raise UserError(f"these settings would make a store that no reader accepts ({exc}); lower --views or "
                        "--shard-size (nothing was written)") from None


def _check_replaceable(out: str) -> None:
    """With ``--overwrite``, refuse before any work (and any log line about it) an ``--out`` that would be refused
    when the store is deleted: a link (never deleted through) or a store holding something not its own."""
    if not where.is_remote(out) and Path(where.to_local(out)).is_symlink():
        raise UserError(f"{where.display(out)} is a symbolic link; point --out at the store directory itself "
                        "(nothing was deleted)")
    if fs.store_exists(where.location(out)):
        fs.check_removable(where.location(out))


def _first_teacher(manifest: Manifest) -> Fingerprint:
    """What ``extract --out`` compares: the store's components and the teacher it was created with."""
    return manifest.for_teachers(manifest.teacher_names[:1]).fingerprint


def _prepare_store(cfg: ExtractConfig, manifest: Manifest, per_sample: dict):
    """Create the store, resume it, or refuse; returns (group, already_complete).

    ``--out`` may be a local path or a URL (s3://, gs://, file://); checks and deletes go through
    the store helpers so both behave the same, and messages show URLs redacted."""
    out = where.location(cfg.out)
    name = where.display(cfg.out)
    if fs.is_foreign(out):
        raise UserError(f"{name} exists and is not a customkd store; choose another --out (nothing was touched)")
    if isinstance(out, Path) and out.is_dir() and not out.is_symlink() and not fs.store_exists(out):
        out.rmdir()  # empty: zarr creates it again (a link to an empty folder stays: the store is made in its target)
    if cfg.overwrite and fs.store_exists(out):
        fs.check_removable(out)  # again under torchrun's rank 0, before anything says the store is being replaced
    if fs.store_exists(out):
        try:
            opened = fs.Store.open(out, mode="r+")
        except UserError:
            if not cfg.overwrite:
                raise
            log.warning("replacing store %s, which cannot be used as it is (--overwrite)", name)
            fs.delete_store(out)
            return fs.create_store(out, manifest, per_sample), False
        if opened.status == fs.STATUS_CREATING:  # killed while creating: nothing written yet
            log.warning("store %s was interrupted while being created; creating it again", name)
            fs.delete_store(out)
            return fs.create_store(out, manifest, per_sample), False
        group, stored = opened.group, opened.manifest
        differs = _first_teacher(stored).diff(_first_teacher(manifest))
        complete = stored.status == fs.STATUS_COMPLETE
        if differs == ["schema"] and complete and not stored.writable and not cfg.overwrite:
            # the same extraction in an older schema version: complete, read as it is (never written to)
            log.info("store %s holds this extraction in schema version %d (read-only; --overwrite rebuilds it in "
                     "version %d)", name, stored.schema_version, manifest.schema_version)
            return group, True
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
    return fs.create_store(out, manifest, per_sample), False


def _hold_existing(out: str) -> str | None:
    """Lock an existing local store ``out`` before anything is listed or loaded: a second process writing it is
    refused at once (:func:`featcache.extract_loop.lock_store`). The lock's key, or None (no store yet, an object
    store)."""
    if where.is_remote(out) or not Path(where.to_local(out)).is_dir():
        return None
    return lock_store(out)


def _prepare_locked(cfg: ExtractConfig, manifest: Manifest, per_sample: dict, held: str | None) -> bool:
    """:func:`_prepare_store` of a local store under its locks; returns whether the store is complete.

    The folder above the store (created when missing) is held (``flock``, waiting) while the store is checked,
    created, resumed or replaced, so two first extractions of one ``--out`` never both create it: the second finds
    the store and its lock. The store's own lock (already held by :func:`_hold_existing` when it existed) is taken before anything in
    it is touched and kept on the store as prepared, under the same key, until :func:`extract` lets it go. Object
    stores have no locks."""
    if where.is_remote(cfg.out):
        return _prepare_store(cfg, manifest, per_sample)[1]
    out = Path(where.to_local(cfg.out)).absolute()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        parent = os.open(out.parent, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise UserError(f"cannot create {out.parent} for --out ({exc.strerror or exc}); choose a writable "
                        "location") from None
    try:
        fcntl.flock(parent, fcntl.LOCK_EX)
        key = held if held is not None else _hold_existing(cfg.out)  # a store made while the teacher loaded
        try:
            complete = _prepare_store(cfg, manifest, per_sample)[1]
        finally:
            if key is not None:
                files.release_lock(key)  # the folder may have been replaced: the one prepared is locked next
        lock_store(cfg.out)
        return complete
    finally:
        os.close(parent)


def _open_everywhere(cfg: ExtractConfig, env: distributed.DistEnv, manifest: Manifest, per_sample: dict,
                     held: str | None):
    """Rank 0 creates, resumes or refuses the store (:func:`_prepare_locked`); then every rank opens it.
    Returns (store, complete)."""
    complete = distributed.on_main(env, lambda: _prepare_locked(cfg, manifest, per_sample, held))
    distributed.barrier(env)
    return fs.Store.open(where.location(cfg.out), mode="r+"), complete


def extract(cfg: ExtractConfig, observe: BatchObserver | None = None) -> ExtractResult:
    """Run the whole extraction; idempotent and resumable. Under torchrun, rank k writes the shards
    k, k + world, …; the store is the same whatever the number of ranks. With ``cfg.into`` the teacher is
    added to that complete store instead (:func:`featcache.extract_into.extract_into`).

    ``observe`` (optional, e.g. a benchmark's clock) is told when each teacher batch starts and ends on
    this rank: ``observe("start", images)`` before the forward, ``observe("end", images)`` once its features
    are on the host. It changes nothing the extraction computes."""
    if cfg.into is not None:
        from customkd.featcache.extract_into import extract_into

        return extract_into(cfg, observe)
    started = dt.datetime.now(dt.UTC)
    storage_for(cfg.out).check_new_place("--out")
    if fs.is_foreign(cfg.out):  # before loading anything; also refuses a URL that carries credentials
        raise UserError(f"{where.display(cfg.out)} exists and is not a customkd store; choose another --out "
                        "(nothing was touched)")
    spec = "|".join([with_kind(cfg.data), *(unlabeled_spec(u) for u in cfg.unlabeled)])
    check_outside_data(spec, cfg.out, "--out", "replacing the store would delete images it reads")
    if cfg.overwrite:
        _check_replaceable(cfg.out)
    device = resolve_device(cfg.device)
    env, device = distributed.init_distributed(str(device) if cfg.device != "auto" else "auto")
    held = distributed.on_main(env, lambda: _hold_existing(cfg.out))
    try:
        return _extract_store(cfg, spec, env, device, started, observe, held)
    finally:
        key = store_lock_key(cfg.out)
        if env.main and key is not None:
            files.release_lock(key)


def _extract_store(cfg: ExtractConfig, spec: str, env: distributed.DistEnv, device, started: dt.datetime,
                   observe: BatchObserver | None, held: str | None) -> ExtractResult:
    """List the dataset, load the teacher, prepare the store and compute its pending shards on every rank."""
    from customkd.featcache.teachers import create_teacher

    listing = load_listing(spec)
    teacher = create_teacher(cfg.teacher, cfg.weights, str(device), size=cfg.teacher_size, tap=cfg.tap)
    precision = resolve_precision(cfg.precision, device)
    layout = Layout(len(listing), cfg.views, teacher.feature_dim, len(VIEW_PARAMS),
                    shard_size_for(len(listing), cfg.shard_size, cfg.chunk_size), cfg.chunk_size, cfg.compress)
    entry = teacher_entry(teacher, precision, 0)
    manifest = build_manifest(listing, build_fingerprint(listing, cfg, layout), entry, layout, cfg, started)
    _check_readable(manifest)
    per_sample = listing_arrays(listing)
    opened, complete = _open_everywhere(cfg, env, manifest, per_sample, held)
    shape = (layout.n_samples, layout.n_views, layout.feature_dim)
    if complete:
        log.info("store %s is already complete with the same fingerprint: nothing to do", where.display(cfg.out))
        return ExtractResult(cfg.out, "unchanged", shape, 0, 0.0)
    group, entry = opened.group, opened.manifest.teachers[0]
    pending = fs.pending_shards(group, entry)
    bad = extract_shards(group, teacher, entry, device, cfg, layout, listing, per_sample["sample_key"], pending, env,
                         precision, observe)
    finish(cfg.out, env, group, entry, bad, listing)
    seconds = (dt.datetime.now(dt.UTC) - started).total_seconds()
    log.info("store %s complete: N=%d V=%d D=%d in %.1fs", where.display(cfg.out), *shape, seconds)
    return ExtractResult(cfg.out, fs.STATUS_COMPLETE, shape, len(pending), seconds)
