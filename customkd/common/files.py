"""Atomic file writes: a file appears under its name whole or not at all.

Every file the project writes for a user (run records, checkpoints, weights, exports, predictions,
reports) goes through :func:`atomic_path`: written beside the target as ``NAME.partial``, then renamed
over it in one step, so a kill mid-write never leaves a half-written file looking complete.

A file the user names on the command line (``--h5``, ``--onnx``, ``predict --out``) is new:
:func:`check_new_file` refuses, before any work, a place that is taken or cannot be written, and
:func:`writing_new_file` turns a write that still fails (a full disk) into one line.

A folder one process writes at a time (a run folder, a store a teacher is being added to) is held with
:func:`hold_lock`, an exclusive ``flock`` that goes with the process (a killed one leaves nothing to clean up)."""

from __future__ import annotations

import contextlib
import errno
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from customkd.common.errors import UserError

PARTIAL_SUFFIX = ".partial"
NAME_MAX = 255  # bytes in one file or folder name on the file systems customkd writes to (ext4, xfs, btrfs, APFS)


def parse_json(text: str | bytes) -> Any:
    """JSON someone else may have written; every way it can be malformed is a ValueError: invalid JSON, nesting deeper
    than the parser recurses, an integer of more digits than Python converts, or a string holding an unpaired
    surrogate (``"\\ud800"``: it could be neither printed nor written back as UTF-8)."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("a string holds an unpaired surrogate (\\ud800-\\udfff), which is no character") from None
    return value


@contextlib.contextmanager
def atomic_path(target: str | Path, mode: int | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success rename it onto ``target``, on error delete it.

    ``mode``: permission bits for the result before the umask (writers such as safetensors create 0600)."""
    target = Path(target)
    partial = target.with_name(target.name + PARTIAL_SUFFIX)
    if partial.is_symlink() or (partial.exists() and not partial.is_file()):
        raise UserError(f"{partial} is a link or special file, the name customkd writes {target.name} under until "
                        "it is complete; it never writes through one: remove it")
    try:
        yield partial
        if mode is not None:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(partial, mode & ~umask)
        os.replace(partial, target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as partial:
        partial.write_text(text, encoding="utf-8")


def write_json(path: str | Path, payload: dict) -> None:
    write_text(path, json.dumps(payload, indent=2))


def check_new_file(path: str | Path, option: str, example: str = "out") -> Path:
    """Refuse, before any work, to write ``option``'s file ``path`` where it would replace something (a file, a
    link, a directory, or a ``NAME.partial`` beside it, the name :func:`atomic_path` writes under) or where it
    cannot be written (a folder missing or not writable); ``example``: a file name the advice suggests."""
    check_path(path, option, PARTIAL_SUFFIX)
    target = Path(path)
    if target.is_dir() and not target.is_symlink():
        raise UserError(f"{option} {path} is a directory; name a new file, e.g. {option} {target / example}")
    if target.exists() or target.is_symlink():
        raise UserError(f"{option} {path} already exists; customkd never overwrites a file: choose a new file name")
    partial = target.with_name(target.name + PARTIAL_SUFFIX)
    if partial.exists() or partial.is_symlink():
        raise UserError(f"{option} {path}: {partial} exists, the name customkd writes under until the file is "
                        "complete; remove it (a leftover of an interrupted run) or choose another file name")
    check_outside_stores(target, option)
    folder = target.resolve().parent
    if not folder.is_dir():
        raise UserError(f"{option} {path}: folder {folder} does not exist; create it or choose another place")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"{option} {path}: cannot write in {folder} (permission denied); choose a writable place")
    return target


def enclosing_store(path: str | Path, itself: bool = False) -> Path | None:
    """The Zarr hierarchy (a folder holding a ``zarr.json``: a store or one of its arrays) that the local ``path``
    lies inside, or is when ``itself``; None when there is none. A store holds only its own objects, so nothing
    customkd writes for a user (a file, a run folder, another store) may land in one."""
    resolved = Path(path).resolve()
    for folder in ([resolved] if itself else []) + list(resolved.parents):
        if (folder / "zarr.json").is_file():
            return folder
    return None


def check_path(path: str | Path, option: str, suffix: str = "") -> None:
    """Refuse, before any work, ``option``'s local ``path`` where nothing can be made or found: a name longer than a
    file system takes (with ``suffix``, what a temporary name adds to the last one), a path longer than the system
    takes, a link that leads nowhere (its target missing) or in a circle. Every other check of a place (``exists``,
    ``resolve``) would fail on these with an OSError or a RuntimeError instead of saying so."""
    target = Path(path)
    names = [*target.parts[:-1], target.name + suffix] if target.name else list(target.parts)
    long = next((name for name in names if len(os.fsencode(name)) > NAME_MAX), None)
    if long is not None:
        raise UserError(f"{option}: the name {long[:60]}… is {len(os.fsencode(long))} bytes long"
                        f"{' with ' + suffix if long.endswith(suffix) and suffix else ''}, more than the {NAME_MAX} a "
                        "file or folder name may have; choose a shorter name")
    try:
        target.stat()
    except FileNotFoundError:
        if target.is_symlink():
            raise UserError(f"{option} {path} is a symbolic link to {os.readlink(target)}, which does not exist; "
                            "remove the link or choose another place") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UserError(f"{option} {path} leads through symbolic links that point at each other (a loop); remove "
                            "the links or choose another place") from None
        if exc.errno == errno.ENAMETOOLONG:
            raise UserError(f"{option} {str(path)[:80]}… is longer than a path may be; choose a shorter "
                            "one") from None


def check_outside_stores(path: str | Path, option: str, itself: bool = False) -> None:
    """Refuse, before any work, ``option``'s ``path`` inside a Zarr store (:func:`enclosing_store`), or where nothing
    can be made (:func:`check_path`)."""
    check_path(path, option)
    store = enclosing_store(path, itself)
    if store is not None:
        raise UserError(f"{option} {path} is inside the Zarr store {store}, which holds only its own objects; "
                        "choose a place outside it")


def check_new_place(path: str | Path, option: str) -> None:
    """Refuse, before any work, a local folder customkd is to create (a store, a copy) inside a Zarr store, under a
    file, or where no folder can be created (a read-only or virtual file system, missing permission): the first
    missing folder of ``path`` is created and removed again to prove it, so nothing is left behind."""
    check_outside_stores(path, option)
    target = Path(path).absolute()
    if target.exists() or target.is_symlink():
        return  # an existing place: the command's own checks decide whether it is its to write
    first_missing = target
    while not (first_missing.parent.exists() or first_missing.parent == first_missing):
        first_missing = first_missing.parent
    try:
        first_missing.mkdir()
        first_missing.rmdir()
    except FileExistsError:
        return  # another process made it meanwhile: the command's own checks of an existing place decide
    except OSError as exc:
        if exc.errno == errno.ENOTEMPTY:
            return  # likewise, and it is already writing there
        raise UserError(f"{option} {path}: cannot create {first_missing} ({exc.strerror or type(exc).__name__}); "
                        "choose a writable place") from None


@contextlib.contextmanager
def writing_new_file(path: str | Path, option: str) -> Iterator[Path]:
    """:func:`atomic_path` for ``option``'s file: an OSError while writing (a full disk, a quota, a place that
    refused the file) becomes one line naming the file; the partial file is deleted."""
    try:
        with atomic_path(path) as partial:
            yield partial
    except OSError as exc:
        reason = exc.strerror or str(exc).split("\n")[0][:160] or type(exc).__name__
        raise UserError(f"writing {option} {path} failed ({reason}); nothing was left behind: free space or "
                        "choose another place") from None


# ---------------------------------------------------------------- exclusive locks

_HELD_LOCKS: dict[str, int] = {}


def hold_lock(fd: int, key: str) -> bool:
    """Take an exclusive ``flock`` on the open file descriptor ``fd`` (a lock file, or a folder opened read-only) and
    hold it under ``key`` until :func:`release_lock` or :func:`release_locks`, or until the process ends; False, with
    ``fd`` closed, when another process (or another open of the same file) holds it."""
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return False
    _HELD_LOCKS[key] = fd
    return True


def release_lock(key: str) -> None:
    """Drop the lock held under ``key`` (nothing when there is none)."""
    fd = _HELD_LOCKS.pop(key, None)
    if fd is not None:
        os.close(fd)


def release_locks() -> None:
    """Drop every lock this process holds (one run per process; tests and the bench run several)."""
    for key in list(_HELD_LOCKS):
        release_lock(key)
