"""The `customkd cache` commands: info, verify, HDF5 export/import (the store as one file), and the
teacher re-check. Copying stores between locations is featcache/remote.py."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from common.errors import UserError
from common.files import atomic_path
from featcache import location as where
from featcache import store as fs
from featcache.datasets import DatasetListing, load_listing
from featcache.listing import compare_listing
from featcache.schema import (
    ARRAYS,
    ATTRS_KEY,
    LISTING_ARRAYS,
    STALENESS_ARRAYS,
    Manifest,
    ManifestError,
    TeacherComponent,
)
from featcache.views import view_problem

log = logging.getLogger(__name__)


def _size_on_disk(path: str) -> int:
    if where.is_remote(path):
        return where.size_bytes(path)  # one listing instead of a stat per object
    return sum(p.stat().st_size for p in where.location(path).rglob("*") if p.is_file())


def store_info(path: str) -> dict:
    """The manifest summary, shards done, size on disk; ``manifest`` as stored (for ``--json``) and the
    fingerprint ``components``. Of a store still being created only the status is known."""
    group = fs.open_store(path)
    creating = fs.read_status(group, path) == fs.STATUS_CREATING
    manifest = None if creating else fs.read_manifest(group, path)
    if manifest is None:
        summary = {"status": fs.STATUS_CREATING,
                   "shards_done": "none (creation was interrupted; rerun the extract command)"}
    else:
        done = np.asarray(group["done"][:])
        summary = {**fs.manifest_summary(manifest), "shards_done": f"{int(done.sum())}/{len(done)}"}
    summary["size_on_disk"] = f"{_size_on_disk(path) / 2**20:.1f} MiB"
    summary["created"] = manifest.created if manifest else None
    summary["manifest"] = fs.read_attrs(group)
    summary["components"] = {name: part.body for name, part in manifest.fingerprint.components().items()} \
        if manifest else {}
    return summary


def _read_problems(group, manifest: Manifest) -> list[str]:
    """Read every shard of every array (crc32c catches altered bytes); non-finite features, NaN views and views
    outside what the recipe draws (:func:`featcache.views.view_problem`)."""
    layout, recipe = manifest.layout, manifest.fingerprint.augmentation.recipe
    problems = []
    try:
        valid = np.asarray(group["valid"][:]).astype(bool)
    except Exception:  # noqa: BLE001 - named per shard below
        valid = np.ones(layout.n_samples, dtype=bool)
    for name in ARRAYS:
        for shard in range(layout.n_shards):
            rows = shard if name == "done" else layout.shard_rows(shard)
            span = layout.shard_span(shard)
            try:
                block = np.asarray(group[name][rows])
            except Exception as exc:  # noqa: BLE001 - checksum failures surface as codec errors
                problems.append(f"array {name}: shard {shard} ({span}) is damaged ({type(exc).__name__})")
                continue
            if name == "features" and not np.isfinite(block[valid[rows]]).all():
                kind = "NaN (unwritten)" if np.isnan(block[valid[rows]]).any() else "inf (float16 overflow)"
                problems.append(f"array features: shard {shard} ({span}) has {kind} features for valid samples")
            elif name == "views" and np.isnan(block[valid[rows]]).any():
                problems.append(f"array views: shard {shard} ({span}) has NaN view parameters for valid samples")
            elif name == "views" and (problem := view_problem(block, valid[rows], recipe, rows.start)):
                problems.append(problem)
            elif name == "done" and not block:
                problems.append(f"array done: shard {shard} ({span}) is not done")
    return problems


def _dataset_problems(group, manifest: Manifest, listing: DatasetListing) -> list[str]:
    """The dataset listing against the store (:func:`featcache.listing.compare_listing`), one line per problem."""
    if len(listing) != manifest.n_samples:
        return compare_listing(listing, manifest).problems()
    try:
        stored = {name: np.asarray(group[name][:]) for name in STALENESS_ARRAYS}
    except Exception:  # noqa: BLE001 - already named per shard by _read_problems
        return []
    return compare_listing(listing, manifest, stored).problems()


def verify_store(path: str, data: str | None = None, teacher_check: int = 0, weights: str | None = None) -> list[str]:
    """Every problem found, named by array and shard; an empty list means the store can be trusted.

    Covers every array: each storage object present (:func:`featcache.store.chunk_problems`) and
    readable, non-finite features, the stored labels/domains/splits against the dataset listing."""
    group = fs.open_store(path)
    status = fs.read_status(group, path)
    if status != fs.STATUS_COMPLETE:
        return [f"status is {status!r}, not complete; rerun the extract command to finish it"]
    manifest = fs.read_manifest(group, path)
    listing = load_listing(data or manifest.data_spec)
    problems = fs.chunk_problems(group, path) + _read_problems(group, manifest)
    problems += _dataset_problems(group, manifest, listing)
    if teacher_check > 0 and not problems:
        cosine, detail = recheck_teacher(group, manifest, teacher_check, weights, data)
        log.info("teacher check: min cosine %.6f over %d views", cosine, teacher_check)
        if detail:
            problems.append(detail)
        elif cosine < 0.999:
            problems.append(f"teacher re-run disagrees with cached features: min cosine {cosine:.5f} < 0.999")
    return problems


def _weights_for(teacher: TeacherComponent, weights: str | None) -> str | None:
    source = teacher.weights
    if weights or source.startswith("hub:"):
        return weights
    if source == "random":
        return "random"
    if teacher.library == "timm_offline":
        return None  # the bundled file
    raise UserError(f"the store's teacher used weights {source}; pass --weights FILE to re-run it")


def recheck_teacher(group, manifest: Manifest, n: int, weights: str | None, data: str | None) -> tuple[float, str]:
    """Re-run the teacher on ``n`` random stored views; (min cosine to the cache, problem or "")."""
    import torch

    from featcache.teachers import TAPS, create_teacher
    from featcache.views import replay

    stored = manifest.fingerprint.teacher
    teacher = create_teacher(stored.name, _weights_for(stored, weights), size=stored.size,
                             tap=stored.tap if stored.tap in TAPS else None)
    if teacher.identity()["weights_hash"] != stored.weights_hash:
        return 0.0, f"teacher weights differ from the store's (hash {teacher.identity()['weights_hash']} vs {stored.weights_hash})"
    listing = load_listing(data or manifest.data_spec)
    valid_rows = np.flatnonzero(np.asarray(group["valid"][:]))
    rng = np.random.default_rng(0)
    rows = rng.choice(valid_rows, size=min(n, len(valid_rows)), replace=False)
    views = rng.integers(0, manifest.n_views, size=len(rows))
    p = teacher.preprocess
    pixels = torch.stack([replay(listing.load_image(int(r)), group["views"][int(r), int(v)], p.size, p.mean, p.std,
                                 p.interpolation) for r, v in zip(rows, views, strict=True)])
    with torch.inference_mode():
        fresh = teacher(pixels).float()
    cached = torch.stack([torch.from_numpy(np.asarray(group["features"][int(r), int(v)], dtype=np.float32))
                          for r, v in zip(rows, views, strict=True)])
    return float(torch.nn.functional.cosine_similarity(fresh, cached, dim=1).min()), ""


def _check_export_target(path: str, h5_path: str) -> None:
    """Refuse an export that would replace a file (the user's, or one of the store's) or write into the store."""
    target = Path(h5_path)
    if target.exists() or target.is_symlink():
        raise UserError(f"--h5 {h5_path} already exists; export never overwrites a file: choose a new file name")
    if not where.is_remote(path) and target.resolve().is_relative_to(Path(where.to_local(path)).resolve()):
        raise UserError(f"--h5 {h5_path} is inside the store {where.display(path)}; a store holds only its own "
                        "objects: choose a file outside it")


def export_h5(path: str, h5_path: str) -> None:
    """Single-file HDF5 copy: the same arrays, the manifest as a JSON attribute. Written under a temporary name and
    renamed at the end, never over an existing file."""
    import h5py

    _check_export_target(path, h5_path)
    group = fs.open_complete_store(path)
    manifest = fs.read_manifest(group, path)
    with atomic_path(h5_path) as partial, h5py.File(partial, "w") as h5:
        for name in ARRAYS:
            h5.create_dataset(name, data=np.asarray(group[name][:]))
        h5.attrs[ATTRS_KEY] = json.dumps(manifest.to_attrs())


def _replace_unfinished_import(path: str, manifest: Manifest) -> None:
    """Refuse an existing destination, unless it is an interrupted import of this same store (then start over)."""
    taken = where.is_occupied(path) if where.is_remote(path) else where.location(path).exists()
    if not (fs.store_exists(path) or taken):
        return
    try:
        stored = fs.read_manifest(fs.open_store(path), path) if fs.store_exists(path) else None
    except UserError:
        stored = None
    same = stored is not None and not stored.fingerprint.diff(manifest.fingerprint)
    if not same or stored.status == fs.STATUS_COMPLETE:
        raise UserError(f"{where.display(path)} already exists; choose a new store path for the import")
    log.warning("%s holds an interrupted import of this store; importing it again", where.display(path))
    fs.delete_store(path)


def _h5_manifest(h5_path: str, stored: str) -> Manifest:
    """The manifest of an HDF5 export, checked as a store's is (the file is untrusted input too)."""
    try:
        return Manifest.from_attrs(json.loads(stored))
    except (ManifestError, ValueError) as exc:
        raise UserError(f"{h5_path} has a malformed manifest ({exc}); export the store again") from None


def import_h5(h5_path: str, path: str) -> None:
    """Rebuild a Zarr store from an HDF5 export (same layout, attrs last)."""
    import h5py

    with h5py.File(h5_path, "r") as h5:
        manifest = _h5_manifest(h5_path, h5.attrs[ATTRS_KEY])
        _replace_unfinished_import(path, manifest)
        layout = manifest.layout
        if any(h5[name].shape != layout.shape(name) for name in ARRAYS):
            raise UserError(f"{h5_path} has arrays whose shapes differ from its manifest's {list(manifest.shape)}; "
                            "export the store again")
        per_sample = {name: h5[name][:] for name in LISTING_ARRAYS}
        group = fs.create_store(path, layout, manifest, per_sample)
        for shard in range(layout.n_shards):
            rows = layout.shard_rows(shard)
            fs.write_shard(group, layout, shard, h5["features"][rows], h5["views"][rows], h5["content_hash"][rows],
                           h5["valid"][rows])
    fs.mark_complete(group)
