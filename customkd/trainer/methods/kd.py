"""``kd``: Hinton et al., "Distilling the Knowledge in a Neural Network" (2015).

The teacher's logits are the teacher probe's θ^c_t(f_t) on the cached feature of the same view:
L = L_task + w · T² · KL(softmax(z_t / T) ‖ softmax(z_s / T)), over every sample. The term is registered
(:func:`kd_term`): ``kd`` is the student's task loss plus it, ``kd+fitnet`` and ``customkd+kd`` add it to theirs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from customkd.trainer.methods.base import BatchCounts, StepInputs, Term


def soft_target_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
                     counts: BatchCounts | None = None) -> torch.Tensor:
    """T² · KL(p_t ‖ p_s), summed over the samples and divided by the global batch size."""
    counts = counts if counts is not None else BatchCounts(len(student_logits), 0, len(student_logits))
    log_p_s = F.log_softmax(student_logits / temperature, dim=1)
    p_t = F.softmax(teacher_logits / temperature, dim=1)
    return counts.mean(F.kl_div(log_p_s, p_t, reduction="sum")) * temperature**2


@dataclass(frozen=True)
class KDParams:
    temperature: float  # T, > 0
    weight: float  # w, the weight of the KD term


def kd_term(params: KDParams) -> Term:
    """Hinton's soft-target term against the teacher probe, weighted ``w``."""

    def value(step: StepInputs) -> torch.Tensor:
        return soft_target_loss(step.logits, step.probe_logits, params.temperature, step.counts)

    return Term("kd", value, params.weight, params)
