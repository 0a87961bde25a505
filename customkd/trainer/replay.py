"""Stored views replayed as batched tensor ops: crop + resize, flip and colour jitter of a whole batch at once,
on whatever device the decoded images live (:mod:`trainer.device_replay` feeds it).

Two engines:

- ``exact`` reproduces :func:`contract.views.replay_pil` (the loader workers' PIL replay) pixel for pixel: PIL's
  resampling coefficients computed the way Pillow 13's ``libImaging/Resample.c`` computes them (box edges as
  float32, weights in double, normalised by a left-to-right sum, then 22-bit fixed point), the first pass rounded
  to uint8 before the second, in Pillow's order (vertically first when the height shrinks by more than twice the
  width), then PIL's blend arithmetic (float32, truncated) for brightness, contrast and saturation and its 8-bit
  HSV round trip for hue, in that order. Integer sums run as float64 matrix products, which are exact below 2**53
  whatever the summation order.
- ``fast`` resamples in float32 with the same filters, both passes without rounding in between, rounds once to
  8 bits, then applies colour jitter exactly as above (elementwise, cheap). Its distance from PIL is measured, not
  assumed (:data:`FAST_TOLERANCE`).

Every function takes and returns tensors ``[B, C, H, W]`` holding 0..255; the caller keeps the images uint8.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from customkd.contract.views import VIEW_PARAMS

ENGINES = ("exact", "fast")
PRECISION_BITS = 22  # libImaging/Resample.c: 32 - 8 - 2
# the fast engine's distance from contract.views.replay_pil in grey levels (0..255), per pixel: largest and mean,
# bilinear, without and with colour jitter (0.4), as measured by tests/trainer/test_replay.py on its fixtures (and
# on 256 views of each bundled store, docs/benchmarks.md). Jitter carries the resize's rounding differences through
# PIL's truncating blends and its 8-bit hue, so one grey level can become several.
FAST_TOLERANCE = {"geometry": {"max": 1, "mean": 0.25}, "colour": {"max": 8, "mean": 0.5}}
FILTERS = {  # name -> support, as in Resample.c
    "bilinear": 1.0,
    "bicubic": 2.0,
}
_COLUMN = {name: i for i, name in enumerate(VIEW_PARAMS)}


def on_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """A small host array on ``device`` without a host wait: through pinned pages (PyTorch caches them) and a
    copy queued on the stream; a plain copy from pageable memory would make the host wait for the GPU."""
    tensor = torch.from_numpy(np.array(array, copy=True))
    return tensor.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else tensor


def _filter(name: str, x: torch.Tensor) -> torch.Tensor:
    """PIL's filter kernels (Resample.c), in float64 with its order of operations."""
    x = x.abs()
    if name == "bilinear":
        return torch.where(x < 1.0, 1.0 - x, torch.zeros_like(x))
    a = -0.5
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return torch.where(x < 1.0, near, torch.where(x < 2.0, far, torch.zeros_like(x)))


def window_size(lo: np.ndarray, hi: np.ndarray, out_size: int, interpolation: str) -> int:
    """Coefficients per output pixel for the whole batch (Resample.c's ``ksize``), from the box edges on the host."""
    scale = np.maximum((hi.astype(np.float32) - lo.astype(np.float32)).astype(np.float64) / out_size, 1.0)
    return int(math.ceil(FILTERS[interpolation] * float(scale.max(initial=1.0)))) * 2 + 1


def resize_weights(lo: torch.Tensor, hi: torch.Tensor, in_size: torch.Tensor, out_size: int, in_pad: int,
                   window: int, interpolation: str, exact: bool) -> torch.Tensor:
    """Resampling matrices ``[B, out_size, in_pad]`` of one axis: output pixel ``i`` is ``sum_x W[i, x] * in[x]``.

    ``lo``/``hi`` ``[B]`` float32 box edges in input pixels, ``in_size`` ``[B]`` the images' real sizes (columns
    past them, the padding, get no weight). Exact: PIL's 22-bit integers (as float64); fast: float32 weights."""
    scale = (hi - lo).double() / out_size  # float32 difference, as PIL subtracts its float box
    filterscale = scale.clamp(min=1.0)
    support = (FILTERS[interpolation] * filterscale)[:, None]
    centre = lo.double()[:, None] + (torch.arange(out_size, dtype=torch.float64, device=lo.device) + 0.5) * scale[:, None]
    first = torch.trunc(centre - support + 0.5).clamp(min=0)  # C's (int) truncates toward zero
    count = torch.minimum(torch.trunc(centre + support + 0.5), in_size.double()[:, None]) - first
    offsets = torch.arange(window, dtype=torch.float64, device=lo.device)
    columns = first[..., None] + offsets  # [B, out, window]
    weights = _filter(interpolation, ((columns - centre[..., None]) + 0.5) * (1.0 / filterscale)[:, None, None])
    weights = torch.where(offsets < count[..., None], weights, torch.zeros_like(weights))
    total = torch.zeros_like(centre)
    for k in range(window):  # left to right, as Resample.c sums them
        total = total + weights[..., k]
    weights = torch.where(total[..., None] != 0, weights / total[..., None], weights)
    if exact:
        scaled = weights * (1 << PRECISION_BITS)
        weights = torch.where(weights < 0, torch.trunc(-0.5 + scaled), torch.trunc(0.5 + scaled))
    dtype = torch.float64 if exact else torch.float32
    dense = torch.zeros(*columns.shape[:2], in_pad + window, dtype=dtype, device=lo.device)
    dense.scatter_add_(2, columns.long(), weights.to(dtype))
    return dense[..., :in_pad]


def _fixed_point(sums: torch.Tensor) -> torch.Tensor:
    """Resample.c's ``clip8``: (sum + 2**21) >> 22, clamped to 0..255 (exact in float64)."""
    return torch.floor((sums + (1 << (PRECISION_BITS - 1))) / (1 << PRECISION_BITS)).clamp_(0, 255)


def vertical_first(sizes: np.ndarray, out_size: int) -> np.ndarray:
    """Which samples PIL resizes vertically first ``[B]`` (Pillow 13's ``ImagingResampleInner``: when the height
    shrinks by more than twice what the width does, whatever the crop box). The passes round in between, so the
    order shows in the pixels."""
    shrink_x, shrink_y = sizes[:, 0] - out_size, sizes[:, 1] - out_size
    return (shrink_y > 0) & (shrink_y > shrink_x * 2)


def _two_passes(pixels: torch.Tensor, horizontal: torch.Tensor, vertical: torch.Tensor, exact: bool,
                columns_first: bool) -> torch.Tensor:
    """``vertical @ pixels @ horizontal.T`` per sample, rounded to 8 bits after each pass when exact."""
    first = pixels @ horizontal.transpose(1, 2)[:, None] if columns_first else vertical[:, None] @ pixels
    if exact:
        first = _fixed_point(first)
    out = vertical[:, None] @ first if columns_first else first @ horizontal.transpose(1, 2)[:, None]
    return _fixed_point(out) if exact else out


def resize(images: torch.Tensor, sizes: np.ndarray, boxes: np.ndarray, out_size: int,
           interpolation: str = "bilinear", exact: bool = True) -> torch.Tensor:
    """Crop boxes resized to ``out_size``²: ``images`` ``[B, C, H, W]`` (0..255, zero-padded past ``sizes``
    ``[B, 2]`` = (width, height)), ``boxes`` ``[B, 4]`` float32 pixel edges (x0, y0, x1, y1), both on the host.
    Returns ``[B, C, out, out]``, float64 (exact) or float32 (fast), on the images' device."""
    _, _, height, width = images.shape
    device = images.device
    edges, real = on_device(boxes, device), on_device(sizes, device)
    window_x = window_size(boxes[:, 0], boxes[:, 2], out_size, interpolation)
    window_y = window_size(boxes[:, 1], boxes[:, 3], out_size, interpolation)
    horizontal = resize_weights(edges[:, 0], edges[:, 2], real[:, 0], out_size, width, window_x, interpolation, exact)
    vertical = resize_weights(edges[:, 1], edges[:, 3], real[:, 1], out_size, height, window_y, interpolation, exact)
    pixels = images.to(horizontal.dtype)
    rows_first = vertical_first(sizes, out_size) if exact else np.zeros(len(sizes), bool)
    if not rows_first.any():
        return _two_passes(pixels, horizontal, vertical, exact, columns_first=True)
    out = torch.empty(*pixels.shape[:2], out_size, out_size, dtype=pixels.dtype, device=device)
    for group, columns_first in ((np.flatnonzero(~rows_first), True), (np.flatnonzero(rows_first), False)):
        if len(group):
            index = on_device(group, device)
            out[index] = _two_passes(pixels[index], horizontal[index], vertical[index], exact, columns_first)
    return out


def flip(images: torch.Tensor, flipped: torch.Tensor) -> torch.Tensor:
    """Mirror the samples where ``flipped`` ``[B]`` (bool) is set."""
    return torch.where(flipped[:, None, None, None], images.flip(-1), images)


def luma(images: torch.Tensor) -> torch.Tensor:
    """Grey level ``[B, 1, H, W]`` of RGB images: PIL's ``convert("L")`` (ITU-R 601-2 in 16-bit fixed point)."""
    r, g, b = images.double().unbind(1)
    return torch.floor((r * 19595 + g * 38470 + b * 7471 + 0x8000) / 65536)[:, None]


def blend(base: torch.Tensor, images: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """PIL's ``Image.blend(base, images, alpha)`` (libImaging/Blend.c): float32 ``base + alpha * (images - base)``
    truncated and clipped to 0..255. ``alpha`` ``[B]``."""
    alpha = alpha.float()[:, None, None, None]
    mixed = base.float() + alpha * (images.float() - base.float())  # two roundings, as the C expression has
    return torch.trunc(mixed.clamp(0, 255))


def adjust_contrast(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``ImageEnhance.Contrast``: blend with the image's mean grey level, ``int(mean + 0.5)`` as PIL takes it."""
    grey = luma(images)
    mean = torch.floor(grey.sum(dim=(1, 2, 3), keepdim=True) / grey[0].numel() + 0.5)  # integer sums: exact
    return blend(mean.expand_as(images), images, factor)


def rgb_to_hsv(images: torch.Tensor) -> torch.Tensor:
    """PIL's 8-bit RGB → HSV (libImaging/Convert.c ``rgb2hsv_row``, float32 and double steps as there)."""
    r, g, b = images.double().unbind(1)
    maxc, minc = torch.maximum(torch.maximum(r, g), b), torch.minimum(torch.minimum(r, g), b)
    span = (maxc - minc).float()
    grey = span == 0
    span = torch.where(grey, torch.ones_like(span), span)
    saturation = span / torch.where(maxc == 0, torch.ones_like(span), maxc.float())
    rc, gc, bc = (((maxc - c).float() / span).double() for c in (r, g, b))
    hue = torch.where(r == maxc, (bc.float() - gc.float()).double(),
                      torch.where(g == maxc, (2.0 + rc) - bc, (4.0 + gc) - rc).float().double())
    hue = torch.fmod(hue / 6.0 + 1.0, 1.0).float().double()
    h = torch.trunc(hue * 255.0).clamp(0, 255)
    s = torch.trunc(saturation.double() * 255.0).clamp(0, 255)
    zero = torch.zeros_like(h)
    return torch.stack([torch.where(grey, zero, h), torch.where(grey, zero, s), maxc], 1)


def _round_half_away(x: torch.Tensor) -> torch.Tensor:
    """C's ``round``: halves away from zero (torch.round rounds them to even)."""
    whole = torch.trunc(x)
    return whole + torch.sign(x) * ((x - whole).abs() >= 0.5)


# which of (v, p, q, t) = (0, 1, 2, 3) makes R, G, B in each of the six hue sectors (Convert.c's switch)
_SECTORS = np.array([[0, 3, 1], [2, 0, 1], [1, 0, 3], [1, 2, 0], [3, 1, 0], [0, 1, 2]])


@functools.cache
def _sectors(device: torch.device) -> torch.Tensor:
    return on_device(_SECTORS, device)


def hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    """PIL's 8-bit HSV → RGB (libImaging/Convert.c ``hsv2rgb``)."""
    h, s, v = hsv.double().unbind(1)
    sector = torch.floor(h.float().double() * 6.0 / 255.0)
    f = (h.float().double() * 6.0 / 255.0 - sector.float().double()).float()
    fs = (s.float().double() / 255.0).float()
    vd = v.float().double()
    p = _round_half_away(vd * (1.0 - fs.double())).clamp(0, 255)
    q = _round_half_away(vd * (1.0 - (fs * f).double())).clamp(0, 255)
    t = _round_half_away(vd * (1.0 - fs.double() * (1.0 - f.double()))).clamp(0, 255)
    parts = torch.stack([v, p, q, t], 1)  # [B, 4, H, W]
    order = _sectors(hsv.device)[(sector.long() % 6)]  # [B, H, W, 3]
    rgb = torch.gather(parts, 1, order.permute(0, 3, 1, 2))
    return torch.where((s == 0)[:, None], v[:, None].expand_as(rgb), rgb)


def adjust_hue(images: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """torchvision's PIL ``adjust_hue``: 8-bit HSV, ``shift`` ``[B]`` added to H modulo 256, back to RGB."""
    hsv = rgb_to_hsv(images)
    hue = torch.remainder(hsv[:, 0] + shift.double()[:, None, None], 256)
    return hsv_to_rgb(torch.stack([hue, hsv[:, 1], hsv[:, 2]], 1))


def colour(images: torch.Tensor, factors: np.ndarray) -> torch.Tensor:
    """Brightness, contrast, saturation, hue in PIL's order (:func:`contract.views.replay_pil`), each applied to
    the samples whose factor is not the identity, on 8-bit images ``[B, 3, S, S]``. ``factors`` ``[B, 4]`` on the
    host (float32, as stored; PIL receives them as C floats too)."""
    device = images.device
    changed = factors != np.array([1, 1, 1, 0], np.float32)  # [B, 4]: which samples each operation touches
    alpha = [on_device(column, device) for column in factors.T]
    mask = [on_device(column, device)[:, None, None, None] for column in changed.T]
    images = images.double()
    if changed[:, 0].any():
        images = torch.where(mask[0], blend(torch.zeros_like(images), images, alpha[0]).double(), images)
    if changed[:, 1].any():
        images = torch.where(mask[1], adjust_contrast(images, alpha[1]).double(), images)
    if changed[:, 2].any():
        images = torch.where(mask[2], blend(luma(images).expand_as(images), images, alpha[2]).double(), images)
    if changed[:, 3].any():  # torchvision: np.int32(hue_factor * 255) in double, wrapped to uint8
        shift = (factors[:, 3].astype(np.float64) * 255).astype(np.int32).astype(np.uint8)
        images = torch.where(mask[3], adjust_hue(images, on_device(shift, device)), images)
    return images


def pixel_boxes(params: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Crop boxes ``[B, 4]`` in pixels as PIL receives them: the normalised box times the size in double, then
    float32 (PIL's ``resize`` parses its box as C floats)."""
    scale = np.concatenate([sizes, sizes], axis=1).astype(np.float64)  # (width, height, width, height)
    return (params[:, :4].astype(np.float64) * scale).astype(np.float32)


def replay_batch(images: torch.Tensor, sizes: np.ndarray, params: np.ndarray, out_size: int,
                 interpolation: str = "bilinear", engine: str = "fast") -> torch.Tensor:
    """Stored views ``params`` ``[B, P]`` of decoded images ``[B, C, H, W]`` uint8 (zero-padded past ``sizes``
    ``[B, 2]`` = (width, height); C = 1 for grey images) → uint8 ``[B, 3, out, out]`` on the images' device."""
    if interpolation not in FILTERS:
        raise ValueError(f"device replay supports {', '.join(FILTERS)}, not {interpolation!r}")
    if engine not in ENGINES:
        raise ValueError(f"unknown replay engine {engine!r}; known: {', '.join(ENGINES)}")
    exact, device = engine == "exact", images.device
    boxes = pixel_boxes(params, sizes)
    out = resize(images, sizes, boxes, out_size, interpolation, exact)
    flipped = params[:, _COLUMN["flip"]] >= 0.5
    if flipped.any():
        out = flip(out, on_device(flipped, device))
    if not exact:  # the one rounding of the fast engine: colour jitter takes 8-bit images, as in PIL
        out = torch.round(out.clamp_(0, 255))
    out = out.expand(-1, 3, -1, -1)  # PIL's convert("RGB") of a grey image repeats it
    factors = params[:, _COLUMN["brightness"]:_COLUMN["hue"] + 1].astype(np.float32)
    if (factors != np.array([1, 1, 1, 0], np.float32)).any():
        out = colour(out, factors)
    return out.to(torch.uint8)
