"""Where the trainer reads cached teacher features from: RAM when they fit, shard blocks otherwise.

Both sources answer ``source[rows, views] -> [B, D]`` like a NumPy array, so the training loop
does not care which one it has. Streaming keeps a small LRU of whole shard blocks and pairs with
:func:`block_shuffle`, which visits shards in random order and rows within a shard in random
order, so consecutive batches hit the same block.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable

import numpy as np

from customkd.common.errors import UserError
from customkd.contract.schema import Layout
from customkd.contract.values import INVALID_WITH_FEATURES

log = logging.getLogger(__name__)
FEATURE_MODES = ("auto", "ram", "stream")


def available_memory() -> int:
    """Bytes of MemAvailable (Linux), or a conservative 4 GiB elsewhere."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 * 2**30


class ShardedFeatures:
    """Read-only view of the store's ``features`` array, loaded one shard block at a time."""

    def __init__(self, array, shard_size: int, valid: np.ndarray, cache_blocks: int = 4,
                 still_same: Callable[[], None] | None = None) -> None:
        self.array, self.shard_size, self.valid = array, shard_size, valid
        self.still_same = still_same  # raises when the store was replaced since it was opened
        self.shape, self.dtype = tuple(array.shape), np.float16
        self.layout = Layout(*self.shape, n_params=0, shard_size=shard_size)  # the views array is not read here
        self.cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self.cache_blocks = cache_blocks
        self.blocks_read = 0

    def block(self, shard: int) -> np.ndarray:
        """Features ``[S, V, D]`` of one shard (LRU-cached)."""
        if shard in self.cache:
            self.cache.move_to_end(shard)
            return self.cache[shard]
        rows = self.layout.shard_rows(shard)
        try:
            block = np.asarray(self.array[rows])
        except Exception as exc:  # noqa: BLE001 - checksum failures surface as codec errors
            raise UserError(f"feature shard {shard} is damaged ({type(exc).__name__}); run `customkd cache verify`") from None
        if self.still_same is not None:  # after the read: the block belongs to the store that was checked
            self.still_same()
        if not np.isfinite(block[self.valid[rows]]).all():
            raise UserError(f"feature shard {shard} has non-finite (NaN: unwritten, or inf) features; run "
                            "`customkd cache verify`")
        if not np.isnan(block[~self.valid[rows]]).all():
            raise UserError(f"feature shard {shard} {INVALID_WITH_FEATURES}; run `customkd cache verify`")
        self.blocks_read += 1
        self.cache[shard] = block
        if len(self.cache) > self.cache_blocks:
            self.cache.popitem(last=False)
        return block

    def __getitem__(self, index) -> np.ndarray:
        rows, views = index
        rows = np.asarray(rows)
        views = np.broadcast_to(np.asarray(views), rows.shape)
        out = np.empty((*rows.shape, self.shape[-1]), dtype=self.dtype)
        shards = self.layout.shard_of(rows)
        for shard in np.unique(shards):
            pick = shards == shard
            out[pick] = self.block(int(shard))[rows[pick] - self.layout.shard_rows(int(shard)).start, views[pick]]
        return out


class ConcatFeatures:
    """Several teachers' streamed features side by side: ``source[rows, views] -> [B, D_1 + D_2 + …]`` (an
    ensemble read by shard blocks, each teacher's from its own array)."""

    def __init__(self, parts: list[ShardedFeatures]) -> None:
        self.parts = parts
        self.shape = (*parts[0].shape[:2], sum(part.shape[-1] for part in parts))
        self.dtype = np.float16

    @property
    def blocks_read(self) -> int:
        return sum(part.blocks_read for part in self.parts)

    def __getitem__(self, index) -> np.ndarray:
        return np.concatenate([part[index] for part in self.parts], axis=-1)


def open_features(group, arrays: list[str], mode: str, shard_size: int, valid: np.ndarray,
                  still_same: Callable[[], None] | None = None):
    """The features of the store's arrays ``arrays`` (one per chosen teacher), concatenated along D in that
    order: ``np.ndarray`` in RAM, or streamed by shard blocks (:class:`ShardedFeatures`, :class:`ConcatFeatures`
    for several) when asked or when RAM is short.

    ``still_same`` (streaming) is called after each shard block is read and raises if the store
    was replaced meanwhile."""
    if mode not in FEATURE_MODES:
        raise UserError(f"unknown --features {mode!r}; known: {', '.join(FEATURE_MODES)}")
    stored = [group[name] for name in arrays]
    nbytes = sum(int(np.prod(array.shape)) * 2 for array in stored)
    if mode == "auto":
        mode = "ram" if nbytes < available_memory() // 2 else "stream"
    log.info("teacher features: %.1f MiB, read %s", nbytes / 2**20, "from RAM" if mode == "ram" else "by shard blocks")
    if mode == "stream":
        parts = [ShardedFeatures(array, shard_size, valid, still_same=still_same) for array in stored]
        return parts[0] if len(parts) == 1 else ConcatFeatures(parts)
    try:
        features = np.concatenate([np.asarray(array[:]) for array in stored], axis=-1)
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"the cache is damaged ({type(exc).__name__}); run `customkd cache verify` to locate the "
                        "shard, then re-extract") from None
    if not np.isfinite(features[valid]).all():
        raise UserError("the cache has non-finite (NaN: unwritten, or inf) features; run `customkd cache verify` "
                        "and re-extract")
    if not np.isnan(features[~valid]).all():
        raise UserError(f"the cache {INVALID_WITH_FEATURES}; run `customkd cache verify` and re-extract")
    return features


def block_shuffle(rows: np.ndarray, shard_size: int, epoch: int, seed: int) -> np.ndarray:
    """Positions into ``rows``: shards in random order, rows shuffled within each shard."""
    rng = np.random.default_rng([seed, epoch, 5])
    shards = rows // shard_size
    order = []
    for shard in rng.permutation(np.unique(shards)):
        members = np.flatnonzero(shards == shard)
        order.append(members[rng.permutation(len(members))])
    return np.concatenate(order) if order else np.zeros(0, dtype=np.int64)


def feature_stats(source, rows: np.ndarray, n_views: int, block_rows: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and std ``[D]`` over every view of ``rows``, in one blockwise pass."""
    total, total_sq, count = None, None, 0
    for start in range(0, len(rows), block_rows):
        chunk = np.sort(rows[start : start + block_rows])
        for view in range(n_views):
            f = source[chunk, np.full(len(chunk), view)].astype(np.float64)
            total = f.sum(0) if total is None else total + f.sum(0)
            total_sq = (f * f).sum(0) if total_sq is None else total_sq + (f * f).sum(0)
            count += len(f)
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean * mean, 0.0))
    return mean.astype(np.float32), std.astype(np.float32)
