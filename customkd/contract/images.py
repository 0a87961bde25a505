"""Reading one image file, the same way for extraction, replay, ``evaluate`` and ``predict``: bounded in bytes
before it is read and in pixels before it is decoded, and 8 bits per channel."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image

# What reading an image raises for a file that is no image customkd decodes: truncated, foreign, larger than
# MAX_IMAGE_BYTES, or claiming more than Image.MAX_IMAGE_PIXELS (a decompression bomb: PIL itself refuses only
# twice that and decodes the range in between with a warning; :func:`decode_image` refuses it too)
IMAGE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning)
MAX_IMAGE_BYTES = 1 << 30  # an image within the pixel limit needs less, even uncompressed at 8 bytes a pixel


def read_image_bytes(path: Path) -> bytes:
    """A file's bytes, refused (a ValueError, one of :data:`IMAGE_ERRORS`) before it is read when it holds more
    than any image customkd decodes may: a sparse or runaway file never fills the memory."""
    size = path.stat().st_size
    if size > MAX_IMAGE_BYTES:
        raise ValueError(f"{size} bytes, more than an image may hold ({MAX_IMAGE_BYTES >> 20} MiB)")
    return path.read_bytes()


def decode_image(source) -> Image.Image:
    """The decoded image of a file or file object, 8 bits per channel (:func:`to_8bit`). An image claiming more
    than ``Image.MAX_IMAGE_PIXELS`` raises before its pixels are decoded, the same everywhere (extraction, replay,
    evaluate, predict): PIL would decode those up to twice the limit, gigabytes for a few bytes of file."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(source)
        except (Image.DecompressionBombWarning, Image.DecompressionBombError):
            raise Image.DecompressionBombError(f"more than {Image.MAX_IMAGE_PIXELS} pixels, a decompression bomb "
                                               "or an image to downscale first") from None
    try:
        image.load()
    except BaseException:
        image.close()
        raise
    return to_8bit(image)


def to_8bit(image: Image.Image) -> Image.Image:
    """16-bit integer images scaled to 8 bits (PIL's RGB conversion would clip them at 255).

    16-bit PNGs open as ``I;16*`` or ``I`` with values 0..65535; scaling by 1/257 maps that range
    onto 0..255 the way an 8-bit export of the same image would. A floating-point image (mode ``F``) or a 32-bit
    one holding values outside 0..65535 has no range to scale from: it is refused as a bad image (ValueError),
    where PIL's conversion would clip it to white or black."""
    if image.mode == "F":
        raise ValueError("a floating-point image (mode F) has no known range of values; save it with 8 or 16 bits "
                         "per channel")
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        values = np.asarray(image, dtype=np.float64)
        if image.mode == "I" and values.size and (values.min() < 0 or values.max() > 65535):
            raise ValueError("a 32-bit image with values outside 0..65535; save it with 8 or 16 bits per channel")
        return Image.fromarray(np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8), mode="L")
    return image
