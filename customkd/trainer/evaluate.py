"""Using a finished run: evaluate the saved student, export it to ONNX."""

from __future__ import annotations

import json
import logging
import math
import warnings
from pathlib import Path

import numpy as np
import torch

from customkd.common.devices import resolve_device
from customkd.common.errors import UserError
from customkd.common.files import check_new_file, writing_new_file
from customkd.contract import store as fs
from customkd.contract.datasets import IMAGE_ERRORS, DatasetListing, load_listing
from customkd.contract.schema import MIN_CROP
from customkd.contract.views import INTERPOLATIONS, ViewRecipe, centre_view
from customkd.trainer.assemble import config_from_run, load_student
from customkd.trainer.config import MAX_IMAGE_SIZE
from customkd.trainer.data import StudentViews, load_cached_data, make_loader, make_split
from customkd.trainer.loop import classification_metrics, predict
from customkd.trainer.run_folder import CONFIG, RunConfig
from customkd.trainer.students import Student

log = logging.getLogger(__name__)


def run_preprocess(config: RunConfig, student: Student) -> dict:
    """How the run's student sees an image: size, mean, std, interpolation and centre-crop fraction. Recorded in
    config.json (checked by :func:`check_preprocess`); for older runs, rebuilt from the student and the store's
    view recipe."""
    if "preprocess" in config.values:
        return check_preprocess(config.values["preprocess"], config.run)
    manifest = _run_manifest(config)
    return {"size": config.image_size, "mean": list(student.mean), "std": list(student.std),
            "interpolation": "bilinear", "crop": manifest.fingerprint.augmentation.centre_crop}


def _run_manifest(config: RunConfig):
    """The manifest of the store the run trained on (its recorded ``cache``)."""
    cache = config.values.get("cache")
    if not isinstance(cache, str):
        raise UserError(f"run {config.run}: {CONFIG} has no cache path; restore the run's {CONFIG} or train the run "
                        "again")
    return fs.Store.open_complete(cache).manifest


def _is_number(value: object) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


def check_preprocess(preprocess: object, run: str | Path) -> dict:
    """A run's recorded ``preprocess``, refused in one line unless every value is one replay can use at a size a
    student trains at: a run folder is a file someone may send, and a size of 6000 px would be used as it is."""
    def refuse(problem: str) -> UserError:
        return UserError(f"run {run}: {CONFIG} preprocess {problem}; restore the run's {CONFIG} or train the "
                         "run again")

    if not isinstance(preprocess, dict):
        raise refuse("is not an object")
    size, crop, interpolation = (preprocess.get(key) for key in ("size", "crop", "interpolation"))
    if type(size) is not int or not 1 <= size <= MAX_IMAGE_SIZE:
        raise refuse(f"size {repr(size)[:40]} is not an integer in 1..{MAX_IMAGE_SIZE}")
    if not _is_number(crop) or not MIN_CROP <= crop <= 1:
        raise refuse(f"crop {repr(crop)[:40]} is not a number in [{MIN_CROP}, 1] (a recipe's centre_crop)")
    if interpolation not in INTERPOLATIONS:
        raise refuse(f"interpolation {repr(interpolation)[:40]} is not one of {', '.join(INTERPOLATIONS)}")
    for key in ("mean", "std"):
        values = preprocess.get(key)
        if not (isinstance(values, list) and len(values) == 3 and all(_is_number(v) for v in values)) or \
                (key == "std" and min(values) <= 0):
            raise refuse(f"{key} {repr(values)[:60]} is not three finite numbers{' > 0' if key == 'std' else ''}")
    return preprocess


class _AllCentreViews:
    """A dataset spec's every sample, centre view only, as the data object StudentViews expects."""

    def __init__(self, spec: str, classes: list[str], centre_crop: float) -> None:
        self.listing = load_listing(spec)
        missing = [c for c in self.listing.classes if c not in classes]
        if missing:
            raise UserError(f"dataset {spec} has classes the student does not know: {', '.join(missing[:5])}")
        self.labels = np.array([classes.index(self.listing.classes[s.label]) for s in self.listing.samples])
        sizes = _image_sizes(self.listing, spec)
        recipe = ViewRecipe(centre_crop=centre_crop)
        self.views = np.stack([centre_view(w, h, recipe)[None] for w, h in sizes])


def _image_sizes(listing: DatasetListing, spec: str) -> list[tuple[int, int]]:
    """Every image's (width, height), each decoded whole now, so that a truncated, foreign or oversized file is
    named in one line before the student runs (PIL's errors: :data:`contract.datasets.IMAGE_ERRORS`)."""
    sizes, bad = [], []
    for index, sample in enumerate(listing.samples):
        try:
            sizes.append(listing.load_image(index).size)
        except IMAGE_ERRORS as exc:
            bad.append(f"{sample.relpath} ({str(exc).splitlines()[0][:80] if str(exc) else type(exc).__name__})")
    if bad:
        more = f" (and {len(bad) - 3} more)" if len(bad) > 3 else ""
        raise UserError(f"--data {spec}: {len(bad)} unreadable image(s): {'; '.join(bad[:3])}{more}; remove or fix "
                        "them and rerun")
    return sizes


def evaluate_run(run: str, data: str | None = None, workers: int = 2, device: str = "auto") -> dict:
    """Accuracy of the saved student on the run's held-out samples, or on every sample of ``data``."""
    torch_device = resolve_device(device)
    config, student = load_student(run)
    if data is None:
        cfg = config_from_run(config.values, run)
        cached = load_cached_data(cfg)
        if cached.classes != config.classes:
            raise UserError(f"run {run}: {CONFIG} names classes {_shown(config.classes)} but its store has "
                            f"{_shown(cached.classes)}; restore the run's {CONFIG} or train the run again")
        rows = make_split(cfg, cached).eval
        labels = cached.labels
    else:
        manifest = _run_manifest(config)
        cached = _AllCentreViews(data, config.classes, manifest.fingerprint.augmentation.centre_crop)
        rows, labels = np.arange(len(cached.labels)), cached.labels
    dataset = StudentViews(cached, config.image_size)
    loader = make_loader(dataset, rows, np.zeros(len(rows), np.int64), config.batch_size, workers)
    seen, preds = predict(student.to(torch_device), loader, torch_device)
    return {**classification_metrics(labels[seen], preds, config.num_classes), "n": len(seen)}


def _shown(names: list[str]) -> str:
    return ", ".join(names[:5]) + (" …" if len(names) > 5 else "")


def _takes_any_size(model: torch.nn.Module, size: int) -> bool:
    """Whether the student runs at another input size (CNNs with global pooling do; ViTs at a fixed size don't)."""
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, size + 32, size + 16))
    except (RuntimeError, AssertionError, ValueError):
        return False
    return True


def onnx_metadata(config: RunConfig, preprocess: dict) -> dict[str, str]:
    """What a deployment needs to feed the ONNX student: classes and preprocessing (strings; JSON for lists)."""
    return {"classes": json.dumps(config.classes), "mean": json.dumps(preprocess["mean"]),
            "std": json.dumps(preprocess["std"]), "size": str(preprocess["size"]),
            "interpolation": preprocess["interpolation"], "crop": str(preprocess["crop"]),
            "input": "RGB, centre square crop of crop x the short side, resized to size, scaled to [0, 1], "
                     "then (x - mean) / std, NCHW float32", "student": config.student}


def export_onnx(run: str, onnx_file: str, atol: float = 1e-4) -> float:
    """Write the deployable student (backbone + head) to ONNX with its classes and preprocessing as metadata, and
    dynamic height x width where the model allows; returns the max |ONNX - PyTorch| on test inputs."""
    target = check_new_file(onnx_file, "--onnx", "student.onnx")
    try:
        import onnx
    except ImportError:
        raise UserError("export needs the onnx package: pip install onnx onnxruntime") from None
    config, student = load_student(run)
    size = config.image_size
    dynamic = _takes_any_size(student.model, size)
    axes = {"images": {0: "batch", **({2: "height", 3: "width"} if dynamic else {})}, "logits": {0: "batch"}}
    example = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with writing_new_file(target, "--onnx") as partial:  # a refused or failed export leaves nothing behind
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(student.model, (example,), str(partial), dynamo=False, input_names=["images"],
                              output_names=["logits"], dynamic_axes=axes)
        model = onnx.load(str(partial))
        onnx.helper.set_model_props(model, onnx_metadata(config, run_preprocess(config, student)))
        onnx.save(model, str(partial))
        error = _check_onnx(str(partial), student, [size, size + 32] if dynamic else [size])
        if error > atol:
            raise UserError(f"ONNX export of {run} differs from PyTorch by {error:.2e} > {atol}; do not deploy it")
    return error


def _check_onnx(path: str, student: Student, sizes: list[int]) -> float:
    """Max |ONNX − PyTorch| over random inputs at each size (nan when onnxruntime is missing)."""
    try:
        import onnxruntime
    except ImportError:
        log.warning("onnxruntime is not installed: wrote %s without checking it", path)
        return float("nan")
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    error = 0.0
    for size in sizes:
        probe = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            expected = student.model(probe).numpy()
        error = max(error, float(np.abs(session.run(None, {"images": probe.numpy()})[0] - expected).max()))
    return error
