"""Shared fixtures: a tiny generated image folder and a tiny store built by a random-weight timm teacher."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

TINY_TEACHER = "timm:test_vit"
TINY_STUDENT = "test_efficientnet"


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
    from featcache.extract import ExtractConfig, extract

    out = tmp_path_factory.mktemp("stores") / "tiny.zarr"
    extract(ExtractConfig(teacher=TINY_TEACHER, data=f"folder:{tiny_folder}", out=str(out), views=3,
                          weights="random", workers=0, shard_size=8, chunk_size=4))
    return out
