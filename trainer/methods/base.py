"""What every method gets and returns. A method is an ``nn.Module`` holding its own adapters.

Every loss term is a *sum* over the samples it concerns divided by that kind's count in the
**global** batch (:class:`BatchCounts`), never by a per-rank count. Under torchrun each rank holds
a slice of the global batch; with global denominators, DDP's gradient average over ranks equals the
single-process gradient of the whole global batch for every term, however the labeled and
unlabeled samples fall across ranks (docs/design.md §10).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class BatchCounts:
    """Denominators of one global batch: all samples, labeled ones, unlabeled ones.

    ``world`` is the number of ranks sharing it: each rank's term is multiplied by it because DDP
    averages gradients over ranks. ``active = False`` marks a rank's zero-weight filler step."""

    samples: int
    labeled: int
    unlabeled: int
    world: int = 1
    active: bool = True

    @classmethod
    def of(cls, labels: torch.Tensor) -> BatchCounts:
        """Counts of a batch that is the whole global batch (one process)."""
        labeled = int((labels >= 0).sum())
        return cls(len(labels), labeled, len(labels) - labeled)

    def mean(self, total: torch.Tensor, kind: str = "samples") -> torch.Tensor:
        """``total`` (a sum over this rank's samples of ``kind``) as this rank's share of the global mean."""
        count = getattr(self, kind)
        if not self.active or count == 0:
            return total * 0.0
        return total * (self.world / count)


@dataclass(frozen=True)
class MethodDims:
    """The two feature spaces a method connects. Its loss weights and options are its own params
    (one frozen dataclass per method, beside its formula), never the run's whole config."""

    teacher_dim: int  # D
    student_dim: int  # d_s
    num_classes: int  # C
    # The student's output activation (e.g. Hardswish for MobileNetV3): f_s lies in its range, so
    # the customized target does too (see trainer.feature_range). Identity when f_s is unbounded.
    student_activation: nn.Module = field(default_factory=nn.Identity)


@dataclass
class StepInputs:
    """One KD step. Shapes: B samples, D teacher dims, d_s student dims, C classes."""

    student_features: torch.Tensor  # f_s [B, d_s]
    logits: torch.Tensor  # θ^c_s(f_s) [B, C]
    labels: torch.Tensor  # [B], -1 = unlabeled
    teacher_features: torch.Tensor  # f_t [B, D], normalised
    probe_logits: torch.Tensor  # θ^c_t(f_t) [B, C]
    epoch: int
    counts: BatchCounts | None = None  # global-batch denominators; None = this batch is the global batch
    head_weight: torch.Tensor | None = None  # θ^c_s's weight [C, d_s]; CustomKD reads the space L_cus determines

    def __post_init__(self) -> None:
        if self.counts is None:
            self.counts = BatchCounts.of(self.labels)


def task_loss(logits: torch.Tensor, labels: torch.Tensor, counts: BatchCounts | None = None) -> torch.Tensor:
    """Cross-entropy over the labeled samples, divided by the global number of labeled samples."""
    counts = counts if counts is not None else BatchCounts.of(labels)
    labeled = labels >= 0
    if not labeled.any():
        return counts.mean(logits.sum() * 0.0, "labeled")
    return counts.mean(F.cross_entropy(logits[labeled], labels[labeled], reduction="sum"), "labeled")


def feature_mse(prediction: torch.Tensor, target: torch.Tensor, counts: BatchCounts) -> torch.Tensor:
    """MSE over ``[B, K]`` features: mean over K, sum over samples, global mean over the batch."""
    return counts.mean((prediction - target).square().mean(1).sum())


class Method(nn.Module):
    """Base: ``forward(StepInputs) -> {"loss": total, <named parts>}``; ``params`` is the method's own
    frozen params dataclass (built from the run's config by ``trainer.methods.method_params``)."""

    uses_teacher = True
    customizes = False

    params: object  # each method narrows it to its own params class

    def __init__(self, dims: MethodDims, params: object) -> None:
        super().__init__()
        self.dims = dims
        self.params = params

    def student_side_parameters(self) -> list[nn.Parameter]:
        """Adapters trained with the student (projectors); excludes the customizer."""
        return list(self.parameters())
