"""View sampling and replay: the written contract between extraction and training.

A *view* is described by the parameters actually drawn for it, stored in the ``views`` array
of the store (columns named by :data:`VIEW_PARAMS`). :func:`replay` turns those parameters
plus the original image into pixels at any resolution, so the teacher (at extraction) and the
student (at training) see exactly the same crop, flip and colour change.

Randomness of view ``v`` of a sample comes only from ``(base_seed, sample_key, v)`` through
:func:`view_seed`; never from worker, rank or resume state.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

from customkd.contract.schema import MIN_CROP, VIEW_PARAMS  # the manifest's contract: recipe bounds, view columns

SEED_SCHEME_VERSION = 1
_IDENTITY_COLOUR = (1.0, 1.0, 1.0, 0.0)
_INTERPOLATIONS = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
}
INTERPOLATIONS: tuple[str, ...] = tuple(_INTERPOLATIONS)  # the names replay accepts


@dataclass(frozen=True)
class ViewRecipe:
    """How random training views are drawn (stored in the augmentation fingerprint)."""

    scale: tuple[float, float] = (0.35, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = True
    color_jitter: float = 0.0
    centre_crop: float = 0.875

    def __post_init__(self) -> None:
        lo, hi = self.scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"scale range must satisfy 0 < min <= max <= 1, got {self.scale}")
        if not 0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"ratio range must satisfy 0 < min <= max, got {self.ratio}")
        if not 0 <= self.color_jitter <= 1:
            raise ValueError(f"color jitter must be in [0, 1], got {self.color_jitter}")
        if not MIN_CROP <= self.centre_crop <= 1:
            raise ValueError(f"centre crop must be in [{MIN_CROP}, 1], got {self.centre_crop}")

    def to_dict(self) -> dict:
        return {**asdict(self), "scale": list(self.scale), "ratio": list(self.ratio)}


def view_seed(base_seed: int, sample_key: int, view: int) -> int:
    """64-bit seed of one view, a pure function of (base seed, sample key, view index)."""
    digest = hashlib.blake2b(f"{base_seed}:{sample_key}:{view}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def centre_view(width: int, height: int, recipe: ViewRecipe) -> np.ndarray:
    """Parameters ``[P]`` of the deterministic centre view: a centred square crop."""
    side = recipe.centre_crop * min(width, height)
    w, h = side / width, side / height
    x0, y0 = (1 - w) / 2, (1 - h) / 2
    return np.array([x0, y0, x0 + w, y0 + h, 0.0, *_IDENTITY_COLOUR], dtype=np.float32)


def random_view(width: int, height: int, rng: np.random.Generator, recipe: ViewRecipe) -> np.ndarray:
    """Parameters ``[P]`` of one random-resized-crop view (torchvision's algorithm)."""
    area = width * height
    log_ratio = (math.log(recipe.ratio[0]), math.log(recipe.ratio[1]))
    box = None
    for _ in range(10):
        target_area = area * rng.uniform(*recipe.scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = math.sqrt(target_area * aspect)
        h = math.sqrt(target_area / aspect)
        if 0 < w <= width and 0 < h <= height:
            x0 = rng.uniform(0, width - w)
            y0 = rng.uniform(0, height - h)
            box = (x0 / width, y0 / height, (x0 + w) / width, (y0 + h) / height)
            break
    if box is None:  # fall back to the centre view's box, as torchvision does
        box = tuple(centre_view(width, height, ViewRecipe(centre_crop=1.0))[:4])
    flip = float(recipe.flip and rng.random() < 0.5)
    colour = _IDENTITY_COLOUR
    if recipe.color_jitter > 0:
        s = recipe.color_jitter
        colour = (
            rng.uniform(1 - s, 1 + s),
            rng.uniform(1 - s, 1 + s),
            rng.uniform(1 - s, 1 + s),
            rng.uniform(-s / 4, s / 4),
        )
    return np.array([*box, flip, *colour], dtype=np.float32)


def draw_views(
    width: int, height: int, sample_key: int, n_views: int, recipe: ViewRecipe, base_seed: int
) -> np.ndarray:
    """Parameters ``[V, P]`` of all views of one sample; view 0 is the centre view."""
    views = [centre_view(width, height, recipe)]
    for v in range(1, n_views):
        rng = np.random.default_rng(view_seed(base_seed, sample_key, v))
        views.append(random_view(width, height, rng, recipe))
    return np.stack(views)


VIEW_PARAM_TOLERANCE = 1e-5  # float32 rounding of parameters drawn in float64
AREA_TOLERANCE = 1e-4  # a box's area from four float32 corners, against the recipe's scale range


def _legal(views: np.ndarray, recipe: dict) -> list[tuple[str, np.ndarray, np.ndarray, str]]:
    """(name, ``[n, V]`` mask of legal values, values shown, range in words) of each check of :func:`view_problem`
    on the views ``[n, V, P]`` of valid samples; NaN is never legal."""
    x0, y0, x1, y1, flip, brightness, contrast, saturation, hue = np.moveaxis(views, -1, 0)  # each [n, V]
    eps, jitter, (low, high) = VIEW_PARAM_TOLERANCE, recipe["color_jitter"], recipe["scale"]
    width, height = x1 - x0, y1 - y0
    box = (x0 >= -eps) & (y0 >= -eps) & (x1 <= 1 + eps) & (y1 <= 1 + eps) & (x0 < x1) & (y0 < y1)
    centred = (np.abs(x0 + x1 - 1) <= eps) & (np.abs(y0 + y1 - 1) <= eps)
    longer = np.maximum(width, height)  # a centred square of crop x the short side: crop on the short side's axis
    first = np.arange(views.shape[1]) == 0  # [V]: view 0 is the centre view, the others are random
    area = width * height
    drawn = (area >= low - AREA_TOLERANCE) & (area <= high + AREA_TOLERANCE)
    fallback = centred & (np.abs(longer - 1) <= eps)  # random_view's box when ten draws did not fit the image
    centre = centred & (np.abs(longer - recipe["centre_crop"]) <= eps)
    flips = (flip == 0) | ((flip == 1) & bool(recipe["flip"]) & ~first)
    return [
        ("crop box", box, np.stack([x0, y0, x1, y1], -1), "inside [0, 1] with x0 < x1 and y0 < y1"),
        ("centre view box", centre | ~first, np.stack([x0, y0, x1, y1], -1),
         f"a centred square of {recipe['centre_crop']:g} x the short side (the recipe's centre_crop)"),
        ("crop box area", drawn | fallback | first, area, f"in [{low:g}, {high:g}] (the recipe's scale)"),
        ("flip", flips, flip, "0 or 1 (0 in view 0)" if recipe["flip"] else "0 (the recipe does not flip)"),
        *((name, np.abs(factor - 1) <= jitter + eps, factor, f"in [{1 - jitter:g}, {1 + jitter:g}]")
          for name, factor in (("brightness", brightness), ("contrast", contrast), ("saturation", saturation))),
        ("hue", np.abs(hue) <= jitter / 4 + eps, hue, f"in [{0 - jitter / 4:g}, {jitter / 4:g}]"),
    ]


def view_problem(views: np.ndarray, valid: np.ndarray, recipe: dict, first_row: int = 0) -> str | None:
    """The first stored view that :func:`random_view` or :func:`centre_view` could not have drawn under ``recipe``
    (a manifest's augmentation recipe, checked by :meth:`contract.schema.Manifest.from_attrs`), as one line naming
    the row and view; ``None`` when every view of a valid sample is legal.

    ``views`` ``[n, V, P]`` holds rows ``first_row..first_row + n - 1``, ``valid`` ``[n]`` which of them have
    features (an unreadable image's views are NaN). A store is someone else's file: replaying a crop box of 1e6
    widths, hue 5 or a flip the recipe never draws would train the student on pictures the teacher never saw, or
    fail in a loader worker."""
    if views.ndim != 3 or views.shape[-1] != len(VIEW_PARAMS):
        return f"array views: {views.shape[-1]} parameters per view, not the {len(VIEW_PARAMS)} replay reads"
    rows = first_row + np.flatnonzero(valid)
    for name, ok, values, words in _legal(views[valid], recipe):
        bad = np.argwhere(~ok)
        if len(bad):
            row, view = bad[0]
            shown = ", ".join(f"{float(value):.6g}" for value in np.atleast_1d(values[row, view]))
            shown = f"({shown})" if "," in shown else shown
            more = f" ({len(bad)} views in all)" if len(bad) > 1 else ""
            return (f"array views: row {rows[row]} view {view}: {name} {shown} is not {words}, which the "
                    f"extraction recipe cannot draw{more}")
    return None


def replay_pil(image: Image.Image, params: np.ndarray, size: int, interpolation: str) -> Image.Image:
    """The view's pixels as an RGB PIL image of ``size``×``size``."""
    from torchvision.transforms import functional as tvf

    if interpolation not in _INTERPOLATIONS:
        raise ValueError(f"unknown interpolation {interpolation!r}; known: {sorted(_INTERPOLATIONS)}")
    x0, y0, x1, y1, flip, brightness, contrast, saturation, hue = (float(p) for p in params)
    image = image.convert("RGB")
    width, height = image.size
    box = (x0 * width, y0 * height, x1 * width, y1 * height)
    out = image.resize((size, size), _INTERPOLATIONS[interpolation], box=box)
    if flip >= 0.5:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if brightness != 1.0:
        out = tvf.adjust_brightness(out, brightness)
    if contrast != 1.0:
        out = tvf.adjust_contrast(out, contrast)
    if saturation != 1.0:
        out = tvf.adjust_saturation(out, saturation)
    if hue != 0.0:
        out = tvf.adjust_hue(out, hue)
    return out


def to_uint8(image: Image.Image):
    """RGB PIL image → its bytes as a tensor ``[3, H, W]`` uint8: what the student's loader workers return
    (the trainer normalises on the device, as :func:`to_tensor` does)."""
    import torch

    return torch.from_numpy(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1).copy())  # C order, writable


def to_tensor(image: Image.Image, mean: tuple[float, ...], std: tuple[float, ...]):
    """RGB PIL image → normalised float tensor ``[3, H, W]``."""
    import torch

    array = np.asarray(image, dtype=np.float32) / 255.0
    tensor = torch.from_numpy(array).permute(2, 0, 1)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return (tensor - mean_t) / std_t


def normalize_uint8(pixels, mean, std):
    """uint8 images ``[..., 3, H, W]`` → float32 ``(x / 255 − mean) / std`` on their device and in their memory
    format. The float32 operations of :func:`to_tensor`, in its order, so on CPU the result equals
    :func:`to_tensor` of the same pixels bit for bit. ``mean`` and ``std`` are 3 numbers or float32 tensors
    (a tensor already on the pixels' device is used without a copy)."""
    import torch

    if pixels.dtype != torch.uint8:
        raise TypeError(f"normalize_uint8 takes uint8 images, got {pixels.dtype}")
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=pixels.device).view(3, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32, device=pixels.device).view(3, 1, 1)
    return (pixels.float() / 255.0 - mean_t) / std_t


def replay(
    image: Image.Image,
    params: np.ndarray,
    size: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    interpolation: str = "bilinear",
):
    """Replay stored view parameters ``[P]`` into a normalised tensor ``[3, size, size]``."""
    return to_tensor(replay_pil(image, params, size, interpolation), mean, std)
