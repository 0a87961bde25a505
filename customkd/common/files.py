"""Atomic file writes: a file appears under its name whole or not at all.

Every file the project writes for a user (run records, checkpoints, weights, exports, predictions,
reports) goes through :func:`atomic_path`: written beside the target as ``NAME.partial``, then renamed
over it in one step, so a kill mid-write never leaves a half-written file looking complete."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(target: str | Path, mode: int | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success rename it onto ``target``, on error delete it.

    ``mode``: permission bits for the result before the umask (writers such as safetensors create 0600)."""
    target = Path(target)
    partial = target.with_name(target.name + ".partial")
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
