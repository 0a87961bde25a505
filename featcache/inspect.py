"""Reading a store as a person sharing it would: summary, verification, teacher re-check, HDF5 export."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from featcache import remote
from featcache import store as fs
from featcache.datasets import content_hash, load_listing, sample_key
from featcache.errors import UserError

log = logging.getLogger(__name__)
ARRAYS = ("features", "views", "labels", "domain", "split", "sample_key", "content_hash", "valid", "done")


def _size_on_disk(path: str) -> int:
    if remote.is_remote(path):
        return remote.size_bytes(path)  # one listing instead of a stat per object
    return sum(p.stat().st_size for p in fs.location(path).rglob("*") if p.is_file())


def store_info(path: str) -> dict:
    group = fs.open_store(path)
    manifest = fs.read_manifest(group)
    done = np.asarray(group["done"][:])
    summary = fs.manifest_summary(manifest)
    summary["shards_done"] = f"{int(done.sum())}/{len(done)}"
    summary["size_on_disk"] = f"{_size_on_disk(path) / 2**20:.1f} MiB"
    summary["created"] = manifest.get("created")
    summary["manifest"] = manifest
    return summary


def _structure_problems(group, manifest: dict) -> list[str]:
    problems = []
    n, v, d = manifest["shape"]
    if group["features"].shape != (n, v, d):
        problems.append(f"features shape {group['features'].shape} != manifest {(n, v, d)}")
    done = np.asarray(group["done"][:])
    if not done.all():
        problems.append(f"shards not done: {np.flatnonzero(done == 0).tolist()}")
    if manifest.get("status") != fs.STATUS_COMPLETE:
        problems.append(f"status is {manifest.get('status')!r}, not complete")
    shard_size = int(manifest["fingerprint"]["layout"]["shard_size"])
    valid = np.asarray(group["valid"][:]).astype(bool)
    for shard in range(len(done)):
        rows = slice(shard * shard_size, min((shard + 1) * shard_size, n))
        try:
            block = np.asarray(group["features"][rows])
            np.asarray(group["views"][rows])
        except Exception as exc:  # noqa: BLE001 - checksum failures surface as codec errors
            problems.append(f"shard {shard} (rows {rows.start}-{rows.stop - 1}) is damaged: {type(exc).__name__}")
            continue
        if done[shard] and np.isnan(block[valid[rows]]).any():
            problems.append(f"shard {shard} (rows {rows.start}-{rows.stop - 1}) is marked done but has NaN features")
    return problems


def _dataset_problems(group, manifest: dict, data: str | None) -> list[str]:
    listing = load_listing(data or manifest["data_spec"])
    n = manifest["shape"][0]
    if len(listing) != n:
        return [f"dataset has {len(listing)} samples, store has {n} (images added or removed)"]
    keys, hashes = np.asarray(group["sample_key"][:]), np.asarray(group["content_hash"][:])
    valid = np.asarray(group["valid"][:]).astype(bool)
    problems = []
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
    """Every problem found, named; an empty list means the store can be trusted."""
    group = fs.open_store(path)
    manifest = fs.read_manifest(group)
    problems = _structure_problems(group, manifest) + _dataset_problems(group, manifest, data)
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
    if teacher["name"] == "efficientnet_lite0":
        return None  # the bundled file
    raise UserError(f"the store's teacher used weights {source}; pass --weights FILE to re-run it")


def recheck_teacher(group, manifest: dict, n: int, weights: str | None, data: str | None) -> tuple[float, str]:
    """Re-run the teacher on ``n`` random stored views; (min cosine to the cache, problem or "")."""
    import torch

    from featcache.teachers import create_teacher
    from featcache.views import replay

    stored = manifest["fingerprint"]["teacher"]
    teacher = create_teacher(stored["name"], _weights_for(stored, weights))
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
    tmp = Path(h5_path).with_name(Path(h5_path).name + ".partial")
    with h5py.File(tmp, "w") as h5:
        for name in ARRAYS:
            h5.create_dataset(name, data=np.asarray(group[name][:]))
        h5.attrs[fs.ATTRS_KEY] = json.dumps(manifest)
    tmp.replace(h5_path)


def import_h5(h5_path: str, path: str) -> None:
    """Rebuild a Zarr store from an HDF5 export (same layout, attrs last)."""
    import h5py

    taken = remote.is_occupied(path) if remote.is_remote(path) else fs.location(path).exists()
    if fs.store_exists(path) or taken:
        raise UserError(f"{fs.display(path)} already exists; choose a new store path for the import")
    with h5py.File(h5_path, "r") as h5:
        manifest = json.loads(h5.attrs[fs.ATTRS_KEY])
        n, v, d = manifest["shape"]
        lay = manifest["fingerprint"]["layout"]
        layout = fs.Layout(n, v, d, h5["views"].shape[2], lay["shard_size"], lay["chunk_size"], lay["compress"])
        per_sample = {name: h5[name][:] for name in ("labels", "domain", "split", "sample_key")}
        group = fs.create_store(path, layout, {k: x for k, x in manifest.items() if k != "status"}, per_sample)
        for shard in range(layout.n_shards):
            rows = layout.shard_rows(shard)
            fs.write_shard(group, layout, shard, h5["features"][rows], h5["views"][rows], h5["content_hash"][rows],
                           h5["valid"][rows])
    fs.mark_complete(group)
