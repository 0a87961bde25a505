"""``dkd``: Decoupled Knowledge Distillation (Zhao et al., CVPR 2022), on the teacher probe's logits.

With target class t (ground truth when labeled, the probe's argmax otherwise), binary
probabilities b = [p_t, 1 − p_t] and non-target distributions p̂ (softmax over classes ≠ t):
DKD = α · T² · KL(b_T ‖ b_S) + β · T² · KL(p̂_T ‖ p̂_S), scaled by min((epoch + 1) / warm-up, 1) (epoch 0-based: the first epoch already has 1/warm-up).
The term is registered (:func:`dkd`): ``dkd`` is the student's task loss plus it, ``customkd+dkd`` adds it to CustomKD's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from customkd.trainer.methods.base import BatchCounts, StepInputs, Term


def dkd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor,
             alpha: float, beta: float, temperature: float, counts: BatchCounts | None = None) -> torch.Tensor:
    """Decoupled KD for logits ``[B, C]`` and targets ``[B]``, divided by the global batch size."""
    counts = counts if counts is not None else BatchCounts(len(target), 0, len(target))
    gt = F.one_hot(target, student_logits.shape[1]).bool()
    p_s = F.softmax(student_logits / temperature, dim=1)
    p_t = F.softmax(teacher_logits / temperature, dim=1)
    b_s = torch.stack([(p_s * gt).sum(1), (p_s * ~gt).sum(1)], dim=1).clamp_min(1e-8)
    b_t = torch.stack([(p_t * gt).sum(1), (p_t * ~gt).sum(1)], dim=1).clamp_min(1e-8)
    tckd = counts.mean(F.kl_div(b_s.log(), b_t, reduction="sum")) * temperature**2
    log_q_s = F.log_softmax(student_logits / temperature - 1000.0 * gt, dim=1)
    q_t = F.softmax(teacher_logits / temperature - 1000.0 * gt, dim=1)
    nckd = counts.mean(F.kl_div(log_q_s, q_t, reduction="sum")) * temperature**2
    return alpha * tckd + beta * nckd


@dataclass(frozen=True)
class DKDParams:
    alpha: float  # α, weight of the target-class term (TCKD)
    beta: float  # β, weight of the non-target term (NCKD)
    temperature: float  # T, > 0 (the run's KD temperature)
    warmup: int  # epochs until full weight; <= 0: full weight from the start


def dkd_term(step: StepInputs, params: DKDParams) -> torch.Tensor:
    """The warmed-up DKD term against the teacher probe, targets = labels, else the probe's argmax."""
    target = torch.where(step.labels >= 0, step.labels, step.probe_logits.argmax(1))
    warmup = min((step.epoch + 1) / params.warmup, 1.0) if params.warmup > 0 else 1.0
    return warmup * dkd_loss(step.logits, step.probe_logits, target, params.alpha, params.beta, params.temperature,
                             step.counts)


def dkd(params: DKDParams) -> Term:
    """The DKD term at weight 1 (α and β weigh its two parts; the warm-up scales it)."""
    return Term("dkd", lambda step: dkd_term(step, params), 1.0, params)
