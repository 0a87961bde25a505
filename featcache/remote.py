"""Stores on object storage: URLs, fsspec filesystems from the environment, redaction, push and pull.

A cache may be a local path or a URL (``s3://bucket/path.zarr``, ``gs://…``, ``memory://…``); a
``file://`` URL is treated as the local path it names, so it keeps the local store's atomic writes.
Connection settings come from the environment, never from the URL: credentials in a URL would end
up in logs, in the store's manifest and in every run's ``config.json``, so such URLs are refused.

``push`` / ``pull`` copy a complete store object by object. Everything except the root
``zarr.json`` goes first and an object already there with the same size is skipped (resume); the
root ``zarr.json`` — the manifest that says ``complete`` — goes last, so a reader never sees a
half-copied store as complete. A marker object names the fingerprint being copied, so a resumed
copy never mixes objects of two different stores.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from featcache.errors import UserError

log = logging.getLogger(__name__)

ROOT_METADATA = "zarr.json"
COPY_MARKER = ".customkd-copy.json"  # present only while a copy into the location is unfinished
S3_ENDPOINT_VARIABLES = ("CUSTOMKD_S3_ENDPOINT", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
OPTIONS_VARIABLE = "CUSTOMKD_STORAGE_OPTIONS"  # JSON object merged into the fsspec storage options
COPY_BATCH_BYTES = 64 * 2**20  # bytes held in memory per concurrent copy batch

_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")
# user[:password]@ after the scheme; an unencoded secret may hold "/" (AWS secrets do), the user may not
_USERINFO = re.compile(r"\b([a-zA-Z][a-zA-Z0-9+.-]*://)[^/@:\s]+(?::[^@\s]*)?@")
_SECRET_QUERY = re.compile(
    r"([?&][^=&#\s]*(?:sig|token|secret|key|pass|pwd|credential|auth)[^=&#\s]*=)[^&#\s]*", re.IGNORECASE)
# Object stores whose directory listings fsspec would cache: other processes (ranks, a concurrent
# push) write the same store, so a cached listing would hide their objects.
_LISTING_CACHE_PROTOCOLS = {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss"}


def is_url(path: str | Path) -> bool:
    """True for ``scheme://…`` strings (``file://`` included), False for plain paths."""
    return isinstance(path, str) and bool(_SCHEME.match(path))


def protocol(path: str | Path) -> str:
    """The URL scheme in lower case, ``"file"`` for plain paths."""
    match = _SCHEME.match(path) if isinstance(path, str) else None
    return match.group(1).lower() if match else "file"


def is_remote(path: str | Path) -> bool:
    """True when the location is read and written through an fsspec filesystem, not the local disk."""
    return protocol(path) != "file"


def to_local(path: str | Path) -> str | Path:
    """A ``file://`` URL as its local path; anything else unchanged."""
    if is_url(path) and protocol(path) == "file":
        return str(path)[len("file://"):]
    return path


def redact(text: str | Path) -> str:
    """``text`` with URL user:password parts and secret-looking query values replaced by ``***``.

    Works on whole messages too, so exception texts that quote a URL can be shown safely."""
    return _SECRET_QUERY.sub(r"\1***", _USERINFO.sub(r"\1***@", str(text)))


def check_no_credentials(path: str | Path) -> None:
    """Refuse a URL that carries secrets: it would be logged and recorded in manifests and run configs."""
    if is_url(path) and redact(path) != path:
        raise UserError(
            f"{redact(path)} carries credentials in the URL; they would be printed in logs and saved in the "
            f"store's manifest and run configs. Remove them and use the environment instead (AWS_ACCESS_KEY_ID / "
            f"AWS_SECRET_ACCESS_KEY / AWS_PROFILE for s3://, or {OPTIONS_VARIABLE}='{{...}}')")


def storage_options_from_env(path: str | Path) -> dict[str, Any]:
    """fsspec storage options for a location, from the environment only.

    s3: the endpoint of an S3-compatible server from ``CUSTOMKD_S3_ENDPOINT``, ``AWS_ENDPOINT_URL_S3``
    or ``AWS_ENDPOINT_URL`` (first set wins); keys, region and profile are left to s3fs/botocore,
    which read the usual ``AWS_*`` variables and ``~/.aws``. ``CUSTOMKD_STORAGE_OPTIONS`` (a JSON
    object) adds anything else, e.g. ``{"anon": true}`` for a public bucket."""
    scheme = protocol(path)
    options: dict[str, Any] = {}
    if scheme == "file":
        options["auto_mkdir"] = True  # the copy writes nested object keys as files
    if scheme in _LISTING_CACHE_PROTOCOLS:
        options["use_listings_cache"] = False
    if scheme in ("s3", "s3a"):
        endpoint = next((os.environ[v] for v in S3_ENDPOINT_VARIABLES if os.environ.get(v)), None)
        if endpoint:
            options["endpoint_url"] = endpoint
    extra = os.environ.get(OPTIONS_VARIABLE)
    if extra and scheme != "file":
        try:
            options.update(json.loads(extra))
        except (json.JSONDecodeError, TypeError, ValueError):
            raise UserError(f"{OPTIONS_VARIABLE} must be a JSON object of fsspec storage options") from None
    return options


def _storage_exceptions() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "cannot reach or use this storage", not a bug in customkd."""
    caught: tuple[type[BaseException], ...] = (OSError,)
    try:
        from botocore.exceptions import BotoCoreError, ClientError

        caught += (BotoCoreError, ClientError)
    except ImportError:
        pass
    return caught


@contextmanager
def storage_errors(path: str | Path) -> Iterator[None]:
    """Turn I/O failures on ``path`` (missing bucket, no network, denied) into a one-line UserError."""
    try:
        yield
    except UserError:
        raise
    except _storage_exceptions() as exc:
        reason = redact(str(exc).split("\n")[0]) or type(exc).__name__
        hint = " and the endpoint / AWS_* variables" if protocol(path) in ("s3", "s3a") else ""
        raise UserError(f"cannot access {redact(path)}: {reason}; check the URL, the bucket, the credentials"
                        f"{hint}") from None


def filesystem(path: str | Path):
    """``(fsspec filesystem, root path)`` for a store location; local paths get the local filesystem."""
    from fsspec.core import url_to_fs

    location = str(path)
    check_no_credentials(location)
    try:
        fs, root = url_to_fs(location, **storage_options_from_env(location))
    except ImportError as exc:  # e.g. gs:// without gcsfs
        raise UserError(f"cannot open {redact(location)}: {exc} (pip install it next to customkd)") from None
    except ValueError as exc:  # unknown protocol
        raise UserError(f"cannot open {redact(location)}: {exc}") from None
    return fs, root.rstrip("/")


def zarr_store(url: str, read_only: bool):
    """A zarr ``FsspecStore`` for a remote location, configured from the environment."""
    from zarr.storage import FsspecStore

    check_no_credentials(url)
    try:
        return FsspecStore.from_url(url, storage_options=storage_options_from_env(url), read_only=read_only)
    except ImportError as exc:
        raise UserError(f"cannot open {redact(url)}: {exc} (pip install it next to customkd)") from None
    except ValueError as exc:
        raise UserError(f"cannot open {redact(url)}: {exc}") from None


def exists(path: str | Path, key: str) -> bool:
    """Whether the object ``key`` under the location exists (network and permission errors are raised)."""
    fs, root = filesystem(path)
    with storage_errors(path):
        try:  # not fs.isfile: it answers False for every error, so "no network" would read as "no store"
            return fs.info(f"{root}/{key}")["type"] == "file"
        except (FileNotFoundError, NotADirectoryError):
            return False


def is_occupied(path: str | Path) -> bool:
    """Whether anything is at the location: an object, or a non-empty prefix / directory."""
    fs, root = filesystem(path)
    with storage_errors(path):
        return fs.exists(root) and (fs.isfile(root) or bool(fs.ls(root, detail=False)))


def read_json(path: str | Path, key: str) -> dict:
    fs, root = filesystem(path)
    with storage_errors(path):
        return json.loads(fs.cat_file(f"{root}/{key}"))


def delete(path: str | Path) -> None:
    """Remove every object under the location (``--overwrite`` on object storage)."""
    fs, root = filesystem(path)
    with storage_errors(path):
        fs.rm(root, recursive=True)


def size_bytes(path: str | Path) -> int:
    """Total size of the objects under the location."""
    fs, root = filesystem(path)
    with storage_errors(path):
        return int(fs.du(root, total=True))


def _list_objects(fs, root: str) -> dict[str, int]:
    """Relative key → size of every object under ``root`` (empty when nothing is there)."""
    if not fs.exists(root):
        return {}
    found = fs.find(root, detail=True)
    return {name[len(root) + 1:]: int(info["size"]) for name, info in found.items() if name.startswith(root + "/")}


def list_objects(path: str | Path) -> dict[str, int]:
    """Relative key → size of every object of a remote store (one listing)."""
    fs, root = filesystem(path)
    with storage_errors(path):
        return _list_objects(fs, root)


def _batches(names: list[str], sizes: dict[str, int]) -> Iterator[list[str]]:
    batch, held = [], 0
    for name in names:
        if batch and held + sizes[name] > COPY_BATCH_BYTES:
            yield batch
            batch, held = [], 0
        batch.append(name)
        held += sizes[name]
    if batch:
        yield batch


def _copy_objects(source: str | Path, dest: str | Path, names: list[str], sizes: dict[str, int]) -> None:
    """Copy objects in memory-bounded batches; async filesystems (s3, gs) transfer a batch concurrently."""
    from tqdm import tqdm

    (src, src_root), (dst, dst_root) = filesystem(source), filesystem(dest)
    with tqdm(total=sum(sizes[n] for n in names), unit="B", unit_scale=True, desc="copy") as progress:
        for batch in _batches(names, sizes):
            paths = [src._strip_protocol(f"{src_root}/{n}") for n in batch]
            with storage_errors(source):
                blobs = src.cat(paths)
            with storage_errors(dest):
                dst.pipe({f"{dst_root}/{n}": blobs[p] for n, p in zip(batch, paths, strict=True)})
            progress.update(sum(sizes[n] for n in batch))


def _write_last(dst, path: str, data: bytes) -> None:
    """Write one object atomically: a local file goes through a temp name (a kill leaves no torn file)."""
    from fsspec.implementations.local import LocalFileSystem

    if isinstance(dst, LocalFileSystem):
        dst.pipe_file(path + ".partial", data)
        dst.mv(path + ".partial", path)
    else:
        dst.pipe_file(path, data)  # an object PUT is atomic


@dataclass(frozen=True)
class CopyResult:
    """What a push / pull did. Locations are redacted, ready to print."""

    source: str
    dest: str
    status: str  # "copied" or "unchanged" (destination already complete with the same fingerprint)
    objects_copied: int
    objects_skipped: int
    bytes_copied: int


def push(local: str | Path, url: str) -> CopyResult:
    """Copy a complete local store to object storage (resumable; see :func:`copy_store`)."""
    return copy_store(local, url)


def pull(url: str, local: str | Path) -> CopyResult:
    """Copy a complete store from object storage to a local path (resumable; see :func:`copy_store`)."""
    return copy_store(url, local)


def _destination_state(dest: str | Path, fingerprint: dict) -> str:
    """``"complete"`` (same fingerprint), ``"resume"`` (our unfinished copy) or ``"empty"``; refuses the rest."""
    from featcache import store as fs

    name = redact(dest)
    if fs.store_exists(dest):
        stored = fs.read_manifest(fs.open_store(dest))
        differs = fs.fingerprint_diff(stored.get("fingerprint", {}), fingerprint)
        if differs:
            raise UserError(f"{name} already holds a store with a different {', '.join(differs)}; a complete store "
                            "is never overwritten: delete it first or choose another destination")
        if stored.get("status") != fs.STATUS_COMPLETE:
            raise UserError(f"{name} holds an unfinished extraction of the same store; finish it with `customkd "
                            "extract` or delete it, then copy again")
        return "complete"
    if exists(dest, COPY_MARKER):
        differs = fs.fingerprint_diff(read_json(dest, COPY_MARKER).get("fingerprint", {}), fingerprint)
        if differs:
            raise UserError(f"{name} holds an interrupted copy of a different store (other {', '.join(differs)}); "
                            "delete it or choose another destination")
        return "resume"
    if is_occupied(dest):
        raise UserError(f"{name} exists and is not a customkd store; choose another destination (nothing was touched)")
    return "empty"


def _verify_copy(source_group, dest: str | Path) -> None:
    """Re-open the destination as a reader would; its fingerprint and array shapes must equal the source's."""
    from featcache import store as fs

    copy = fs.open_complete_store(dest)
    wanted = fs.read_manifest(source_group)["fingerprint"]
    problems = [f"fingerprint component {c}" for c in fs.fingerprint_diff(fs.read_manifest(copy)["fingerprint"],
                                                                          wanted)]
    for name in sorted(source_group.array_keys()):
        if name not in copy or copy[name].shape != source_group[name].shape:
            problems.append(f"array {name}")
    if problems:
        raise UserError(f"the copy at {redact(dest)} differs from its source ({', '.join(problems)}); delete it and "
                        "copy again")


def _send_data(source: str | Path, dest: str | Path, state: str, fingerprint: dict) -> tuple[dict[str, int], list[str]]:
    """Every object but the root ``zarr.json``, skipping those already there with the same size.

    Returns (source object sizes, names copied); raises unless every object arrived with its size."""
    src, src_root = filesystem(source)
    dst, dst_root = filesystem(dest)
    with storage_errors(source):
        objects = _list_objects(src, src_root)
    with storage_errors(dest):
        present = _list_objects(dst, dst_root)
        if state == "empty":  # claim the destination for this fingerprint before the first data object
            marker = {"fingerprint": fingerprint, "started": dt.datetime.now(dt.UTC).isoformat()}
            dst.pipe_file(f"{dst_root}/{COPY_MARKER}", json.dumps(marker).encode())
    todo = sorted(n for n, size in objects.items() if n != ROOT_METADATA and present.get(n) != size)
    log.info("copying %d of %d objects to %s", len(todo), len(objects) - 1, redact(dest))
    _copy_objects(source, dest, todo, objects)
    with storage_errors(dest):
        arrived = _list_objects(dst, dst_root)
    short = [n for n, size in objects.items() if n != ROOT_METADATA and arrived.get(n) != size]
    if short:
        raise UserError(f"{len(short)} object(s) did not arrive intact at {redact(dest)} (e.g. {short[0]}); "
                        "rerun the same command to resume")
    return objects, todo


def _send_root(source: str | Path, dest: str | Path, group) -> int:
    """The root ``zarr.json`` (status complete) last, then the check; a copy failing it loses its root again."""
    src, src_root = filesystem(source)
    dst, dst_root = filesystem(dest)
    with storage_errors(source):
        root = src.cat_file(f"{src_root}/{ROOT_METADATA}")
    with storage_errors(dest):
        _write_last(dst, f"{dst_root}/{ROOT_METADATA}", root)
    try:
        _verify_copy(group, dest)
    except UserError:
        with storage_errors(dest):
            dst.rm_file(f"{dst_root}/{ROOT_METADATA}")
        raise
    with storage_errors(dest):
        dst.rm_file(f"{dst_root}/{COPY_MARKER}")
    return len(root)


def copy_store(source: str | Path, dest: str | Path) -> CopyResult:
    """Copy a complete store between any two locations: data first, root ``zarr.json`` last, then verify."""
    from featcache import store as fs

    group = fs.open_complete_store(source)
    fingerprint = fs.read_manifest(group)["fingerprint"]
    state = _destination_state(dest, fingerprint)
    if state == "complete":
        _verify_copy(group, dest)
        log.info("%s already holds this store, complete: nothing to copy", redact(dest))
        return CopyResult(redact(source), redact(dest), "unchanged", 0, 0, 0)
    objects, todo = _send_data(source, dest, state, fingerprint)
    nbytes = sum(objects[n] for n in todo) + _send_root(source, dest, group)
    return CopyResult(redact(source), redact(dest), "copied", len(todo) + 1, len(objects) - 1 - len(todo), nbytes)
