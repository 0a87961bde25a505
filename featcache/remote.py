"""Copying a complete store between locations: ``customkd cache push`` / ``pull``.

``push`` / ``pull`` copy a complete store object by object. Everything except the root
``zarr.json`` goes first and an object already there with the same size is skipped (resume); the
root ``zarr.json`` — the manifest that says ``complete`` — goes last, so a reader never sees a
half-copied store as complete. A marker object names the fingerprint being copied, so a resumed
copy never mixes objects of two different stores. Locations (paths, URLs, credentials from the
environment) are :mod:`featcache.location`.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from common.errors import UserError
from common.files import atomic_path
from featcache import store
from featcache.location import (
    COPY_MARKER,
    ROOT_METADATA,
    exists,
    filesystem,
    is_occupied,
    objects_under,
    read_json,
    redact,
    storage_errors,
)
from featcache.schema import STATUS_COMPLETE, Fingerprint, fingerprint_diff

log = logging.getLogger(__name__)

COPY_BATCH_BYTES = 64 * 2**20  # bytes held in memory per concurrent copy batch


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
        with atomic_path(path) as partial:
            partial.write_bytes(data)
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


def _destination_state(dest: str | Path, fingerprint: Fingerprint) -> str:
    """``"complete"`` (same fingerprint), ``"resume"`` (our unfinished copy) or ``"empty"``; refuses the rest."""
    name = redact(dest)
    if store.store_exists(dest):
        stored = store.read_manifest(store.open_store(dest), dest)
        differs = stored.fingerprint.diff(fingerprint)
        if differs:
            raise UserError(f"{name} already holds a store with a different {', '.join(differs)}; a complete store "
                            "is never overwritten: delete it first or choose another destination")
        if stored.status != STATUS_COMPLETE:
            raise UserError(f"{name} holds an unfinished extraction of the same store; finish it with `customkd "
                            "extract` or delete it, then copy again")
        return "complete"
    if exists(dest, COPY_MARKER):
        differs = fingerprint_diff(read_json(dest, COPY_MARKER).get("fingerprint", {}), fingerprint.to_dict())
        if differs:
            raise UserError(f"{name} holds an interrupted copy of a different store (other {', '.join(differs)}); "
                            "delete it or choose another destination")
        return "resume"
    if is_occupied(dest):
        raise UserError(f"{name} exists and is not a customkd store; choose another destination (nothing was touched)")
    return "empty"


def _verify_copy(source_group, dest: str | Path) -> None:
    """Re-open the destination as a reader would; its fingerprint and array shapes must equal the source's."""
    copy = store.open_complete_store(dest)
    wanted = store.read_manifest(source_group).fingerprint
    problems = [f"fingerprint component {c}" for c in store.read_manifest(copy, dest).fingerprint.diff(wanted)]
    for name in sorted(source_group.array_keys()):
        if name not in copy or copy[name].shape != source_group[name].shape:
            problems.append(f"array {name}")
    if problems:
        raise UserError(f"the copy at {redact(dest)} differs from its source ({', '.join(problems)}); delete it and "
                        "copy again")


def _send_data(source: str | Path, dest: str | Path, state: str,
               fingerprint: Fingerprint) -> tuple[dict[str, int], list[str]]:
    """Every object but the root ``zarr.json``, skipping those already there with the same size.

    Returns (source object sizes, names copied); raises unless every object arrived with its size."""
    src, src_root = filesystem(source)
    dst, dst_root = filesystem(dest)
    with storage_errors(source):
        objects = objects_under(src, src_root)
    with storage_errors(dest):
        present = objects_under(dst, dst_root)
        if state == "empty":  # claim the destination for this fingerprint before the first data object
            marker = {"fingerprint": fingerprint.to_dict(), "started": dt.datetime.now(dt.UTC).isoformat()}
            dst.pipe_file(f"{dst_root}/{COPY_MARKER}", json.dumps(marker).encode())
    todo = sorted(n for n, size in objects.items() if n != ROOT_METADATA and present.get(n) != size)
    log.info("copying %d of %d objects to %s", len(todo), len(objects) - 1, redact(dest))
    _copy_objects(source, dest, todo, objects)
    with storage_errors(dest):
        arrived = objects_under(dst, dst_root)
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
    group = store.open_complete_store(source)
    fingerprint = store.read_manifest(group, source).fingerprint
    state = _destination_state(dest, fingerprint)
    if state == "complete":
        _verify_copy(group, dest)
        log.info("%s already holds this store, complete: nothing to copy", redact(dest))
        return CopyResult(redact(source), redact(dest), "unchanged", 0, 0, 0)
    objects, todo = _send_data(source, dest, state, fingerprint)
    nbytes = sum(objects[n] for n in todo) + _send_root(source, dest, group)
    return CopyResult(redact(source), redact(dest), "copied", len(todo) + 1, len(objects) - 1 - len(todo), nbytes)
