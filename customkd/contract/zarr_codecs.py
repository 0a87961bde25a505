"""A store's zstd chunks decode into exactly their chunk's bytes, never more.

A zstd frame of a few kilobytes can stand for gigabytes (a run of zeros compresses about 32 000 to 1), and zarr's
own zstd codec decodes whatever a frame holds before it checks the size against the chunk; object sizes bound the
compressed bytes only. :class:`BoundedZstdCodec` reads the frame's declared content size first and decodes into a
buffer of the chunk's size: a frame declaring another size, none, or holding more is refused after at most the
chunk's bytes were written. :func:`use_bounded_zstd` makes it the codec zarr resolves ``zstd`` to; the store module
calls it before opening or creating any group. Encoding is zarr's own, unchanged.
"""

from __future__ import annotations

import math

import numpy as np
from zarr.codecs import ZstdCodec
from zarr.core.array_spec import ArraySpec
from zarr.core.buffer import Buffer

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_DICT_ID_BYTES = (0, 1, 2, 4)
_CONTENT_SIZE_BYTES = (0, 2, 4, 8)  # by the descriptor's top two bits; 0 with the single-segment flag is 1 byte


class ZstdFrameError(ValueError):
    """A chunk that is no zstd frame of its chunk's size."""


def frame_content_size(frame: bytes) -> int | None:
    """The decoded size a zstd frame's header declares (RFC 8878 §3.1.1.1), or None when it declares none."""
    if frame[:4] != ZSTD_MAGIC or len(frame) < 6:
        raise ZstdFrameError("not a zstd frame")
    descriptor = frame[4]
    single_segment = bool(descriptor & 0x20)
    start = 5 + (not single_segment) + _DICT_ID_BYTES[descriptor & 0x03]
    width = _CONTENT_SIZE_BYTES[descriptor >> 6] or (1 if single_segment else 0)
    if not width:
        return None
    if len(frame) < start + width:
        raise ZstdFrameError("a zstd frame header cut short")
    value = int.from_bytes(frame[start:start + width], "little")
    return value + 256 if width == 2 else value


class BoundedZstdCodec(ZstdCodec):
    """zarr's ``zstd`` codec whose decoding writes at most the chunk's bytes (``shape`` x item size)."""

    def _decode_sync(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> Buffer:
        nbytes = math.prod(chunk_spec.shape) * chunk_spec.dtype.to_native_dtype().itemsize
        frame = chunk_bytes.as_numpy_array().tobytes()
        declared = frame_content_size(frame)
        if declared != nbytes:
            raise ZstdFrameError(f"a zstd frame declaring {declared} bytes for a chunk of {nbytes}")
        out = np.empty(nbytes, dtype=np.uint8)
        self._zstd_codec.decode(frame, out=out)  # more than ``out`` holds (a second frame) raises
        return chunk_spec.prototype.buffer.from_bytes(out)


def use_bounded_zstd() -> None:
    """Make zarr resolve the ``zstd`` codec of any array metadata it parses to :class:`BoundedZstdCodec`."""
    import zarr
    from zarr.registry import register_codec

    name = f"{BoundedZstdCodec.__module__}.{BoundedZstdCodec.__qualname__}"
    if zarr.config.get("codecs.zstd") != name:
        register_codec("zstd", BoundedZstdCodec)
        zarr.config.set({"codecs.zstd": name})
