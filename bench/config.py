"""What the benchmark runs: one frozen dataclass, with profiles for CPU, CUDA and a quick smoke run."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

RESULTS_DIR = Path("bench/results")
DOCS_PATH = Path("docs/benchmarks.md")


@dataclass(frozen=True)
class BenchConfig:
    """Sizes of every section. Times are medians of ``repeats`` timed runs after one warm-up."""

    device: str = "cpu"
    teacher: str = "timm:vit_small_patch16_224"  # a ViT whose forward dominates extraction (random weights)
    add_teacher: str = "timm:deit_tiny_patch16_224"  # added to the extracted store with `extract --into`
    student: str = "mobilenetv3"
    image_size: int = 128  # student resolution (docs/benchmarks.md was measured at 128; `make distill` uses 96)
    batch_size: int = 64  # student batch, the default of `make distill`
    n_images: int = 96  # generated JPEG dataset: extracted (192 teacher images per repetition), then trained on
    views: int = 2  # views per sample in the extracted store (view 0 = centre view)
    extract_batch: int = 32  # teacher batch in images, the default of `make extract`
    workers: int = 2  # DataLoader workers, the default of both processes
    train_samples: int = 448  # samples per timed epoch (student, cached KD): 6 timed steps each
    online_samples: int = 192  # samples per timed epoch with the teacher online
    repeats: int = 3  # timed extraction repetitions (and store-read repetitions)
    train_rounds: int = 4  # interleaved training rounds
    store_rows: int = 2624  # synthetic store for read/storage metrics: the embedded default's N …
    store_views: int = 4  # … and V …
    store_dim: int = 1024  # … at the D of a ViT-L teacher (docs/design.md §4: 2 KiB per view)
    random_reads: int = 400  # single-row reads timed per repetition
    overhead_epochs: int = 3  # epochs per loader mode (fresh / persistent workers); epoch 1 is not measured …
    overhead_samples: int = 2048  # … of this many (row, view) samples: the embedded default's 2,099 rows, 32 steps
    size_teacher: str = "dinov2_vits"  # teacher_size_cost_ratio: forward at its default vs its native size …
    size_pair: tuple[int, int] | None = None  # … or at these (default, native) sizes
    size_batch: int = 4  # images per timed teacher forward
    size_rounds: int = 3  # interleaved timed forwards per size
    quick: bool = False

    def __post_init__(self) -> None:
        if min(self.repeats, self.train_rounds, self.views, self.size_rounds, self.size_batch) < 1 or self.n_images < 8:
            raise ValueError("repeats, train_rounds, views, size_rounds, size_batch >= 1 and n_images >= 8 are needed")
        if self.overhead_epochs < 2 or self.overhead_samples < 4 * self.batch_size:
            raise ValueError("overhead_epochs >= 2 (the first epoch starts the workers in both modes) and "
                             "overhead_samples >= 4 batches are needed")
        if min(self.train_samples, self.online_samples) < 2 * self.batch_size:
            raise ValueError("timed epochs need at least two full batches (the first step is timed apart)")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


CPU = BenchConfig()
CUDA = BenchConfig(device="cuda", teacher="dinov2_vitb", add_teacher="dinov2_vits", image_size=224, n_images=512, views=4, extract_batch=128,
                   workers=8, train_samples=2048, online_samples=1024, repeats=3, train_rounds=5,
                   size_teacher="dinov2_vitb", size_batch=128, size_rounds=5, overhead_samples=2048)
QUICK = BenchConfig(teacher="timm:test_vit", add_teacher="timm:test_efficientnet", student="test_efficientnet", image_size=32, batch_size=8, n_images=16,
                    views=2, extract_batch=8, workers=0, train_samples=16, online_samples=16, repeats=1, train_rounds=1,
                    store_rows=64, store_views=2, store_dim=64, random_reads=20, overhead_epochs=2, overhead_samples=32,
                    size_teacher="timm:test_vit", size_pair=(32, 64), size_rounds=1, quick=True)


def profile(device: str, quick: bool, **overrides) -> BenchConfig:
    """The sizes for a device (``cpu`` or ``cuda[:N]``), optionally the tiny smoke-test sizes."""
    base = QUICK if quick else (CUDA if device.startswith("cuda") else CPU)
    values = {k: v for k, v in overrides.items() if v is not None}
    return dataclasses.replace(base, device=device, **values)
