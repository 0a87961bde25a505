"""Where a result came from: library versions, the git commit of the code, file content hashes.

Recorded in a store's manifest (extract), a run's ``config.json`` (distill) and every bench result."""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import subprocess
from pathlib import Path

LIBRARIES = ("torch", "torchvision", "timm", "open_clip_torch", "zarr", "numcodecs", "numpy", "pillow",
             "safetensors", "customkd")


def library_versions(names: tuple[str, ...] = LIBRARIES) -> dict[str, str]:
    """Installed version of each library, ``"absent"`` for one that is not installed."""
    versions = {}
    for name in names:
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = "absent"
    return versions


def git_commit() -> str | None:
    """The commit of the customkd code that runs, when it runs from a git checkout (``+dirty`` if edited)."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty else "")


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
