"""A generated image folder: realistic decode cost, no download."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def make_image_folder(root: Path, n_images: int, classes: int = 4, side: int = 320, seed: int = 0) -> Path:
    """``root/<class>/<img>.jpg``: smooth random colour fields plus noise, about ``side`` px, JPEG q90.

    Smooth content keeps file sizes like photos' (noise-only JPEGs are several times larger and
    slower to decode); sizes vary a little so crops are not all alike.
    """
    rng = np.random.default_rng(seed)
    for i in range(n_images):
        folder = root / f"class{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        height, width = side - 32 * (i % 3), side + 16 * (i % 4)
        coarse = rng.random((height // 32 + 1, width // 32 + 1, 3)) * 255
        field = np.asarray(Image.fromarray(coarse.astype(np.uint8)).resize((width, height), Image.Resampling.BICUBIC))
        noisy = np.clip(field.astype(np.int16) + rng.integers(-12, 13, field.shape), 0, 255).astype(np.uint8)
        Image.fromarray(noisy).save(folder / f"img{i:04d}.jpg", quality=90)
    return root
