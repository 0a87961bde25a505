"""Defaults that learn on a small real dataset.

A few hundred real handwritten digits (scikit-learn's bundled copy of the UCI digits, offline):
3 confusable classes (3, 5, 8), 100 images each, 8 labels per class, the rest unlabeled; the real
EfficientNet-Lite0 teacher (bundled ImageNet weights) and a random-init MobileNetV3 student trained
with the default schedule. With 8 epochs of 240 samples the student used to take ≈ 32 optimizer
steps and predict one class; ``--min-steps`` (default 250) makes the default run long enough.
Slow (a few minutes on 2 CPU cores): run with ``pytest -m slow``.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import customkd

DIGITS = (3, 5, 8)


def make_digits_folder(root: Path, per_class: int = 100, size: int = 64) -> Path:
    """``root/<digit>/<i>.png``: real 8×8 digits upscaled to ``size`` px (grayscale, 0-255)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    for digit in DIGITS:
        folder = root / f"digit{digit}"
        folder.mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(digits.images[digits.target == digit][:per_class]):
            pixels = (image / 16.0 * 255).astype(np.uint8)
            Image.fromarray(pixels).resize((size, size), Image.Resampling.BILINEAR).save(folder / f"{i:03d}.png")
    return root


def _cli(*args: str) -> subprocess.CompletedProcess:
    return customkd(*args, env={"HF_HUB_OFFLINE": "1"}, timeout=1800)


@pytest.mark.slow
def test_defaults_learn_on_a_few_hundred_real_images(tmp_path):
    data = make_digits_folder(tmp_path / "digits")
    store = tmp_path / "digits.zarr"
    done = _cli("extract", "--teacher", "efficientnet_lite0", "--data", f"folder:{data}", "--out", str(store),
                "--views", "4")
    assert done.returncode == 0, done.stderr[-2000:]
    results = {}
    for method in ("student", "customkd"):
        run = tmp_path / method
        done = _cli("distill", "--cache", str(store), "--method", method, "--labels-per-class", "8", "--out", str(run))
        assert done.returncode == 0, done.stderr[-2000:]
        results[method] = json.loads((run / "metrics.json").read_text())
    probe = results["customkd"]["teacher_probe"]["accuracy"]
    chance = 1 / len(DIGITS)
    for method, metrics in results.items():
        final = metrics["final"]
        print(method, final["accuracy"], final["balanced_accuracy"], "probe", probe)
        assert min(final["per_class_accuracy"]) > 0  # not collapsed onto one class
    customkd = results["customkd"]["final"]["balanced_accuracy"]
    assert customkd > chance + 0.5 * (probe - chance)  # closes most of the gap from chance to the teacher probe
