"""``customkd``: CustomKD (Lee et al., CVPR 2025), see docs/design.md §2 and §10.

Two stages alternate, customization first once the head means something (one customization epoch
before every ``alternate_every``-th KD epoch, starting after ``customize_warmup`` KD epochs):

1. Customization — only θ^h_t trains, through the student's frozen, shared head θ^c_s:
   L_cus = CE(θ^c_s(a(θ^h_t(f_t))), y), y = labels + confident teacher-probe pseudo-labels
   (or labels only, or KL to the probe's softmax with ``customize_target=soft``).
2. Distillation — student and P_s train, θ^h_t frozen:
   L = L_task + λ_g · MSE(P_s(f_s), f_t) + λ_s · D(f_s, a(θ^h_t(f_t))), D the task-specific distance below.

Where the task-specific term compares (``specific_space``, docs/tuning.md "CustomKD on the development
split"): L_cus sees θ^h_t(f_t) only through the head's C rows, so only the target's component in the head's
row space is determined by customization; the other d_s − C directions keep θ^h_t's random initialisation
(about 90 % of the target's variance on digits and ELPV). ``head`` compares f_s and the target in that row
space only — MSE over the C coordinates of an orthonormal basis of the head's rows, recomputed every step —
so the student imitates exactly what customization put there: the customized teacher as the student's own
head reads it. ``full`` compares all d_s dimensions (plain MSE). ``a`` is the student's own output
activation (``customizer_activation=student``, found by :mod:`trainer.feature_range`), so the target lies
where f_s can go; label smoothing gives L_cus a finite optimum. The AdamW weight decay on θ^h_t is nearly
inert (lr × wd = 5e-5 a step: under 1 % over a run) and does not bound the target's scale.

Heads customized through (``customize_head``): ``student`` (the method), ``random`` (a fixed random
head, the paper's ablation as a frozen head) and ``random-trained`` (a random-init head θ^c_t trained
jointly with θ^h_t, the paper's ablation as described). θ^h_t, P_s and the heads are dropped after
training.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from trainer.feature_range import activation_range, unreachable
from trainer.methods.base import Method, MethodDims, StepInputs, feature_mse, task_loss
from trainer.methods.dkd import DKDParams, dkd_term
from trainer.methods.kd import KDParams, soft_target_loss


@dataclass(frozen=True)
class CustomKDParams:
    customizer: str  # θ^h_t: "linear" or "mlp"
    customizer_activation: str  # a: "student" (the student's output activation) or "none"
    customize_head: str  # the head L_cus goes through: "student", "random" or "random-trained"
    customize_target: str  # L_cus's targets: "labels+pseudo", "labels" or "soft" (KL to the probe)
    pseudo_threshold: float  # probe confidence from which an unlabeled sample gets a pseudo-label
    customize_smoothing: float  # label smoothing of L_cus, in [0, 1)
    lambda_general: float  # λ_g
    lambda_specific: float  # λ_s
    specific_space: str  # "full": all d_s dims of f_s; "head": only the head's row space (what L_cus sets)
    specific_loss: str  # "mse" or "cosine" (1 - cos, scale-free) between f_s and the customized target
    customizer_init: str  # "default" (PyTorch's Linear init) or "zero" (no random directions)


def make_customizer(kind: str, teacher_dim: int, student_dim: int, init: str = "default") -> nn.Module:
    """θ^h_t: D → d_s, linear or a 2-layer MLP. ``init="zero"`` zeroes the output layer, so every direction
    of the target that L_cus never moves stays 0 instead of a random projection of f_t."""
    if kind == "linear":
        customizer = nn.Linear(teacher_dim, student_dim)
        output = customizer
    else:
        hidden = max(teacher_dim, student_dim)
        customizer = nn.Sequential(nn.Linear(teacher_dim, hidden), nn.GELU(), nn.Linear(hidden, student_dim))
        output = customizer[-1]
    if init == "zero":
        nn.init.zeros_(output.weight)
        nn.init.zeros_(output.bias)
    return customizer


def head_basis(head_weight: torch.Tensor) -> torch.Tensor:
    """Orthonormal basis ``[d_s, C]`` of the head's row space: the directions of f_s its logits depend on."""
    basis, _ = torch.linalg.qr(head_weight.detach().float().T)
    return basis


def specific_term(student_features: torch.Tensor, target: torch.Tensor, params: CustomKDParams,
                  head_weight: torch.Tensor | None, counts) -> torch.Tensor:
    """The task-specific term between f_s ``[B, d_s]`` and a(θ^h_t(f_t)) ``[B, d_s]``.

    ``specific_space="head"`` compares both only inside the head's row space (coordinates in
    :func:`head_basis`, ``[B, C]``): L_cus determines the target there and nowhere else.
    ``specific_loss="cosine"``: 1 - cos(f_s, target) per sample, blind to the target's scale."""
    if params.specific_space == "head":
        if head_weight is None:
            raise ValueError("specific_space='head' needs the student head's weight in StepInputs")
        basis = head_basis(head_weight)
        student_features, target = student_features @ basis, target @ basis
    if params.specific_loss == "cosine":
        return counts.mean((1 - F.cosine_similarity(student_features, target, dim=1)).sum())
    return feature_mse(student_features, target, counts)


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
    params: CustomKDParams

    def __init__(self, dims: MethodDims, params: CustomKDParams) -> None:
        super().__init__(dims, params)
        self.customizer = make_customizer(params.customizer, dims.teacher_dim, dims.student_dim, params.customizer_init)
        self.activation = dims.student_activation if params.customizer_activation == "student" else nn.Identity()
        self.student_range = activation_range(dims.student_activation)  # where f_s can go, for the log
        self.projector = nn.Linear(dims.student_dim, dims.teacher_dim)
        self.random_head = None
        if params.customize_head in ("random", "random-trained"):
            self.random_head = nn.Linear(dims.student_dim, dims.num_classes)
            self.random_head.requires_grad_(params.customize_head == "random-trained")
        # customization rounds done: no task-specific term before the first one (nothing customized yet)
        self.register_buffer("rounds", torch.zeros((), dtype=torch.long))

    def student_side_parameters(self) -> list[nn.Parameter]:
        return list(self.projector.parameters())

    def customizer_parameters(self) -> list[nn.Parameter]:
        """What the customization stage trains: θ^h_t, and the random head when it is trained jointly."""
        head = list(self.random_head.parameters()) if self.params.customize_head == "random-trained" else []
        return list(self.customizer.parameters()) + head

    def customized(self, teacher_features: torch.Tensor) -> torch.Tensor:
        """a(θ^h_t(f_t)): ``[B, D] -> [B, d_s]``."""
        return self.activation(self.customizer(teacher_features))

    def customization_loss(self, teacher_features: torch.Tensor, labels: torch.Tensor,
                           probe_logits: torch.Tensor, head: nn.Linear) -> dict:
        """L_cus for features ``[B, D]``; gradients reach θ^h_t (and a jointly trained random head) only."""
        params = self.params
        if params.customize_head == "random-trained":
            logits = self.random_head(self.customized(teacher_features))
        else:
            head = self.random_head if self.random_head is not None else head
            logits = F.linear(self.customized(teacher_features), head.weight.detach(), head.bias.detach())
        if params.customize_target == "soft":
            loss = F.kl_div(F.log_softmax(logits, 1), F.softmax(probe_logits, 1), reduction="batchmean")
            used = torch.ones_like(labels, dtype=torch.bool)
            targets = probe_logits.argmax(1)
        else:
            targets = customization_targets(labels, probe_logits, params.customize_target, params.pseudo_threshold)
            used = targets >= 0
            loss = (F.cross_entropy(logits[used], targets[used], label_smoothing=params.customize_smoothing)
                    if used.any() else logits.sum() * 0.0)
        correct = (logits.argmax(1) == targets)[used].float().sum()
        return {"loss": loss, "correct": correct, "used": used.sum()}

    def forward(self, step: StepInputs) -> dict:
        params, counts = self.params, step.counts
        task = task_loss(step.logits, step.labels, counts)
        general = feature_mse(self.projector(step.student_features), step.teacher_features, counts)
        parts = {"task": task, "general": general}
        if int(self.rounds) > 0:
            with torch.no_grad():
                customized = self.customized(step.teacher_features)
                f_s = step.student_features.detach()
                parts["specific_unreachable"] = counts.mean(unreachable(customized, *self.student_range).sum())
                # mean squares of both sides; the trainer logs RMS(θ^h_t(f_t)) / RMS(f_s) from them
                parts["customized_ms"] = counts.mean(customized.square().mean(1).sum())
                parts["student_ms"] = counts.mean(f_s.square().mean(1).sum())
                if step.head_weight is not None:  # the part of the mean square inside the head's row space
                    inside = (customized @ head_basis(step.head_weight)).square().sum(1) / customized.shape[1]
                    parts["customized_head_ms"] = counts.mean(inside.sum())
            parts["specific"] = specific_term(step.student_features, customized, params, step.head_weight, counts)
        specific = parts.get("specific", general * 0.0)
        loss = task + params.lambda_general * general + params.lambda_specific * specific
        return {"loss": loss, **parts}


@dataclass(frozen=True)
class CustomKDDKDParams(CustomKDParams):
    """CustomKD's params, plus the DKD term's."""

    dkd: DKDParams


class CustomKDWithDKD(CustomKD):
    """``customkd+dkd``: CustomKD plus the decoupled KD term on the teacher probe's logits."""

    params: CustomKDDKDParams

    def forward(self, step: StepInputs) -> dict:
        parts = super().forward(step)
        dkd = dkd_term(step, self.params.dkd)
        return {**parts, "loss": parts["loss"] + dkd, "dkd": dkd}


@dataclass(frozen=True)
class CustomKDKDParams(CustomKDParams):
    """CustomKD's params, plus the Hinton KD term's."""

    kd: KDParams


class CustomKDWithKD(CustomKD):
    """``customkd+kd``: CustomKD plus Hinton's soft-target term on the teacher probe's logits."""

    params: CustomKDKDParams

    def forward(self, step: StepInputs) -> dict:
        parts = super().forward(step)
        kd = soft_target_loss(step.logits, step.probe_logits, self.params.kd.temperature, step.counts)
        return {**parts, "loss": parts["loss"] + self.params.kd.weight * kd, "kd": kd}
