"""Shared test helpers: a tiny generated image folder and a tiny store built by a random-weight timm teacher, the
command line in a real process (``customkd``, ``torchrun``) or in-process (``invoke``), what a refusal must look
like, and store bytes for byte-for-byte comparisons."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

TINY_TEACHER = "timm:test_vit"
TINY_STUDENT = "test_efficientnet"
ROOT = Path(__file__).resolve().parents[1]  # the repository
# a seconds-long CPU run: TINY_STUDENT at 32 px, batches of 8, two labels per class, two epochs, no minimum step
# count, no loader workers
TINY_RUN = {"min_steps": 0, "student": TINY_STUDENT, "epochs": 2, "image_size": 32, "batch_size": 8, "workers": 0,
            "labels_per_class": 2}
TIMING = ("seconds", "samples_per_s", "epoch_seconds")  # wall-clock fields of metrics.json's epoch records


def tiny_config(store, out=None, **overrides):
    """The DistillConfig of a :data:`TINY_RUN` on ``store`` (a path or URL), writing to ``out`` if given;
    ``overrides`` replace any setting."""
    from customkd.trainer.config import DistillConfig

    return DistillConfig(**{"cache": str(store), **TINY_RUN, **({} if out is None else {"out": str(out)}), **overrides})


def without_timing(epochs: list[dict]) -> list[dict]:
    """metrics.json's epoch records without wall-clock fields: what two runs of the same work must share exactly."""
    return [{key: {k: v for k, v in value.items() if k not in TIMING} if isinstance(value, dict) else value
             for key, value in record.items() if key not in TIMING} for record in epochs]


def cli_env(**extra: str) -> dict[str, str]:
    """The environment of a subprocess that runs this checkout's code: ours first on the import path, plus ``extra``."""
    return {**os.environ, "PYTHONPATH": str(ROOT), **extra}


def customkd(*args, cwd: Path = ROOT, env: dict[str, str] | None = None,
             timeout: float = 300) -> subprocess.CompletedProcess:
    """``customkd ARGS`` as a user runs it: a real process (``python -m customkd.cli``), stdout and stderr captured as text;
    ``env`` adds variables to the environment."""
    return subprocess.run([sys.executable, "-m", "customkd.cli", *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          env=cli_env(**(env or {})), timeout=timeout)


def torchrun(nproc: int, *args, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node=NPROC -m customkd.cli ARGS`` on CPU (gloo), one thread per rank."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    return subprocess.run([*launcher, "-m", "customkd.cli", *map(str, args)], capture_output=True, text=True, cwd=ROOT,
                          env=cli_env(OMP_NUM_THREADS="1", **(env or {})), timeout=timeout)


def invoke(*args):
    """The same app in-process (fast, typer's CliRunner); an unexpected exception propagates instead of becoming
    an exit code."""
    from typer.testing import CliRunner

    from customkd.cli.app import app

    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def one_error_line(result, needle: str, code: int = 2) -> str:
    """A refusal as the command line must give it: exit ``code``, no traceback, exactly one ``error:`` line, on
    stderr, holding ``needle``; returns that line. ``result`` comes from :func:`customkd` or :func:`invoke`."""
    if isinstance(result, subprocess.CompletedProcess):
        exit_code, everything = result.returncode, result.stdout + result.stderr
    else:
        exit_code, everything = result.exit_code, result.output
    assert exit_code == code, (exit_code, result.stdout, result.stderr)
    assert "Traceback" not in everything, everything
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and needle in errors[0], result.stderr
    assert [line for line in everything.splitlines() if line.startswith("error:")] == errors, everything
    return errors[0]


def store_bytes(store: Path, *, manifest: bool = False) -> dict[str, bytes]:
    """Every file of a store, byte for byte, keyed by its path inside it; without the root ``zarr.json`` (whose
    manifest holds the creation time, so two equal extractions differ there) unless ``manifest``."""
    root = Path(store)
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and (manifest or p.relative_to(root) != Path("zarr.json"))}


def make_tiny_hue_folder(root: Path, classes: int = 3, per_class: int = 10, domains: tuple[str, ...] = ()) -> Path:
    """``root/<class>/<img>.png`` (or ``root/<domain>/<class>/…``): tiny (about 40 x 48 px) PNGs of coloured noise,
    one hue per class, so a student learns the classes in a few steps. Not bench.fixtures.make_image_folder, which
    makes photo-sized JPEGs without a class signal, for realistic decode cost."""
    rng = np.random.default_rng(0)
    for domain in domains or ("",):
        for c in range(classes):
            folder = root / domain / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                pixels = (rng.random((40 + i % 3, 48, 3)) * 90).astype(np.uint8)
                pixels[..., c % 3] += 140
                Image.fromarray(pixels).save(folder / f"img{i:02d}.png")
    return root


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory) -> Path:
    return make_tiny_hue_folder(tmp_path_factory.mktemp("data") / "tiny")


@pytest.fixture(scope="session")
def tiny_store(tiny_folder, tmp_path_factory) -> Path:
    from customkd.featcache.extract import ExtractConfig, extract

    out = tmp_path_factory.mktemp("stores") / "tiny.zarr"
    extract(ExtractConfig(teacher=TINY_TEACHER, data=f"folder:{tiny_folder}", out=str(out), views=3,
                          weights="random", workers=0, shard_size=8, chunk_size=4))
    return out
