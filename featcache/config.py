"""The extract process's configuration: one frozen dataclass, validated on construction.

Light on imports (no torch) so the command line reads its defaults and choices from here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from common.errors import UserError
from featcache.schema import MAX_SHARD_ROWS, MAX_VIEWS
from featcache.views import ViewRecipe

PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # auto: bf16 autocast on a GPU, fp32 on CPU


@dataclass(frozen=True)
class ExtractConfig:
    teacher: str = "efficientnet_lite0"
    data: str = "elpv"
    unlabeled: tuple[str, ...] = ()  # folders of images nobody labeled: folder:PATH or NAME=folder:PATH
    out: str = "caches/elpv-efficientnet_lite0.zarr"
    views: int = 4
    batch_size: int = 32
    workers: int = 2
    device: str = "auto"
    seed: int = 0
    weights: str | None = None
    teacher_size: int | None = None  # None: the teacher entry's default size
    tap: str | None = None  # None: the teacher entry's default feature tap
    precision: str = "auto"
    shard_size: int = 256
    chunk_size: int = 16
    compress: bool = False
    overwrite: bool = False
    skip_bad: bool = False
    recipe: ViewRecipe = field(default_factory=ViewRecipe)

    def __post_init__(self) -> None:
        if not 1 <= self.views <= MAX_VIEWS:
            raise UserError(f"--views must be between 1 and {MAX_VIEWS} (view 0 is the centre view), got {self.views}")
        if not 0 <= self.seed < 2**32:  # the same range as distill's --seed
            raise UserError(f"--seed must be >= 0 and < 2**32 (4294967296), got {self.seed}")
        if self.batch_size < 1:
            raise UserError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.workers < 0:
            raise UserError(f"--workers must be >= 0, got {self.workers}")
        if self.precision not in PRECISIONS:
            raise UserError(f"unknown --precision {self.precision!r}; known: {', '.join(PRECISIONS)}")
        for flag, rows in (("--shard-size", self.shard_size), ("--chunk-size", self.chunk_size)):
            if not 1 <= rows <= MAX_SHARD_ROWS:  # a reader holds a whole shard of rows at once
                raise UserError(f"{flag} must be between 1 and {MAX_SHARD_ROWS} samples, got {rows}")
        if self.shard_size > self.chunk_size and self.shard_size % self.chunk_size:
            raise UserError(f"--shard-size ({self.shard_size}) must be a multiple of --chunk-size ({self.chunk_size})")
