"""What every method gets and returns. A method is an ``nn.Module`` holding its own adapters.

Every loss term is a *sum* over the samples it concerns divided by that kind's count in the
**global** batch (:class:`BatchCounts`), never by a per-rank count. Under torchrun each rank holds
a slice of the global batch; with global denominators, DDP's gradient average over ranks equals the
single-process gradient of the whole global batch for every term, however the labeled and
unlabeled samples fall across ranks (docs/design.md §10).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
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
    def of(cls, labels: np.ndarray | torch.Tensor) -> BatchCounts:
        """Counts of a batch that is the whole global batch (one process). Give the host's labels (a numpy array):
        counting labels on a GPU waits for it."""
        host = labels.cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
        labeled = int(np.count_nonzero(host >= 0))
        return cls(len(host), labeled, len(host) - labeled)

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
    """Cross-entropy over the labeled samples, divided by the global number of labeled samples.

    Unlabeled samples (label -1) drop out through ``ignore_index``, not a boolean mask: selecting rows by a
    mask, or asking whether any row is labeled, makes the host wait for the GPU. The count comes from the host."""
    counts = counts if counts is not None else BatchCounts.of(labels)
    return counts.mean(F.cross_entropy(logits, labels, ignore_index=-1, reduction="sum"), "labeled")


def feature_mse(prediction: torch.Tensor, target: torch.Tensor, counts: BatchCounts) -> torch.Tensor:
    """MSE over ``[B, K]`` features: mean over K, sum over samples, global mean over the batch."""
    return counts.mean((prediction - target).square().mean(1).sum())


@dataclass(frozen=True)
class Term:
    """A registered loss term without modules of its own (on the student's and the teacher probe's logits),
    added to a method's loss as ``weight · value(step)`` and logged under ``name``."""

    name: str
    value: Callable[[StepInputs], torch.Tensor]
    weight: float
    params: object  # the term's own frozen params (KDParams, DKDParams)


@dataclass(frozen=True)
class EpochContext:
    """What a method's epoch stage (:meth:`Method.epoch_stage`) may use: this epoch's cached (row, view) pairs,
    read by position, and the frozen pieces around them. T positions, D teacher dimensions."""

    epoch: int  # 0-based KD epoch the stage runs before
    seed: int  # the run's seed
    head: nn.Linear  # θ^c_s, the student's head (read, never trained by a stage)
    features: object  # positions [B] -> normalised teacher features [B, D] on the device
    labels: torch.Tensor  # [T] each position's label, -1 = none, on the device
    probe: nn.Linear  # θ^c_t, frozen
    batch_size: int
    block_local: bool  # the features stream from the store: visit positions in order


class Method(nn.Module):
    """A method: the modules it trains beside the student, its own loss parts (:meth:`own_parts`) and the
    registered :class:`Term` s it adds (``kd`` and ``dkd`` terms on logits), one weighted sum.
    ``forward(StepInputs) -> {"loss": total, <named parts>}``; ``params`` is the method's own frozen params
    dataclass (built from the run's config by ``trainer.methods.method_params``).

    Its protocol beyond the KD step is its own too: :meth:`epoch_stage` runs before a KD epoch (the trainer
    then makes the method equal rank 0's on every rank), :meth:`optimizer_states` travel in the checkpoint,
    and :meth:`epoch_metrics` derives logged statistics from an epoch's mean loss parts."""

    customizes = False  # declares θ^h_t: the report reads the customized feature of such methods
    params: object  # each method narrows it to its own params class
    stage_name = "stage"  # the epoch record's key for what epoch_stage returns

    def __init__(self, dims: MethodDims, params: object, terms: tuple[Term, ...] = ()) -> None:
        super().__init__()
        self.dims = dims
        self.params = params
        self.terms = terms

    def own_parts(self, step: StepInputs) -> dict:
        """``{"loss": L_task + this method's own weighted terms, <named parts>}``."""
        task = task_loss(step.logits, step.labels, step.counts)
        return {"loss": task, "task": task}

    def forward(self, step: StepInputs) -> dict:
        parts = self.own_parts(step)
        for term in self.terms:
            value = term.value(step)
            parts[term.name] = value
            parts["loss"] = parts["loss"] + term.weight * value
        return parts

    def student_side_parameters(self) -> list[nn.Parameter]:
        """Adapters trained with the student (projectors), by the student's optimiser."""
        return list(self.parameters())

    def epoch_stage(self, ctx: EpochContext) -> dict | None:
        """Work before KD epoch ``ctx.epoch`` outside the KD step; its record, or None when nothing ran."""
        return None

    def optimizer_states(self) -> dict:
        """The state of optimisers the method keeps for itself, for the checkpoint."""
        return {}

    def load_optimizer_states(self, states: dict) -> None:
        """Restore what :meth:`optimizer_states` returned."""

    def epoch_metrics(self, means: dict) -> dict:
        """Statistics derived from an epoch's mean loss parts (reduced over ranks), logged beside them."""
        return {}
