"""``customkd predict``: a saved student's class probabilities for images nobody labeled.

Images are preprocessed exactly as evaluation does: the centre view (a centred square crop of ``crop`` × the
short side), resized to the student's size with its interpolation, handed over as uint8 and normalised with its
mean and std on the device (:class:`trainer.loop.PixelNorm`).
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
import torch

from customkd.common.errors import UserError
from customkd.common.files import check_new_file, writing_new_file
from customkd.contract.datasets import IMAGE_SUFFIXES
from customkd.contract.images import IMAGE_ERRORS, decode_image
from customkd.contract.views import ViewRecipe, centre_view, replay_pil, to_uint8

log = logging.getLogger(__name__)


def list_images(spec: str) -> list[Path]:
    """``PATH`` or ``folder:PATH``: one image file, or every image below a folder (any tree; hidden skipped)."""
    path = Path(spec.removeprefix("folder:")).expanduser()
    if path.is_file():
        return [path.resolve()]
    if not path.is_dir():
        raise UserError(f"--images {spec} does not exist; pass an image file or a folder of images")
    files = sorted(p.resolve() for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(path).parts))
    if not files:
        raise UserError(f"no images under {path} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    return files


class ImageFiles(torch.utils.data.Dataset):
    """index → (centre view uint8 ``[3, S, S]``, index, error or ""); an unreadable file gives zeros and its error."""

    def __init__(self, files: list[Path], preprocess: dict) -> None:
        self.files, self.p = files, preprocess
        self.recipe = ViewRecipe(centre_crop=preprocess["crop"])

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        size = self.p["size"]
        try:
            image = decode_image(self.files[index])
        except IMAGE_ERRORS as exc:
            return torch.zeros(3, size, size, dtype=torch.uint8), index, _reason(exc)
        params = centre_view(*image.size, self.recipe)
        return to_uint8(replay_pil(image, params, size, self.p["interpolation"])), index, ""


def _reason(exc: BaseException) -> str:
    return str(exc).splitlines()[0][:80] if str(exc).strip() else type(exc).__name__


class ImageCheck(torch.utils.data.Dataset):
    """index → the error decoding that file raises, or "" (each image decoded whole, then dropped)."""

    def __init__(self, files: list[Path]) -> None:
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> str:
        try:
            decode_image(self.files[index]).close()
        except IMAGE_ERRORS as exc:
            return _reason(exc)
        return ""


def check_images(files: list[Path], workers: int) -> None:
    """Decode every image before the student is loaded, so that a truncated, foreign or oversized file is named
    (each one, in one line) before any work rather than after it."""
    loader = torch.utils.data.DataLoader(ImageCheck(files), batch_size=None, num_workers=workers)
    bad = [f"{file} ({error})" for file, error in zip(files, loader, strict=True) if error]
    if bad:
        more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
        raise UserError(f"--images: {len(bad)} unreadable image(s): {'; '.join(bad[:5])}{more}; remove or fix them "
                        "and rerun (nothing was written)")


def predict_images(run: str, images: str, out: str, device: str = "auto", batch_size: int = 64,
                   workers: int = 2) -> int:
    """Write ``out`` (CSV: path, class, one probability per class) for every image of ``images``; returns the
    number of images. Never overwrites a file; an unreadable image is named in one error line."""
    from customkd.common.devices import resolve_device
    from customkd.trainer.assemble import load_student
    from customkd.trainer.evaluate import run_preprocess
    from customkd.trainer.loop import PixelNorm

    target = check_new_file(out, "--out", "predictions.csv")
    files = list_images(images)
    check_images(files, workers)
    config, student = load_student(run)
    torch_device = resolve_device(device)
    student = student.to(torch_device)
    preprocess = run_preprocess(config, student)
    loader = torch.utils.data.DataLoader(ImageFiles(files, preprocess), batch_size=batch_size,
                                         num_workers=workers, pin_memory=torch_device.type == "cuda")
    normalize = PixelNorm(tuple(preprocess["mean"]), tuple(preprocess["std"]), torch_device)
    probabilities = np.zeros((len(files), config.num_classes), dtype=np.float32)
    bad: list[str] = []
    with torch.inference_mode():
        for pixels, index, errors in loader:
            logits = student.model(normalize(pixels)).float()
            probabilities[index.numpy()] = torch.softmax(logits, 1).cpu().numpy()
            bad += [f"{files[i].name} ({e})" for i, e in zip(index.tolist(), errors, strict=True) if e]
    if bad:
        raise UserError(f"{len(bad)} unreadable image(s): {'; '.join(bad[:5])}; remove or fix them and rerun")
    with writing_new_file(target, "--out") as partial, open(partial, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "class", *config.classes])
        for file, row in zip(files, probabilities, strict=True):
            writer.writerow([str(file), config.classes[int(row.argmax())], *(f"{p:.6f}" for p in row)])
    log.info("predicted %d image(s) with %s on %s", len(files), run, torch_device)
    return len(files)
