"""Reading a store as a person sharing it would: summary and verification."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from featcache import store as fs
from featcache.datasets import content_hash, load_listing, sample_key


def _size_on_disk(path: str) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


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


def verify_store(path: str, data: str | None = None) -> list[str]:
    """Every problem found, named; an empty list means the store can be trusted."""
    group = fs.open_store(path)
    manifest = fs.read_manifest(group)
    problems = []
    n, v, d = manifest["shape"]
    if group["features"].shape != (n, v, d):
        problems.append(f"features shape {group['features'].shape} != manifest {(n, v, d)}")
    done = np.asarray(group["done"][:])
    if not done.all():
        problems.append(f"shards not done: {np.flatnonzero(done == 0).tolist()}")
    if manifest.get("status") != fs.STATUS_COMPLETE:
        problems.append(f"status is {manifest.get('status')!r}, not complete")
    layout_rows = int(manifest["fingerprint"]["layout"]["shard_size"])
    for shard in range(len(done)):
        rows = slice(shard * layout_rows, min((shard + 1) * layout_rows, n))
        try:
            block = np.asarray(group["features"][rows])
        except Exception as exc:  # noqa: BLE001 - checksum failures surface as codec errors
            problems.append(f"shard {shard} cannot be read ({type(exc).__name__}: {exc})")
            continue
        if done[shard] and np.isnan(block).any():
            problems.append(f"shard {shard} is marked done but has NaN features")
    listing = load_listing(data or manifest["data_spec"])
    keys = np.asarray(group["sample_key"][:])
    if len(listing) != n:
        problems.append(f"dataset has {len(listing)} samples, store has {n}")
        return problems
    hashes = np.asarray(group["content_hash"][:])
    for i, sample in enumerate(listing.samples):
        if sample_key(sample.relpath) != keys[i]:
            problems.append(f"sample {i}: path {sample.relpath} does not match the store's row")
        elif content_hash(listing.read_bytes(i)) != hashes[i]:
            problems.append(f"sample {i}: {sample.relpath} changed since extraction (content hash differs)")
    return problems
