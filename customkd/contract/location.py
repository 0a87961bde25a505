"""Where a store lives: local paths and URLs, fsspec filesystems from the environment, redaction.

A cache may be a local path or a URL (``s3://bucket/path.zarr``, ``gs://…``, ``memory://…``); a
``file://`` URL is treated as the local path it names, so it keeps the local store's atomic writes.
Connection settings come from the environment, never from the URL: credentials in a URL would end
up in logs, in the store's manifest and in every run's ``config.json``, so such URLs are refused.

These are the primitives below :mod:`contract.store`; copying whole stores (push / pull) is
:mod:`featcache.remote`, above it. ``filesys`` is always an fsspec filesystem here.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from customkd.common.errors import UserError

ROOT_METADATA = "zarr.json"
MAX_METADATA_BYTES = 64 * 2**20  # a zarr.json larger than this is not one customkd wrote
COPY_MARKER = ".customkd-copy.json"  # present only while a copy into the location is unfinished
S3_ENDPOINT_VARIABLES = ("CUSTOMKD_S3_ENDPOINT", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
OPTIONS_VARIABLE = "CUSTOMKD_STORAGE_OPTIONS"  # JSON object merged into the fsspec storage options

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
        filesys, root = url_to_fs(location, **storage_options_from_env(location))
    except ImportError as exc:  # e.g. gs:// without gcsfs
        raise UserError(f"cannot open {redact(location)}: {exc} (pip install it next to customkd)") from None
    except ValueError as exc:  # unknown protocol
        raise UserError(f"cannot open {redact(location)}: {exc}") from None
    return filesys, root.rstrip("/")


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
    filesys, root = filesystem(path)
    with storage_errors(path):
        try:  # not filesys.isfile: it answers False for every error, so "no network" would read as "no store"
            return filesys.info(f"{root}/{key}")["type"] == "file"
        except (FileNotFoundError, NotADirectoryError):
            return False


def is_occupied(path: str | Path) -> bool:
    """Whether anything is at the location: an object, or a non-empty prefix / directory."""
    filesys, root = filesystem(path)
    with storage_errors(path):
        return filesys.exists(root) and (filesys.isfile(root) or bool(filesys.ls(root, detail=False)))


def read_json(path: str | Path, key: str) -> dict:
    filesys, root = filesystem(path)
    with storage_errors(path):
        return json.loads(filesys.cat_file(f"{root}/{key}"))


def delete(path: str | Path) -> None:
    """Remove every object under the location (``--overwrite`` on object storage)."""
    filesys, root = filesystem(path)
    with storage_errors(path):
        filesys.rm(root, recursive=True)


def size_bytes(path: str | Path) -> int:
    """Total size of the objects under the location."""
    filesys, root = filesystem(path)
    with storage_errors(path):
        return int(filesys.du(root, total=True))


def objects_under(filesys, root: str) -> dict[str, int]:
    """Relative key → size of every object under ``root`` (empty when nothing is there)."""
    if not filesys.exists(root):
        return {}
    found = filesys.find(root, detail=True)
    return {name[len(root) + 1:]: int(info["size"]) for name, info in found.items() if name.startswith(root + "/")}


def contained_key(path: str | Path, key: str) -> bool:
    """Whether object ``key`` lands inside the location: a plain relative key (no empty, ``.`` or ``..`` part, no
    leading ``/``, backslash or NUL) that, under a local location, also resolves inside it (links followed).

    Object keys come from whoever wrote the bucket: ``store.zarr/../../home/.bashrc`` is a valid S3 key."""
    parts = key.split("/")
    if not key or "\\" in key or "\x00" in key or any(part in ("", ".", "..") for part in parts):
        return False
    if is_remote(path):
        return True
    root = Path(to_local(path)).resolve()
    return (root / key).resolve().is_relative_to(root)


def list_objects(path: str | Path) -> dict[str, int]:
    """Relative key → size of every object of a remote store (one listing)."""
    filesys, root = filesystem(path)
    with storage_errors(path):
        return objects_under(filesys, root)


def location(path: str | Path) -> str | Path:
    """A local ``Path`` for plain paths and ``file://`` URLs, the URL itself for remote stores."""
    return str(path) if is_remote(path) else Path(to_local(path))


def display(path: str | Path) -> str:
    """How a location appears in messages and logs: URLs without secrets."""
    return redact(path) if is_url(path) else str(Path(path))
