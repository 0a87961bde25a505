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
through :mod:`featcache.location` (fsspec), and messages show them redacted.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import itertools
import json
import math
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common.errors import UserError
from featcache import location as where
from featcache.location import display

# 2: every chunk is written, fill-valued ones too, so a missing chunk is damage (version 1 skipped them)
SCHEMA_VERSION = 2
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
ARRAYS = ("features", "views", *PER_SAMPLE_ARRAYS, "done")
STATUSES = (STATUS_CREATING, STATUS_IN_PROGRESS, STATUS_COMPLETE)
DATA_KINDS = ("elpv", "folder", "cifar100")
# Bounds on what a manifest may claim, checked before anything is allocated from it.
MAX_SAMPLES = 10**9
MAX_VIEWS = 1024
MAX_FEATURE_DIM = 65536
MAX_VIEW_PARAMS = 256
MAX_SHARDS = 2**20
MAX_NAMES = 100_000


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


def _storage_errors(path: str | Path):
    """Remote I/O failures become one-line UserErrors; local ones keep their usual exceptions."""
    return where.storage_errors(path) if where.is_remote(path) else contextlib.nullcontext()


def open_group(path: str | Path, mode: str):
    import zarr

    if where.is_remote(path):
        with where.storage_errors(path):
            return zarr.open_group(store=where.zarr_store(str(path), read_only=mode == "r"), mode=mode,
                                   zarr_format=3)
    return zarr.open_group(str(where.to_local(path)), mode=mode, zarr_format=3)


def _create_group(path: str | Path, attributes: dict):
    import zarr

    if where.is_remote(path):
        return zarr.create_group(where.zarr_store(str(path), read_only=False), zarr_format=3, attributes=attributes)
    return zarr.create_group(str(where.to_local(path)), zarr_format=3, attributes=attributes)


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
        _writable(group, name)[:] = values
    group.attrs[ATTRS_KEY] = {**base, "status": STATUS_IN_PROGRESS}
    return group


def _writable(group, name: str):
    """The array with every chunk written, even one equal to the fill value (labels all 0, a shard of
    skipped images): a complete store then has every chunk on storage, and a missing one is damage."""
    return group[name].with_config({"write_empty_chunks": True})


def remove_partials(path: str | Path) -> int:
    """Delete temporary ``*.partial`` files a killed writer left (zarr writes temp file + rename).

    Local stores only: object stores write each object in one PUT and leave no temp files."""
    if where.is_remote(path):
        return 0
    stray = list(Path(where.to_local(path)).rglob("*.partial"))
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
    if where.is_remote(path):
        return where.exists(path, where.ROOT_METADATA)
    return (Path(where.to_local(path)) / "zarr.json").is_file()


def is_foreign(path: str | Path) -> bool:
    """Something is at ``path`` that is not a customkd store: writers must leave it alone.

    An empty directory is not foreign (nothing to lose); a half-copied store is (no manifest yet)."""
    if where.is_remote(path):
        return not store_exists(path) and where.is_occupied(path)
    p = Path(where.to_local(path))
    return p.exists() and not store_exists(p) and (p.is_file() or any(p.iterdir()))


def delete_store(path: str | Path) -> None:
    """Remove a whole store (``--overwrite``, or a store killed while being created)."""
    if where.is_remote(path):
        where.delete(path)
        return
    local = Path(where.to_local(path))
    if local.is_symlink():
        raise UserError(f"{display(path)} is a symbolic link; point --out at the store directory itself "
                        "(nothing was deleted)")
    try:
        shutil.rmtree(local)
    except OSError as exc:
        raise UserError(f"cannot delete {display(path)} ({exc.strerror or type(exc).__name__}: {exc.filename}); "
                        "fix the permissions or choose another --out") from None


def _check_openable(path: str | Path) -> str:
    """Clear errors for a missing location, a single file, or an interrupted push/pull; the display name."""
    name = display(path)
    if not where.is_remote(path):
        p = Path(where.to_local(path))
        if p.exists() and not p.is_dir():
            raise UserError(f"cache {name} is a regular file, not a Zarr store directory; pass the .zarr directory")
        if p.is_dir():
            list_objects(path)  # refuses links, pipes and devices before zarr opens anything
    if store_exists(path):
        return name
    if where.exists(path, where.COPY_MARKER):
        raise UserError(f"cache {name} is incomplete: a `customkd cache push/pull` into it was interrupted before "
                        "its manifest was written; rerun the same command to finish the copy")
    if where.is_remote(path):
        raise UserError(f"cache {name} does not exist (or these credentials cannot see it); put a store there with "
                        f"`customkd cache push LOCAL {name}` or `customkd extract --out {name}`")
    raise UserError(f"cache {name} does not exist; run `make extract` (or `customkd extract --out {name}`) first")


def open_store(path: str | Path, mode: str = "r"):
    """Open an existing store and validate its manifest (:func:`validate_manifest`) before anyone uses it.

    Local stores are first walked: only regular files may be in them (see :func:`list_objects`)."""
    name = _check_openable(path)
    try:
        group = open_group(path, mode=mode)
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - zarr raises many types for malformed metadata
        raise UserError(f"cache {name} is not a readable Zarr v3 store ({_reason(exc)}); get a fresh copy or "
                        "re-extract it") from None
    validate_manifest(group, path)
    return group


def open_complete_store(path: str | Path):
    """Open a store for reading, refusing one whose extraction has not completed."""
    group = open_store(path, mode="r")
    manifest = read_manifest(group)
    if manifest["status"] == STATUS_CREATING:
        raise UserError(f"cache {display(path)} was interrupted while being created; rerun the same extract command "
                        "(it creates the store again)")
    if manifest["status"] != STATUS_COMPLETE:
        done = np.asarray(group["done"][:])
        raise UserError(
            f"cache {display(path)} is incomplete ({int(done.sum())}/{len(done)} shards done); rerun the same "
            "extract command to resume it"
        )
    return group


def _reason(exc: BaseException) -> str:
    return where.redact(str(exc).split("\n")[0][:160]) or type(exc).__name__


# ---------------------------------------------------------------- a store is untrusted input (DESIGN §10)

class _Malformed(Exception):
    """One thing wrong with a manifest; :func:`validate_manifest` turns it into a UserError."""


def _is_int(value: Any, low: int, high: int) -> bool:
    return type(value) is int and low <= value <= high


def _need(condition: bool, what: str) -> None:
    if not condition:
        raise _Malformed(what)


def _names(manifest: dict, key: str) -> list[str]:
    names = manifest.get(key)
    _need(isinstance(names, list) and 1 <= len(names) <= MAX_NAMES and all(isinstance(n, str) for n in names),
          f"'{key}' must be a non-empty list of strings (at most {MAX_NAMES})")
    _need(len(set(names)) == len(names), f"'{key}' has duplicate names")
    return names


def _check_fingerprint(manifest: dict, n: int, v: int) -> dict:
    fp = manifest.get("fingerprint")
    _need(isinstance(fp, dict), "'fingerprint' is missing or not an object")
    for component in FINGERPRINT_COMPONENTS:
        part = fp.get(component)
        _need(isinstance(part, dict) and isinstance(part.get("hash"), str),
              f"fingerprint component '{component}' is missing or has no hash")
        body = {k: x for k, x in part.items() if k != "hash"}
        _need(component_hash(body) == part["hash"], f"fingerprint component '{component}' does not match its hash "
              "(it was edited after extraction)")
    dataset, layout, teacher, aug = fp["dataset"], fp["layout"], fp["teacher"], fp["augmentation"]
    _need(dataset.get("n") == n, f"fingerprint dataset n={dataset.get('n')!r} differs from shape N={n}")
    _need(isinstance(dataset.get("listing_hash"), str), "fingerprint dataset has no listing_hash")
    _need(dataset.get("classes") == manifest.get("classes"), "'classes' differs from the fingerprint's dataset classes")
    _need(dataset.get("domains") == manifest.get("domains"), "'domains' differs from the fingerprint's dataset domains")
    for key in ("shard_size", "chunk_size"):
        _need(_is_int(layout.get(key), 1, MAX_SAMPLES), f"layout {key} must be a positive integer, got "
              f"{layout.get(key)!r}")
    _need(isinstance(teacher.get("name"), str), "fingerprint teacher has no name")
    _need(aug.get("views") == v, f"fingerprint augmentation views={aug.get('views')!r} differs from shape V={v}")
    crop = aug.get("recipe", {}).get("centre_crop") if isinstance(aug.get("recipe"), dict) else None
    _need(type(crop) in (int, float) and 0 < crop <= 1, "augmentation recipe has no centre_crop in (0, 1]")
    return fp


def _check_data_spec(manifest: dict, path: str | Path) -> None:
    spec = manifest.get("data_spec")
    _need(isinstance(spec, str) and "\x00" not in spec, "'data_spec' must be a string")
    base, *unlabeled = spec.split("|")
    kind, _, arg = base.partition(":")
    _need(kind in DATA_KINDS, f"'data_spec' kind {kind!r} is not one of {', '.join(DATA_KINDS)}")
    folders = [arg] if kind != "elpv" else []
    for part in unlabeled:
        part_kind, _, named = part.partition(":")
        _need(part_kind == "unlabeled" and "=" in named, f"'data_spec' part {part[:40]!r} is not unlabeled:NAME=PATH")
        folders.append(named.partition("=")[2])
    if not where.is_remote(path):
        root = Path(where.to_local(path)).resolve()
        for folder in folders:
            _need(not Path(folder).expanduser().resolve().is_relative_to(root), "'data_spec' points inside the "
                  "store itself (a store holds features, never the dataset it was made from)")


def _manifest_problem(manifest: dict, path: str | Path) -> tuple[int, int, int] | None:
    """Checks every key readers use; returns (N, V, D), or None for a store still being created."""
    _need(manifest.get("status") in STATUSES, f"'status' {manifest.get('status')!r} is not one of {', '.join(STATUSES)}")
    if manifest["status"] == STATUS_CREATING:
        return None
    shape = manifest.get("shape")
    _need(isinstance(shape, list) and len(shape) == 3, "'shape' must be [N, V, D]")
    n, v, d = shape
    _need(_is_int(n, 1, MAX_SAMPLES) and _is_int(v, 1, MAX_VIEWS) and _is_int(d, 1, MAX_FEATURE_DIM),
          f"'shape' {shape} is out of range (N 1..{MAX_SAMPLES}, V 1..{MAX_VIEWS}, D 1..{MAX_FEATURE_DIM})")
    for key in ("classes", "domains", "splits"):
        _names(manifest, key)
    params = _names(manifest, "view_params")
    _need(len(params) <= MAX_VIEW_PARAMS, f"'view_params' has more than {MAX_VIEW_PARAMS} names")
    fp = _check_fingerprint(manifest, n, v)
    n_shards = math.ceil(n / fp["layout"]["shard_size"])
    _need(n_shards <= MAX_SHARDS, f"{n_shards} shards is more than {MAX_SHARDS}")
    _need(manifest.get("n_shards", n_shards) == n_shards, f"'n_shards' {manifest.get('n_shards')!r} is not "
          f"ceil(N / shard_size) = {n_shards}")
    _need(_is_int(manifest.get("n_invalid", 0), 0, n), "'n_invalid' must be an integer in 0..N")
    for key in ("created", "completed"):
        _need(isinstance(manifest.get(key, ""), str), f"'{key}' must be a string")
    _check_data_spec(manifest, path)
    return n, v, d


def _array_problem(group, manifest: dict, shape: tuple[int, int, int]) -> None:
    """Every array exists with the shape, dtype and storage chunking the manifest implies."""
    n, v, d = shape
    shard_size = manifest["fingerprint"]["layout"]["shard_size"]
    n_shards = math.ceil(n / shard_size)
    p = len(manifest["view_params"])
    wanted = {"features": ((n, v, d), "float16", (shard_size, v, d)), "views": ((n, v, p), "float32", (shard_size, v, p)),
              **{name: ((n,), dtype, (shard_size,)) for name, dtype in PER_SAMPLE_ARRAYS.items()},
              "done": ((n_shards,), "uint8", (1,))}
    for name, (shape_, dtype, storage) in wanted.items():
        try:
            array = group.get(name)
            found = None if array is None else (tuple(array.shape), str(array.dtype), storage_chunks(array))
        except Exception as exc:  # noqa: BLE001 - malformed array metadata
            raise _Malformed(f"array '{name}' has unreadable metadata ({_reason(exc)})") from None
        _need(found is not None, f"array '{name}' is missing")
        _need(found[0] == shape_, f"array '{name}' has shape {found[0]}, the manifest implies {shape_}")
        _need(found[1] == dtype, f"array '{name}' has dtype {found[1]}, not {dtype}")
        _need(found[2] == storage, f"array '{name}' is stored in blocks of {found[2]}, the layout implies {storage}")


def validate_manifest(group, path: str | Path) -> dict:
    """The store's manifest, after checking every key readers act on; one UserError naming the first problem.

    Types and ranges of shape, names, fingerprint (each component present and matching its hash),
    layout, status and data spec (a known kind, never a path inside the store), then each array's
    shape, dtype and chunking against them. Nothing is allocated from a size before it passed here."""
    name = display(path)
    manifest = read_manifest(group)
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise UserError(
            f"cache {name} has store schema version {manifest.get('schema_version')!r}, this customkd reads "
            f"version {SCHEMA_VERSION}; rebuild it with this version (`customkd extract ... --overwrite`)"
        )
    try:
        shape = _manifest_problem(manifest, path)
        if shape is not None:
            _array_problem(group, manifest, shape)
    except _Malformed as exc:
        raise UserError(f"cache {name} has a malformed manifest: {exc}; it was damaged or edited after extraction: "
                        "get a fresh copy or re-extract it with --overwrite") from None
    return manifest


def storage_chunks(array) -> tuple[int, ...]:
    """Shape of one storage object of an array: the shard for sharded arrays, else the chunk."""
    return tuple(array.shards or array.chunks)


def chunk_keys(group, name: str) -> list[tuple[int, str]]:
    """(index along rows, object key relative to the store root) of every storage object of an array."""
    array = group[name]
    grid = [math.ceil(size / block) for size, block in zip(array.shape, storage_chunks(array), strict=True)]
    return [(coords[0], f"{name}/{array.metadata.encode_chunk_key(coords)}")
            for coords in itertools.product(*(range(g) for g in grid))]


_FILE_KINDS = ((stat.S_ISLNK, "symbolic link"), (stat.S_ISFIFO, "named pipe"), (stat.S_ISCHR, "character device"),
               (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket"))


def list_objects(path: str | Path) -> dict[str, int]:
    """Key (relative path) → size of every object of a store.

    For a local store this walks the directory without following links and refuses anything that is
    not a regular file or a directory: a link could point outside the store (or at ``/dev/zero``), a
    named pipe would block every reader. Remote stores are listed through fsspec."""
    if where.is_remote(path):
        return where.list_objects(path)
    root = Path(where.to_local(path))
    found: dict[str, int] = {}
    pending = [root]
    while pending:
        with os.scandir(pending.pop()) as entries:
            for entry in entries:
                info = entry.stat(follow_symlinks=False)
                key = Path(entry.path).relative_to(root).as_posix()
                if stat.S_ISDIR(info.st_mode):
                    pending.append(Path(entry.path))
                elif stat.S_ISREG(info.st_mode):
                    found[key] = info.st_size
                else:
                    kind = next((k for test, k in _FILE_KINDS if test(info.st_mode)), "special file")
                    raise UserError(f"cache {display(path)} contains {key}, a {kind}: a store holds only regular "
                                    "files; remove it or get a fresh copy of the store (nothing was read)")
    return found


def chunk_problems(group, path: str | Path) -> list[str]:
    """Every storage object a complete store must have but lacks (or has empty), named by array and shard.

    Writers store every chunk (``write_empty_chunks``), so a missing one is damage — e.g. an interrupted
    ``rsync`` — that would otherwise read as the fill value (labels 0, features NaN)."""
    objects = list_objects(path)
    shard_size = read_manifest(group)["fingerprint"]["layout"]["shard_size"]
    n = group["labels"].shape[0]
    problems = []
    for name in ARRAYS:
        for index, key in chunk_keys(group, name):
            if objects.get(key, 0) > 0:
                continue
            shard = index
            rows = f"rows {shard * shard_size}-{min((shard + 1) * shard_size, n) - 1}"
            state = "is missing" if key not in objects else "is empty"
            problems.append(f"array {name}: shard {shard} ({rows}) {state} (object {key})")
    return problems


def store_identity(path: str | Path) -> str:
    """Hash of the root ``zarr.json`` (manifest, fingerprint, completion time): changes when a store is replaced."""
    if where.is_remote(path):
        fs_, root = where.filesystem(path)
        with where.storage_errors(path):
            blob = fs_.cat_file(f"{root}/{where.ROOT_METADATA}")
    else:
        meta = Path(where.to_local(path)) / where.ROOT_METADATA
        if not meta.is_file() or meta.is_symlink():
            raise UserError(f"cache {display(path)} has no manifest any more (root zarr.json is gone)")
        blob = meta.read_bytes()
    return hashlib.sha256(blob).hexdigest()


def check_same_store(path: str | Path, identity: str) -> None:
    """Refuse to go on reading a store whose root manifest changed since it was opened (replaced, re-extracted)."""
    if store_identity(path) != identity:
        raise UserError(f"cache {display(path)} changed during training: its manifest is not the one opened at the "
                        "start (the store was replaced or re-extracted); stopped rather than mix two stores — "
                        "rerun distill once the store stays put")


def pending_shards(group) -> list[int]:
    return [int(i) for i in np.flatnonzero(np.asarray(group["done"][:]) == 0)]


def write_shard(group, layout: Layout, shard: int, features: np.ndarray, views: np.ndarray,
                hashes: np.ndarray, valid: np.ndarray) -> None:
    """Write one whole shard, then (and only then) its ``done`` flag."""
    rows = layout.shard_rows(shard)
    _writable(group, "features")[rows] = features.astype(np.float16)
    _writable(group, "views")[rows] = views.astype(np.float32)
    _writable(group, "content_hash")[rows] = hashes.astype(np.uint64)
    _writable(group, "valid")[rows] = valid.astype(np.uint8)
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
