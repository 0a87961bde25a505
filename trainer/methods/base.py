"""What every method gets and returns. A method is an ``nn.Module`` holding its own adapters."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from trainer.config import DistillConfig


@dataclass(frozen=True)
class MethodContext:
    teacher_dim: int  # D
    student_dim: int  # d_s
    num_classes: int  # C
    config: DistillConfig


@dataclass
class StepInputs:
    """One KD step. Shapes: B samples, D teacher dims, d_s student dims, C classes."""

    student_features: torch.Tensor  # f_s [B, d_s]
    logits: torch.Tensor  # θ^c_s(f_s) [B, C]
    labels: torch.Tensor  # [B], -1 = unlabeled
    teacher_features: torch.Tensor  # f_t [B, D], normalised
    probe_logits: torch.Tensor  # θ^c_t(f_t) [B, C]
    epoch: int


def task_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the labeled samples of the batch (0 when there are none)."""
    labeled = labels >= 0
    if not labeled.any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits[labeled], labels[labeled])


class Method(nn.Module):
    """Base: ``forward(StepInputs) -> {"loss": total, <named parts>}``."""

    uses_teacher = True
    customizes = False

    def __init__(self, ctx: MethodContext) -> None:
        super().__init__()
        self.ctx = ctx

    def student_side_parameters(self) -> list[nn.Parameter]:
        """Adapters trained with the student (projectors); excludes the customizer."""
        return list(self.parameters())
