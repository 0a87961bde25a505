"""The extract process's configuration: one frozen dataclass, validated on construction.

Each field is declared once, with its help text (:func:`common.options.option`): ``customkd extract``'s options
and the keys of ``--config`` files are derived from it. Light on imports (no torch) so the command line reads
its defaults and choices from here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from customkd.common.errors import UserError
from customkd.common.options import check_workers, option
from customkd.contract.schema import MAX_SHARD_ROWS, MAX_VIEWS
from customkd.contract.views import ViewRecipe

PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # auto: bf16 autocast on a GPU, fp32 on CPU
TEACHER_SIZES = (16, 2048)  # px: the smallest and largest --teacher-size


@dataclass(frozen=True)
class ExtractConfig:
    teacher: str = option(
        "efficientnet_lite0", "Teacher name (see `customkd teachers`), timm:<model> or open_clip:<arch>:<tag>.")
    data: str = option("elpv", "Dataset: elpv, digits, folder:PATH or cifar100:PATH.")
    unlabeled: tuple[str, ...] = option(
        (), "Images nobody labeled, stored beside the dataset with label -1: folder:PATH (a flat folder or any "
        "tree) or NAME=folder:PATH to name their domain; repeatable.", repeatable=True)
    out: str = option(
        "caches/elpv-efficientnet_lite0.zarr", "Store path (a .zarr directory) or URL (s3://, gs://, file://).")
    views: int = option(4, "Views per sample; view 0 is the centre view.")
    batch_size: int = option(32, "Teacher batch size in images.", aliases=("-b",))
    workers: int = option(2, "DataLoader workers for decoding and view replay.", aliases=("-j",))
    device: str = option("auto", "auto, cpu, cuda, cuda:N.")
    seed: int = option(0, "Base seed of the view parameters.")
    weights: str | None = option(
        None, "Local weights: a .safetensors/.pth file (timm, Meta DINOv2/v3, OpenCLIP full or visual-only) or a "
        "Hugging Face model folder; 'random' for random init.")
    teacher_size: int | None = option(
        None, "Teacher input size in px (default: the entry's, see `customkd teachers`; position embeddings are "
        "resampled).")
    tap: str | None = option(
        None, "Teacher feature: cls, mean, cls+mean (ViTs), pooled (CNNs, timm's own pooling) or embed "
        "(CLIP/SigLIP/PE); default per entry.")
    precision: str = option("auto", "auto (bf16 autocast on GPU, fp32 on CPU), fp32, bf16 or fp16.", choices=PRECISIONS)
    shard_size: int = option(256, "Samples per shard (unit of writing and resume).")
    chunk_size: int = option(16, "Samples per inner chunk (unit of reading).")
    compress: bool = option(False, "Zstd-compress chunks (fp16 features barely compress).")
    overwrite: bool = option(False, "Replace an existing store built with a different fingerprint.")
    into: str | None = option(
        None, "Add --teacher to this complete store (path or URL) by replaying its recorded views; the store's "
        "dataset, views, seed and layout are used (--out, --data, --views, --seed and the shard options are not).")
    overwrite_teacher: bool = option(
        False, "With --into: compute again a teacher the store already has (e.g. at another --tap or --teacher-size); "
        "only that teacher's arrays are replaced.")
    skip_bad: bool = option(False, "Record unreadable images as invalid samples instead of stopping.")
    recipe: ViewRecipe = field(default_factory=ViewRecipe)  # the command line sets two of its fields

    def __post_init__(self) -> None:
        if not 1 <= self.views <= MAX_VIEWS:
            raise UserError(f"--views must be between 1 and {MAX_VIEWS} (view 0 is the centre view), got {self.views}")
        if not 0 <= self.seed < 2**32:  # the same range as distill's --seed
            raise UserError(f"--seed must be >= 0 and < 2**32 (4294967296), got {self.seed}")
        if self.teacher_size is not None and not TEACHER_SIZES[0] <= self.teacher_size <= TEACHER_SIZES[1]:
            raise UserError(f"--teacher-size must be between {TEACHER_SIZES[0]} and {TEACHER_SIZES[1]} px (leave it out "
                            f"for the teacher's own), got {self.teacher_size}")
        if self.batch_size < 1:
            raise UserError(f"--batch-size must be >= 1, got {self.batch_size}")
        check_workers(self.workers)
        if self.precision not in PRECISIONS:
            raise UserError(f"unknown --precision {self.precision!r}; known: {', '.join(PRECISIONS)}")
        for flag, rows in (("--shard-size", self.shard_size), ("--chunk-size", self.chunk_size)):
            if not 1 <= rows <= MAX_SHARD_ROWS:  # a reader holds a whole shard of rows at once
                raise UserError(f"{flag} must be between 1 and {MAX_SHARD_ROWS} samples, got {rows}")
        if self.overwrite_teacher and self.into is None:
            raise UserError("--overwrite-teacher redoes a teacher of a store given with --into STORE; pass --into, or "
                            "--overwrite to replace a whole store")
        if self.shard_size > self.chunk_size and self.shard_size % self.chunk_size:
            raise UserError(f"--shard-size ({self.shard_size}) must be a multiple of --chunk-size ({self.chunk_size})")
