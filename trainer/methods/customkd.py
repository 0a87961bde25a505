"""``customkd``: CustomKD (Lee et al., CVPR 2025), see DESIGN §2.

Two stages alternate, customization first (one customization epoch every ``alternate_every``
KD epochs):

1. Customization — only θ^h_t trains, through the student's frozen, shared head θ^c_s:
   L_cus = CE(θ^c_s(θ^h_t(f_t)), y), y = labels + confident teacher-probe pseudo-labels
   (or labels only, or KL to the probe's softmax with ``customize_target=soft``).
2. Distillation — student and P_s train, θ^h_t frozen:
   L = L_task + λ_g · MSE(P_s(f_s), f_t) + λ_s · MSE(f_s, θ^h_t(f_t)).

Ablation: ``customize_head=random`` customizes through a fixed randomly initialised head.
θ^h_t, P_s and the random head are dropped after training.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trainer.methods.base import Method, MethodContext, StepInputs, task_loss
from trainer.methods.dkd import dkd_term


def make_customizer(kind: str, teacher_dim: int, student_dim: int) -> nn.Module:
    """θ^h_t: D → d_s, linear or a 2-layer MLP."""
    if kind == "linear":
        return nn.Linear(teacher_dim, student_dim)
    hidden = max(teacher_dim, student_dim)
    return nn.Sequential(nn.Linear(teacher_dim, hidden), nn.GELU(), nn.Linear(hidden, student_dim))


def customization_targets(labels: torch.Tensor, probe_logits: torch.Tensor, mode: str,
                          threshold: float) -> torch.Tensor:
    """Hard targets ``[B]`` (-1 = ignored): labels, plus probe pseudo-labels above ``threshold``."""
    if mode == "labels":
        return labels
    confidence, pseudo = F.softmax(probe_logits, dim=1).max(1)
    pseudo = torch.where(confidence >= threshold, pseudo, torch.full_like(pseudo, -1))
    return torch.where(labels >= 0, labels, pseudo)


class CustomKD(Method):
    customizes = True

    def __init__(self, ctx: MethodContext) -> None:
        super().__init__(ctx)
        self.customizer = make_customizer(ctx.config.customizer, ctx.teacher_dim, ctx.student_dim)
        self.projector = nn.Linear(ctx.student_dim, ctx.teacher_dim)
        self.random_head = None
        if ctx.config.customize_head == "random":
            self.random_head = nn.Linear(ctx.student_dim, ctx.num_classes).requires_grad_(False)

    def student_side_parameters(self) -> list[nn.Parameter]:
        return list(self.projector.parameters())

    def customization_loss(self, teacher_features: torch.Tensor, labels: torch.Tensor,
                           probe_logits: torch.Tensor, head: nn.Linear) -> dict:
        """L_cus for features ``[B, D]``; gradients reach θ^h_t only (the head is used detached)."""
        cfg = self.ctx.config
        head = self.random_head if self.random_head is not None else head
        logits = F.linear(self.customizer(teacher_features), head.weight.detach(), head.bias.detach())
        if cfg.customize_target == "soft":
            loss = F.kl_div(F.log_softmax(logits, 1), F.softmax(probe_logits, 1), reduction="batchmean")
            used = torch.ones_like(labels, dtype=torch.bool)
            targets = probe_logits.argmax(1)
        else:
            targets = customization_targets(labels, probe_logits, cfg.customize_target, cfg.pseudo_threshold)
            used = targets >= 0
            loss = F.cross_entropy(logits[used], targets[used]) if used.any() else logits.sum() * 0.0
        correct = (logits.argmax(1) == targets)[used].float().sum()
        return {"loss": loss, "correct": correct, "used": used.sum()}

    def forward(self, step: StepInputs) -> dict:
        cfg = self.ctx.config
        task = task_loss(step.logits, step.labels)
        general = F.mse_loss(self.projector(step.student_features), step.teacher_features)
        with torch.no_grad():
            customized = self.customizer(step.teacher_features)
        specific = F.mse_loss(step.student_features, customized)
        loss = task + cfg.lambda_general * general + cfg.lambda_specific * specific
        return {"loss": loss, "task": task, "general": general, "specific": specific}


class CustomKDWithDKD(CustomKD):
    """``customkd+dkd``: CustomKD plus the decoupled KD term on the teacher probe's logits."""

    def forward(self, step: StepInputs) -> dict:
        parts = super().forward(step)
        dkd = dkd_term(step, self.ctx.config)
        return {**parts, "loss": parts["loss"] + dkd, "dkd": dkd}
