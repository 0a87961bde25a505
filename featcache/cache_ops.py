"""The `customkd cache` commands: info, verify, HDF5 export/import (the store as one file), and the
teacher re-check. Copying stores between locations is featcache/remote.py."""

from __future__ import annotations

import json
import logging
import math

import numpy as np

from common.errors import UserError
from common.files import atomic_path
from featcache import location as where
from featcache import store as fs
from featcache.datasets import DatasetListing, content_hash, load_listing, sample_key

log = logging.getLogger(__name__)
ARRAYS = fs.ARRAYS


def _size_on_disk(path: str) -> int:
    if where.is_remote(path):
        return where.size_bytes(path)  # one listing instead of a stat per object
    return sum(p.stat().st_size for p in where.location(path).rglob("*") if p.is_file())


def store_info(path: str) -> dict:
    group = fs.open_store(path)
    manifest = fs.read_manifest(group)
    summary = fs.manifest_summary(manifest)
    if manifest["status"] == fs.STATUS_CREATING:
        summary["shards_done"] = "none (creation was interrupted; rerun the extract command)"
    else:
        done = np.asarray(group["done"][:])
        summary["shards_done"] = f"{int(done.sum())}/{len(done)}"
    summary["size_on_disk"] = f"{_size_on_disk(path) / 2**20:.1f} MiB"
    summary["created"] = manifest.get("created")
    summary["manifest"] = manifest
    return summary


def _shard_rows(shard: int, shard_size: int, n: int) -> slice:
    return slice(shard * shard_size, min((shard + 1) * shard_size, n))


def _read_problems(group, manifest: dict) -> list[str]:
    """Read every shard of every array (crc32c catches altered bytes); non-finite features, NaN views."""
    n = manifest["shape"][0]
    shard_size = manifest["fingerprint"]["layout"]["shard_size"]
    n_shards = math.ceil(n / shard_size)
    problems = []
    try:
        valid = np.asarray(group["valid"][:]).astype(bool)
    except Exception:  # noqa: BLE001 - named per shard below
        valid = np.ones(n, dtype=bool)
    for name in fs.ARRAYS:
        for shard in range(n_shards):
            rows = shard if name == "done" else _shard_rows(shard, shard_size, n)
            span = f"rows {shard * shard_size}-{min((shard + 1) * shard_size, n) - 1}"
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
            elif name == "done" and not block:
                problems.append(f"array done: shard {shard} ({span}) is not done")
    return problems


def listing_problems(listing: DatasetListing, manifest: dict, labels: np.ndarray, domain: np.ndarray,
                     split: np.ndarray) -> list[str]:
    """Stored class/domain names and per-row labels, domains and splits that differ from the dataset listing.

    Used by ``cache verify`` and by the trainer: stored labels are never trusted on their own (a
    missing chunk reads as label 0)."""
    problems = []
    for key, names in (("classes", listing.classes), ("domains", listing.domains)):
        if list(names) != manifest[key]:
            problems.append(f"the store's {key} differ from the dataset's ({len(manifest[key])} vs {len(names)} names)")
    if len(listing) != len(labels):
        return problems + [f"dataset has {len(listing)} samples, store has {len(labels)} (images added or removed)"]
    expected = {"labels": [s.label for s in listing.samples], "domain": [s.domain for s in listing.samples],
                "split": [s.split for s in listing.samples]}
    for name, stored in (("labels", labels), ("domain", domain), ("split", split)):
        differ = np.flatnonzero(np.asarray(expected[name], dtype=np.int64) != np.asarray(stored, dtype=np.int64))
        if len(differ):
            first = int(differ[0])
            problems.append(f"array {name} differs from the dataset listing in {len(differ)} row(s), e.g. row {first} "
                            f"({listing.samples[first].relpath}: stored {int(stored[first])}, dataset "
                            f"{expected[name][first]})")
    return problems


def _dataset_problems(group, manifest: dict, listing: DatasetListing) -> list[str]:
    n = manifest["shape"][0]
    if len(listing) != n:
        return [f"dataset has {len(listing)} samples, store has {n} (images added or removed)"]
    arrays = {}
    for name in ("sample_key", "content_hash", "valid", "labels", "domain", "split"):
        try:
            arrays[name] = np.asarray(group[name][:])
        except Exception:  # noqa: BLE001 - already named per shard by _read_problems
            return []
    keys, hashes, valid = arrays["sample_key"], arrays["content_hash"], arrays["valid"].astype(bool)
    problems = listing_problems(listing, manifest, arrays["labels"], arrays["domain"], arrays["split"])
    for i, sample in enumerate(listing.samples):
        if sample_key(sample.relpath) != keys[i]:
            problems.append(f"sample {i}: path {sample.relpath} does not match the store's row")
        elif valid[i]:
            try:
                changed = content_hash(listing.read_bytes(i)) != hashes[i]
            except OSError as exc:
                problems.append(f"sample {i}: {sample.relpath} cannot be read ({type(exc).__name__})")
                continue
            if changed:
                problems.append(f"sample {i}: {sample.relpath} changed since extraction (content hash differs)")
    return problems


def verify_store(path: str, data: str | None = None, teacher_check: int = 0, weights: str | None = None) -> list[str]:
    """Every problem found, named by array and shard; an empty list means the store can be trusted.

    Covers every array: each storage object present (:func:`featcache.store.chunk_problems`) and
    readable, non-finite features, the stored labels/domains/splits against the dataset listing."""
    group = fs.open_store(path)
    manifest = fs.read_manifest(group)
    if manifest["status"] != fs.STATUS_COMPLETE:
        return [f"status is {manifest['status']!r}, not complete; rerun the extract command to finish it"]
    listing = load_listing(data or manifest["data_spec"])
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


def _weights_for(teacher: dict, weights: str | None) -> str | None:
    source = teacher["weights"]
    if weights or source.startswith("hub:"):
        return weights
    if source == "random":
        return "random"
    if teacher["library"] == "timm_offline":
        return None  # the bundled file
    raise UserError(f"the store's teacher used weights {source}; pass --weights FILE to re-run it")


def recheck_teacher(group, manifest: dict, n: int, weights: str | None, data: str | None) -> tuple[float, str]:
    """Re-run the teacher on ``n`` random stored views; (min cosine to the cache, problem or "")."""
    import torch

    from featcache.teachers import TAPS, create_teacher
    from featcache.views import replay

    stored = manifest["fingerprint"]["teacher"]
    teacher = create_teacher(stored["name"], _weights_for(stored, weights), size=stored.get("size"),
                             tap=stored["tap"] if stored.get("tap") in TAPS else None)
    if teacher.identity()["weights_hash"] != stored["weights_hash"]:
        return 0.0, f"teacher weights differ from the store's (hash {teacher.identity()['weights_hash']} vs {stored['weights_hash']})"
    listing = load_listing(data or manifest["data_spec"])
    valid_rows = np.flatnonzero(np.asarray(group["valid"][:]))
    rng = np.random.default_rng(0)
    rows = rng.choice(valid_rows, size=min(n, len(valid_rows)), replace=False)
    views = rng.integers(0, manifest["shape"][1], size=len(rows))
    p = teacher.preprocess
    pixels = torch.stack([replay(listing.load_image(int(r)), group["views"][int(r), int(v)], p.size, p.mean, p.std,
                                 p.interpolation) for r, v in zip(rows, views, strict=True)])
    with torch.inference_mode():
        fresh = teacher(pixels).float()
    cached = torch.stack([torch.from_numpy(np.asarray(group["features"][int(r), int(v)], dtype=np.float32))
                          for r, v in zip(rows, views, strict=True)])
    return float(torch.nn.functional.cosine_similarity(fresh, cached, dim=1).min()), ""


def export_h5(path: str, h5_path: str) -> None:
    """Single-file HDF5 copy: the same arrays, the manifest as a JSON attribute."""
    import h5py

    group = fs.open_complete_store(path)
    manifest = fs.read_manifest(group)
    with atomic_path(h5_path) as partial, h5py.File(partial, "w") as h5:
        for name in ARRAYS:
            h5.create_dataset(name, data=np.asarray(group[name][:]))
        h5.attrs[fs.ATTRS_KEY] = json.dumps(manifest)


def _replace_unfinished_import(path: str, manifest: dict) -> None:
    """Refuse an existing destination, unless it is an interrupted import of this same store (then start over)."""
    taken = where.is_occupied(path) if where.is_remote(path) else where.location(path).exists()
    if not (fs.store_exists(path) or taken):
        return
    try:
        stored = fs.read_manifest(fs.open_store(path)) if fs.store_exists(path) else None
    except UserError:
        stored = None
    same = stored is not None and not fs.fingerprint_diff(stored.get("fingerprint", {}), manifest.get("fingerprint", {}))
    if not same or stored.get("status") == fs.STATUS_COMPLETE:
        raise UserError(f"{where.display(path)} already exists; choose a new store path for the import")
    log.warning("%s holds an interrupted import of this store; importing it again", where.display(path))
    fs.delete_store(path)


def import_h5(h5_path: str, path: str) -> None:
    """Rebuild a Zarr store from an HDF5 export (same layout, attrs last)."""
    import h5py

    with h5py.File(h5_path, "r") as h5:
        manifest = json.loads(h5.attrs[fs.ATTRS_KEY])
        _replace_unfinished_import(path, manifest)
        n, v, d = manifest["shape"]
        if any(h5[name].shape[0] != n for name in ARRAYS if name != "done") or h5["features"].shape != (n, v, d):
            raise UserError(f"{h5_path} has arrays whose shapes differ from its manifest's {manifest['shape']}; "
                            "export the store again")
        lay = manifest["fingerprint"]["layout"]
        layout = fs.Layout(n, v, d, h5["views"].shape[2], lay["shard_size"], lay["chunk_size"], lay["compress"])
        per_sample = {name: h5[name][:] for name in ("labels", "domain", "split", "sample_key")}
        group = fs.create_store(path, layout, {k: x for k, x in manifest.items() if k != "status"}, per_sample)
        for shard in range(layout.n_shards):
            rows = layout.shard_rows(shard)
            fs.write_shard(group, layout, shard, h5["features"][rows], h5["views"][rows], h5["content_hash"][rows],
                           h5["valid"][rows])
    fs.mark_complete(group)
