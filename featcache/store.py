"""The feature store (format version 1): schema, create/open helpers, manifest and fingerprint.

One Zarr v3 group per cache (see DESIGN §4)::

    features      (N, V, D) float16   teacher feature per view, NaN where unwritten
    views         (N, V, P) float32   replay parameters per view (names in attrs)
    labels        (N,)      int32     class index, -1 when unknown
    domain        (N,)      int8      domain id
    split         (N,)      int16     split id
    sample_key    (N,)      uint64    hash of the relative path
    content_hash  (N,)      uint64    hash of the image bytes read at extraction
    valid         (N,)      uint8     1 = image was readable (0 only with --skip-bad)
    done          (n_shards,) uint8   one completion flag per shard, one storage object each

The manifest lives in the root attrs under ``customkd``. Writes are whole shards; a shard's
``done`` flag is written after its data, and ``status`` becomes ``complete`` only when every
flag is set. This module is shared by both processes and imports no teacher code.

A store location is a local path or a URL (``s3://…``, ``gs://…``, ``file://…``); remote ones go
through :mod:`featcache.remote` (fsspec), and messages show them redacted.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from featcache import remote
from featcache.errors import UserError

SCHEMA_VERSION = 1
ATTRS_KEY = "customkd"
STATUS_CREATING = "creating"  # arrays not all created yet: safe to delete and start over
STATUS_IN_PROGRESS = "in_progress"
STATUS_COMPLETE = "complete"
FINGERPRINT_COMPONENTS = ("dataset", "teacher", "augmentation", "layout", "schema")
PER_SAMPLE_ARRAYS = {
    "labels": "int32",
    "domain": "int8",
    "split": "int16",
    "sample_key": "uint64",
    "content_hash": "uint64",
    "valid": "uint8",  # 0 = unreadable image skipped with --skip-bad (features stay NaN)
}


@dataclass(frozen=True)
class Layout:
    """How the arrays are chunked on storage (part of the fingerprint)."""

    n_samples: int
    n_views: int
    feature_dim: int
    n_params: int
    shard_size: int = 256
    chunk_size: int = 16
    compress: bool = False

    @property
    def n_shards(self) -> int:
        return math.ceil(self.n_samples / self.shard_size)

    def shard_rows(self, shard: int) -> slice:
        return slice(shard * self.shard_size, min((shard + 1) * self.shard_size, self.n_samples))

    def to_dict(self) -> dict:
        return {
            "shard_size": self.shard_size,
            "chunk_size": self.chunk_size,
            "compress": self.compress,
            "features_dtype": "float16",
            "checksums": "crc32c",
        }


def component_hash(component: dict) -> str:
    """Short stable hash of one fingerprint component (canonical JSON)."""
    blob = json.dumps(component, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def make_fingerprint(dataset: dict, teacher: dict, augmentation: dict, layout: dict) -> dict:
    """Fingerprint with separate components, each carrying its own ``hash``."""
    parts = {"dataset": dataset, "teacher": teacher, "augmentation": augmentation, "layout": layout,
             "schema": {"version": SCHEMA_VERSION}}
    return {name: {**part, "hash": component_hash(part)} for name, part in parts.items()}


def fingerprint_diff(stored: dict, wanted: dict, components: tuple[str, ...] = FINGERPRINT_COMPONENTS) -> list[str]:
    """Names of the components whose hashes differ."""
    return [c for c in components if stored.get(c, {}).get("hash") != wanted.get(c, {}).get("hash")]


def _codecs(layout: Layout) -> list:
    from zarr.codecs import Crc32cCodec, ZstdCodec

    # crc32c per inner chunk: a flipped byte is detected on read instead of trained on.
    return [ZstdCodec(level=3), Crc32cCodec()] if layout.compress else [Crc32cCodec()]


def location(path: str | Path) -> str | Path:
    """A local ``Path`` for plain paths and ``file://`` URLs, the URL itself for remote stores."""
    return str(path) if remote.is_remote(path) else Path(remote.to_local(path))


def display(path: str | Path) -> str:
    """How a location appears in messages and logs: URLs without secrets."""
    return remote.redact(path) if remote.is_url(path) else str(Path(path))


def _storage_errors(path: str | Path):
    """Remote I/O failures become one-line UserErrors; local ones keep their usual exceptions."""
    return remote.storage_errors(path) if remote.is_remote(path) else contextlib.nullcontext()


def open_group(path: str | Path, mode: str):
    import zarr

    if remote.is_remote(path):
        with remote.storage_errors(path):
            return zarr.open_group(store=remote.zarr_store(str(path), read_only=mode == "r"), mode=mode,
                                   zarr_format=3)
    return zarr.open_group(str(remote.to_local(path)), mode=mode, zarr_format=3)


def _create_group(path: str | Path, attributes: dict):
    import zarr

    if remote.is_remote(path):
        return zarr.create_group(remote.zarr_store(str(path), read_only=False), zarr_format=3, attributes=attributes)
    return zarr.create_group(str(remote.to_local(path)), zarr_format=3, attributes=attributes)


def create_store(path: str | Path, layout: Layout, manifest: dict, per_sample: dict[str, np.ndarray]):
    """Create an empty store and write the per-sample listing arrays.

    The group is born with ``status = creating``; only when every array exists and the listing
    arrays are written does it become ``in_progress`` (resumable). A kill in between leaves a
    store that the next run recognises as safe to recreate.
    """
    with _storage_errors(path):
        return _create_arrays(path, layout, manifest, per_sample)


def _create_arrays(path: str | Path, layout: Layout, manifest: dict, per_sample: dict[str, np.ndarray]):
    base = {**manifest, "schema_version": SCHEMA_VERSION}
    group = _create_group(path, {ATTRS_KEY: {**base, "status": STATUS_CREATING}})
    n, v, d, p = layout.n_samples, layout.n_views, layout.feature_dim, layout.n_params
    s, c = layout.shard_size, min(layout.chunk_size, layout.shard_size)
    common = {"compressors": _codecs(layout), "fill_value": float("nan")}
    group.create_array("features", shape=(n, v, d), dtype="float16", chunks=(c, v, d), shards=(s, v, d), **common)
    group.create_array("views", shape=(n, v, p), dtype="float32", chunks=(c, v, p), shards=(s, v, p), **common)
    for name, dtype in PER_SAMPLE_ARRAYS.items():
        fill = 1 if name == "valid" else 0
        group.create_array(name, shape=(n,), dtype=dtype, chunks=(s,), compressors=_codecs(layout), fill_value=fill)
    group.create_array("done", shape=(layout.n_shards,), dtype="uint8", chunks=(1,), fill_value=0,
                       compressors=None)
    for name, values in per_sample.items():
        group[name][:] = values
    group.attrs[ATTRS_KEY] = {**base, "status": STATUS_IN_PROGRESS}
    return group


def remove_partials(path: str | Path) -> int:
    """Delete temporary ``*.partial`` files a killed writer left (zarr writes temp file + rename).

    Local stores only: object stores write each object in one PUT and leave no temp files."""
    if remote.is_remote(path):
        return 0
    stray = list(Path(remote.to_local(path)).rglob("*.partial"))
    for file in stray:
        file.unlink(missing_ok=True)
    return len(stray)


def read_manifest(group) -> dict:
    manifest = group.attrs.get(ATTRS_KEY)
    if not isinstance(manifest, dict):
        raise UserError("this Zarr group is not a customkd feature store (no 'customkd' attrs)")
    return manifest


def set_status(group, status: str) -> None:
    group.attrs[ATTRS_KEY] = {**read_manifest(group), "status": status}


def mark_complete(group) -> None:
    """The last write of an extraction: every shard is done; record how many samples are invalid."""
    n_invalid = int((np.asarray(group["valid"][:]) == 0).sum())
    group.attrs[ATTRS_KEY] = {**read_manifest(group), "status": STATUS_COMPLETE, "n_invalid": n_invalid,
                              "completed": dt.datetime.now(dt.UTC).isoformat()}


def store_exists(path: str | Path) -> bool:
    if remote.is_remote(path):
        return remote.exists(path, remote.ROOT_METADATA)
    return (Path(remote.to_local(path)) / "zarr.json").is_file()


def is_foreign(path: str | Path) -> bool:
    """Something is at ``path`` that is not a customkd store: writers must leave it alone.

    An empty directory is not foreign (nothing to lose); a half-copied store is (no manifest yet)."""
    if remote.is_remote(path):
        return not store_exists(path) and remote.is_occupied(path)
    p = Path(remote.to_local(path))
    return p.exists() and not store_exists(p) and (p.is_file() or any(p.iterdir()))


def delete_store(path: str | Path) -> None:
    """Remove a whole store (``--overwrite``, or a store killed while being created)."""
    if remote.is_remote(path):
        remote.delete(path)
    else:
        shutil.rmtree(remote.to_local(path))


def _check_openable(path: str | Path) -> str:
    """Clear errors for a missing location, a single file, or an interrupted push/pull; the display name."""
    name = display(path)
    if not remote.is_remote(path):
        p = Path(remote.to_local(path))
        if p.exists() and not p.is_dir():
            raise UserError(f"cache {name} is a regular file, not a Zarr store directory; pass the .zarr directory")
    if store_exists(path):
        return name
    if remote.exists(path, remote.COPY_MARKER):
        raise UserError(f"cache {name} is incomplete: a `customkd cache push/pull` into it was interrupted before "
                        "its manifest was written; rerun the same command to finish the copy")
    if remote.is_remote(path):
        raise UserError(f"cache {name} does not exist (or these credentials cannot see it); put a store there with "
                        f"`customkd cache push LOCAL {name}` or `customkd extract --out {name}`")
    raise UserError(f"cache {name} does not exist; run `make extract` (or `customkd extract --out {name}`) first")


def open_store(path: str | Path, mode: str = "r"):
    """Open an existing store; clear errors for a missing path or a non-store."""
    name = _check_openable(path)
    group = open_group(path, mode=mode)
    manifest = read_manifest(group)
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise UserError(
            f"cache {name} has store schema version {manifest.get('schema_version')}, this customkd reads "
            f"version {SCHEMA_VERSION}; re-extract it with this version"
        )
    return group


def open_complete_store(path: str | Path):
    """Open a store for reading, refusing one whose extraction has not completed."""
    group = open_store(path, mode="r")
    manifest = read_manifest(group)
    if manifest.get("status") != STATUS_COMPLETE:
        done = np.asarray(group["done"][:])
        raise UserError(
            f"cache {display(path)} is incomplete ({int(done.sum())}/{len(done)} shards done); rerun the same "
            "extract command to resume it"
        )
    return group


def pending_shards(group) -> list[int]:
    return [int(i) for i in np.flatnonzero(np.asarray(group["done"][:]) == 0)]


def write_shard(group, layout: Layout, shard: int, features: np.ndarray, views: np.ndarray,
                hashes: np.ndarray, valid: np.ndarray) -> None:
    """Write one whole shard, then (and only then) its ``done`` flag."""
    rows = layout.shard_rows(shard)
    group["features"][rows] = features.astype(np.float16)
    group["views"][rows] = views.astype(np.float32)
    group["content_hash"][rows] = hashes.astype(np.uint64)
    group["valid"][rows] = valid.astype(np.uint8)
    group["done"][shard] = 1


def short_fingerprint(manifest: dict) -> str:
    fp = manifest.get("fingerprint", {})
    return " ".join(f"{c}={fp.get(c, {}).get('hash', '?')[:8]}" for c in FINGERPRINT_COMPONENTS)


def manifest_summary(manifest: dict) -> dict[str, Any]:
    fp = manifest.get("fingerprint", {})
    teacher = fp.get("teacher", {})
    aug = fp.get("augmentation", {})
    return {
        "status": manifest.get("status"),
        "teacher": teacher.get("name"),
        "dataset": manifest.get("data_spec"),
        "shape": manifest.get("shape"),
        "views_recipe": aug.get("recipe"),
        "fingerprint": short_fingerprint(manifest),
        "invalid_samples": manifest.get("n_invalid", 0),
    }
