"""A store's objects on local disk or on object storage: the one place that tells the two apart.

:func:`storage_for` picks the strategy once per location; :mod:`contract.store` then asks it to open, create,
list, probe and delete without asking again where the store lives. Local stores are walked without following
links (a link could point outside the store, a named pipe would block every reader); remote ones go through the
fsspec primitives of :mod:`contract.location`. Messages show locations through :func:`location.display`.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
from pathlib import Path

from customkd.common.errors import UserError
from customkd.common.files import check_new_place
from customkd.contract import location as where
from customkd.contract.location import display
from customkd.contract.schema import spec_name

# What a store consists of, by relative path: the root and array ``zarr.json``, chunk folders ``ARRAY/c/0/…`` of
# numbered objects, zarr's temporary ``NAME.<uuid hex>.partial`` files of a killed write, and a copy's marker.
_TEMP = r"\.[0-9a-f]{32}\.partial"
_STORE_FILE = re.compile(rf"(zarr{_TEMP}|{re.escape(where.COPY_MARKER)}|(?P<array>\w+)/(zarr\.json|zarr{_TEMP}|"
                         rf"c(/[0-9]+)*/[0-9]+({_TEMP})?))")
_STORE_FOLDER = re.compile(r"(?P<array>\w+)(/c(/[0-9]+)*)?")
_PARTIAL = re.compile(rf"{_TEMP}$")  # a temporary file of zarr's, by its name

_FILE_KINDS = ((stat.S_ISLNK, "symbolic link"), (stat.S_ISFIFO, "named pipe"), (stat.S_ISCHR, "character device"),
               (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket"))


def is_store_entry(key: str, folder: bool) -> bool:
    """Whether the file (or ``folder``) at relative path ``key`` is one a store holds."""
    match = (_STORE_FOLDER if folder else _STORE_FILE).fullmatch(key)
    return key == where.ROOT_METADATA or (match is not None and (match["array"] is None or
                                                                   spec_name(match["array"]) is not None))


class LocalStorage:
    """A store in a local directory (a plain path or a ``file://`` URL)."""

    def __init__(self, path: str | Path) -> None:
        self.path = path  # as given: messages name it so
        self.root = Path(where.to_local(path))
        self.location = self.root  # what :func:`location.location` gives for it

    def errors(self):
        """Local I/O failures keep their usual exceptions."""
        return contextlib.nullcontext()

    def zarr_store(self, read_only: bool) -> str:
        return str(self.root)

    def resolved_root(self) -> Path:
        """The store's directory with links resolved: a local store's data spec may not point inside it."""
        return self.root.resolve()

    def check_new_place(self, what: str) -> None:
        """Refuse a destination that the tool may not write into (:func:`common.files.check_new_place`)."""
        check_new_place(where.to_local(self.path), what)  # as given: the message names it so

    def exists(self) -> bool:
        """Whether a store's root ``zarr.json`` is there."""
        return (self.root / where.ROOT_METADATA).is_file()

    def is_foreign(self) -> bool:
        """Something is there that is not a store: a file (or a device, a pipe), or a non-empty folder without a root
        ``zarr.json``."""
        p = self.root
        return p.exists() and not self.exists() and (not p.is_dir() or any(p.iterdir()))

    def is_taken(self) -> bool:
        """Anything at all is there."""
        return self.root.exists()

    def objects_before_open(self) -> dict[str, int]:
        """The store's objects before zarr opens anything; refuses a regular file in place of the store."""
        if self.root.exists() and not self.root.is_dir():
            raise UserError(f"cache {display(self.path)} is a regular file, not a Zarr store directory; pass the "
                            ".zarr directory")
        return self.list_objects() if self.root.is_dir() else {}

    def missing(self, objects: dict[str, int]) -> UserError:
        """The error for a location holding no store (``objects``: what :meth:`objects_before_open` found)."""
        name = display(self.path)
        if objects:
            return UserError(f"cache {name} is a folder but not a customkd store (no zarr.json at its top); pass the "
                             ".zarr directory `customkd extract --out` wrote")
        return UserError(f"cache {name} does not exist; run `make extract` (or `customkd extract --out {name}`) first")

    def list_objects(self) -> dict[str, int]:
        """Key (relative path) → size of every regular file, refusing anything that is not a file or a folder."""
        found: dict[str, int] = {}
        pending = [self.root]
        while pending:
            with os.scandir(pending.pop()) as entries:
                for entry in entries:
                    info = entry.stat(follow_symlinks=False)
                    key = Path(entry.path).relative_to(self.root).as_posix()
                    if stat.S_ISDIR(info.st_mode):
                        pending.append(Path(entry.path))
                    elif stat.S_ISREG(info.st_mode):
                        found[key] = info.st_size
                    else:
                        kind = next((k for test, k in _FILE_KINDS if test(info.st_mode)), "special file")
                        raise UserError(f"cache {display(self.path)} contains {key}, a {kind}: a store holds only "
                                        "regular files; remove it or get a fresh copy of the store (nothing was read)")
        return found

    def foreign_entry(self) -> str | None:
        """The first entry that is not part of a store (a link or special file is not), or None."""
        pending = [self.root]
        while pending:
            with os.scandir(pending.pop()) as entries:
                for entry in sorted(entries, key=lambda e: e.name):
                    key = Path(entry.path).relative_to(self.root).as_posix()
                    mode = entry.stat(follow_symlinks=False).st_mode
                    if stat.S_ISDIR(mode) and is_store_entry(key, folder=True):
                        pending.append(Path(entry.path))
                    elif not (stat.S_ISREG(mode) and is_store_entry(key, folder=False)):
                        return key + ("/" if stat.S_ISDIR(mode) else "")
        return None

    def root_metadata_head(self) -> bytes:
        """At most ``MAX_METADATA_BYTES`` + 1 bytes of the root ``zarr.json`` (empty unless a regular file)."""
        meta = self.root / where.ROOT_METADATA
        if not (meta.is_file() and not meta.is_symlink()):
            return b""
        with open(meta, "rb") as file:
            return file.read(where.MAX_METADATA_BYTES + 1)

    def root_metadata(self) -> bytes:
        """The whole root ``zarr.json``; refuses a store whose manifest is gone (or is a link)."""
        meta = self.root / where.ROOT_METADATA
        if not meta.is_file() or meta.is_symlink():
            raise UserError(f"cache {display(self.path)} has no manifest any more (root zarr.json is gone)")
        return meta.read_bytes()

    def remove_partials(self) -> int:
        """Delete the temporary files a killed writer left (zarr writes ``NAME.<uuid hex>.partial``, then renames it):
        only those, where a store has them; any other ``*.partial`` (the user's) is not the store's to delete."""
        stray = [file for file in self.root.rglob("*.partial") if file.is_file() and not file.is_symlink()
                 and _PARTIAL.search(key := file.relative_to(self.root).as_posix()) and is_store_entry(key, False)]
        for file in stray:
            file.unlink(missing_ok=True)
        return len(stray)

    def refuse_link(self) -> None:
        """Refuse to delete through a symbolic link: only the store directory itself is ever deleted."""
        if self.root.is_symlink():
            raise UserError(f"{display(self.path)} is a symbolic link; point --out at the store directory itself "
                            "(nothing was deleted)")

    def delete(self) -> None:
        try:
            shutil.rmtree(self.root)
        except OSError as exc:
            raise UserError(f"cannot delete {display(self.path)} ({exc.strerror or type(exc).__name__}: "
                            f"{exc.filename}); fix the permissions or choose another --out") from None

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file())


class RemoteStorage:
    """A store on object storage (``s3://``, ``gs://``, ``memory://`` …), read and written through fsspec."""

    def __init__(self, path: str | Path) -> None:
        self.path = path
        self.location = str(path)  # what :func:`location.location` gives for it

    def errors(self):
        """Remote I/O failures become one-line UserErrors (:func:`location.storage_errors`)."""
        return where.storage_errors(self.path)

    def zarr_store(self, read_only: bool):
        return where.zarr_store(str(self.path), read_only=read_only)

    def resolved_root(self) -> None:
        return None

    def check_new_place(self, what: str) -> None:
        """Object keys are never followed out of the location: nothing to check before writing."""

    def exists(self) -> bool:
        return where.exists(self.path, where.ROOT_METADATA)

    def is_foreign(self) -> bool:
        return not self.exists() and where.is_occupied(self.path)

    def is_taken(self) -> bool:
        return where.is_occupied(self.path)

    def objects_before_open(self) -> None:
        """Nothing is listed before the store is known to be there (one listing, by :meth:`list_objects`)."""
        return None

    def missing(self, objects: None) -> UserError:
        name = display(self.path)
        return UserError(f"cache {name} does not exist (or these credentials cannot see it); put a store there with "
                         f"`customkd cache push LOCAL {name}` or `customkd extract --out {name}`")

    def list_objects(self) -> dict[str, int]:
        return where.list_objects(self.path)

    def foreign_entry(self) -> str | None:
        return next((key for key in sorted(where.list_objects(self.path)) if not is_store_entry(key, folder=False)),
                    None)

    def root_metadata_head(self) -> bytes:
        if not where.exists(self.path, where.ROOT_METADATA):
            return b""
        filesys, root = where.filesystem(self.path)
        return filesys.cat_file(f"{root}/{where.ROOT_METADATA}", start=0, end=where.MAX_METADATA_BYTES + 1)

    def root_metadata(self) -> bytes:
        filesys, root = where.filesystem(self.path)
        with where.storage_errors(self.path):
            return filesys.cat_file(f"{root}/{where.ROOT_METADATA}")

    def remove_partials(self) -> int:
        """Object stores write each object in one PUT and leave no temp files."""
        return 0

    def refuse_link(self) -> None:
        """Object storage has no links."""

    def delete(self) -> None:
        where.delete(self.path)

    def size_bytes(self) -> int:
        return where.size_bytes(self.path)  # one listing instead of a stat per object


Storage = LocalStorage | RemoteStorage


def storage_for(path: str | Path) -> Storage:
    """The strategy for a store location: remote when it is read through an fsspec filesystem, else local."""
    return RemoteStorage(path) if where.is_remote(path) else LocalStorage(path)
