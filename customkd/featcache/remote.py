"""Copying a complete store between locations: ``customkd cache push`` / ``pull``.

``push`` / ``pull`` copy a complete store object by object. Everything except the root
``zarr.json`` goes first and an object already there with the same size is skipped (resume); the
root ``zarr.json`` — the manifest that says ``complete`` — goes last, so a reader never sees a
half-copied store as complete. A marker object names the fingerprint being copied, so a resumed
copy never mixes objects of two different stores. Locations (paths, URLs, credentials from the
environment) are :mod:`contract.location`.

A source is untrusted: only the objects its manifest implies are copied, and before anything is
written every key is checked to stay inside the destination and every listed size against what the
manifest allows; reads are byte ranges bounded by the listed size, large objects streamed in pieces.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from customkd.common.errors import UserError, printable
from customkd.common.files import atomic_path
from customkd.contract import store
from customkd.contract.fingerprint import Fingerprint, fingerprint_diff
from customkd.contract.location import (
    COPY_MARKER,
    ROOT_METADATA,
    contained_key,
    exists,
    filesystem,
    is_occupied,
    objects_under,
    read_json,
    redact,
    storage_errors,
)
from customkd.contract.schema import STATUS_COMPLETE, Manifest
from customkd.contract.storage import storage_for

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
    """Copy objects in memory-bounded batches; async filesystems (s3, gs) transfer a batch concurrently.

    Every read is a byte range bounded by the listed size (an object larger than that is refused, not held), and an
    object larger than a batch is streamed in pieces."""
    from tqdm import tqdm

    (src, src_root), (dst, dst_root) = filesystem(source), filesystem(dest)
    with tqdm(total=sum(sizes[n] for n in names), unit="B", unit_scale=True, desc="copy") as progress:
        for batch in _batches(names, sizes):
            if sizes[batch[0]] > COPY_BATCH_BYTES:  # alone in its batch
                _stream_object(source, dest, batch[0], sizes[batch[0]])
            else:
                blobs = dict.fromkeys(batch, b"")
                reads = [n for n in batch if sizes[n]]  # a range of an empty object is an error on S3
                with storage_errors(source):  # one byte past the size, to see an object that grew
                    got = src.cat_ranges([f"{src_root}/{n}" for n in reads], [0] * len(reads),
                                         [sizes[n] + 1 for n in reads])
                    for name, blob in zip(reads, got, strict=True):
                        if isinstance(blob, BaseException):
                            raise blob
                        _check_size(source, name, len(blob), sizes[name])
                        blobs[name] = blob
                with storage_errors(dest):
                    dst.pipe({f"{dst_root}/{n}": blob for n, blob in blobs.items()})
            progress.update(sum(sizes[n] for n in batch))


def _stream_object(source: str | Path, dest: str | Path, name: str, size: int) -> None:
    """Copy one large object piece by piece, never holding more than one piece nor reading past ``size`` + 1."""
    (src, src_root), (dst, dst_root) = filesystem(source), filesystem(dest)
    copied = 0
    with storage_errors(source), src.open(f"{src_root}/{name}", "rb") as reader:
        with storage_errors(dest), dst.open(f"{dst_root}/{name}", "wb") as writer:
            while piece := reader.read(min(COPY_BATCH_BYTES, size + 1 - copied)):
                copied += len(piece)
                _check_size(source, name, copied, size, whole=False)
                writer.write(piece)
    _check_size(source, name, copied, size)


def _check_size(source: str | Path, name: str, nbytes: int, size: int, whole: bool = True) -> None:
    """Refuse an object that holds more than its listed ``size`` (or, read ``whole``, another size)."""
    if nbytes > size or (whole and nbytes != size):
        raise UserError(f"object {name} of {redact(source)} is not the {size} bytes its listing said; it changed "
                        "during the copy: rerun the same command")


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


def _teachers_state(name: str, stored: Manifest, source: Manifest) -> str:
    """``"complete"`` when the destination holds the source's teachers, ``"resume"`` when it holds some of them
    (a teacher was added to the source since: its arrays are copied, the manifest last); refuses a teacher the
    source lacks or has with another fingerprint component."""
    wanted = {t.name: t.component.hash for t in source.teachers}
    for teacher in stored.teachers:
        if teacher.name not in wanted or wanted[teacher.name] != teacher.component.hash:
            other = "which the source lacks" if teacher.name not in wanted else "with another fingerprint"
            raise UserError(f"{name} already holds teacher {teacher.name} {other}; a complete store is never "
                            "overwritten: delete it first or choose another destination")
        if teacher.status != STATUS_COMPLETE:
            raise UserError(f"{name} holds teacher {teacher.name} unfinished; finish it with `customkd extract "
                            "--into` or delete the store, then copy again")
    return "complete" if len(stored.teachers) == len(source.teachers) else "resume"


def _destination_state(dest: str | Path, source: Manifest) -> str:
    """``"complete"`` (same fingerprint and teachers), ``"resume"`` (our unfinished copy, or a copy lacking teachers
    added to the source since) or ``"empty"``; refuses the rest."""
    name = redact(dest)
    fingerprint = source.fingerprint
    storage_for(dest).check_new_place("destination")
    if store.store_exists(dest):
        stored = store.Store.open(dest).stored_manifest()
        differs = stored.fingerprint.diff(fingerprint)
        if differs:
            raise UserError(f"{name} already holds a store with a different {', '.join(differs)}; a complete store "
                            "is never overwritten: delete it first or choose another destination")
        if stored.status != STATUS_COMPLETE:
            raise UserError(f"{name} holds an unfinished extraction of the same store; finish it with `customkd "
                            "extract` or delete it, then copy again")
        return _teachers_state(name, stored, source)
    if exists(dest, COPY_MARKER):
        differs = fingerprint_diff(read_json(dest, COPY_MARKER).get("fingerprint", {}), fingerprint.to_dict())
        if differs:
            raise UserError(f"{name} holds an interrupted copy of a different store (other {', '.join(differs)}); "
                            "delete it or choose another destination")
        return "resume"
    if is_occupied(dest):
        raise UserError(f"{name} exists and is not a customkd store; choose another destination (nothing was touched)")
    return "empty"


def _verify_copy(opened: store.Store, dest: str | Path) -> None:
    """Re-open the destination as a reader would; its fingerprint and array shapes must equal the source's."""
    copied = store.Store.open_complete(dest)
    source = opened.manifest
    problems = [f"fingerprint component {c}" for c in copied.manifest.fingerprint.diff(source.fingerprint)]
    problems += [f"teacher {t.name}" for t in source.teachers if copied.manifest.teacher(t.name) is None
                 or copied.manifest.teacher(t.name).component != t.component]
    for name in sorted(opened.group.array_keys()):
        if name not in copied.group or copied.group[name].shape != opened.group[name].shape:
            problems.append(f"array {name}")
    if problems:
        raise UserError(f"the copy at {redact(dest)} differs from its source ({', '.join(problems)}); delete it and "
                        "copy again")


def _plan(source: str | Path, dest: str | Path, objects: dict[str, int], opened: store.Store) -> dict[str, int]:
    """The objects to copy (key → size): the store's own, each checked to land inside ``dest`` and to be no larger
    than the manifest allows, before anything is written. Other objects are not part of the store and stay behind."""
    for key in sorted(objects):
        if not contained_key(dest, key):
            raise UserError(f"{redact(source)} holds the object key {key!r}, which would be written outside "
                            f"{redact(dest)}; refused (nothing was written): the source is damaged or hostile, "
                            "get the store from someone you trust")
    limits = {key: most for key, (_, most) in store.object_limits(opened.group, opened.manifest).items()}
    for key, size in sorted(objects.items()):
        if size > limits.get(key, size):
            raise UserError(f"object {key} of {redact(source)} is {size} bytes, more than the {limits[key]} its "
                            "store's manifest allows; refused (nothing was written): get a fresh copy of the store")
    others = sorted(key for key in objects if key not in limits)
    if others:
        log.warning("%d object(s) of %s are not part of the store and are not copied (e.g. %s)", len(others),
                    redact(source), printable(others[0]))
    return {key: size for key, size in objects.items() if key in limits}


def _send_data(source: str | Path, dest: str | Path, state: str, fingerprint: Fingerprint,
               opened: store.Store) -> tuple[dict[str, int], list[str]]:
    """Every object of the store but the root ``zarr.json``, skipping those already there with the same size.

    Returns (source object sizes, names copied); raises unless every object arrived with its size."""
    src, src_root = filesystem(source)
    dst, dst_root = filesystem(dest)
    with storage_errors(source):
        objects = _plan(source, dest, objects_under(src, src_root), opened)
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


def _send_root(source: str | Path, dest: str | Path, opened: store.Store, size: int) -> int:
    """The root ``zarr.json`` (status complete, ``size`` bytes as listed) last, then the check; a copy failing it
    loses its root again."""
    src, src_root = filesystem(source)
    dst, dst_root = filesystem(dest)
    with storage_errors(source):
        root = src.cat_file(f"{src_root}/{ROOT_METADATA}", start=0, end=size + 1)
    _check_size(source, ROOT_METADATA, len(root), size)
    with storage_errors(dest):  # a complete copy with fewer teachers keeps its own root if this one fails
        before = dst.cat_file(f"{dst_root}/{ROOT_METADATA}") if dst.exists(f"{dst_root}/{ROOT_METADATA}") else None
        _write_last(dst, f"{dst_root}/{ROOT_METADATA}", root)
    try:
        _verify_copy(opened, dest)
    except UserError:
        with storage_errors(dest):
            if before is None:
                dst.rm_file(f"{dst_root}/{ROOT_METADATA}")
            else:
                _write_last(dst, f"{dst_root}/{ROOT_METADATA}", before)
        raise
    with storage_errors(dest):
        if dst.exists(f"{dst_root}/{COPY_MARKER}"):
            dst.rm_file(f"{dst_root}/{COPY_MARKER}")
    return len(root)


def copy_store(source: str | Path, dest: str | Path) -> CopyResult:
    """Copy a complete store between any two locations: data first, root ``zarr.json`` last, then verify."""
    opened = store.Store.open_complete(source)
    manifest = opened.manifest
    fingerprint = manifest.fingerprint
    state = _destination_state(dest, manifest)
    if state == "complete":
        _verify_copy(opened, dest)
        log.info("%s already holds this store, complete: nothing to copy", redact(dest))
        return CopyResult(redact(source), redact(dest), "unchanged", 0, 0, 0)
    objects, todo = _send_data(source, dest, state, fingerprint, opened)
    nbytes = sum(objects[n] for n in todo) + _send_root(source, dest, opened, objects[ROOT_METADATA])
    return CopyResult(redact(source), redact(dest), "copied", len(todo) + 1, len(objects) - 1 - len(todo), nbytes)
