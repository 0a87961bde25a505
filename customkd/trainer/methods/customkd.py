"""``customkd``: CustomKD (Lee et al., CVPR 2025), see docs/design.md §2 and §10.

Two stages alternate, customization first once the head means something (one customization round
before every ``alternate_every``-th KD epoch, starting after ``customize_warmup`` KD epochs). The protocol is
this module's: the round is :meth:`CustomKD.epoch_stage` (``customize_epochs`` passes over the epoch's cached
views, θ^h_t's own optimiser, optionally re-initialised first), its optimiser's state travels in the checkpoint,
and :meth:`CustomKD.epoch_metrics` logs whether the customized target is on the student's scale.

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

``customkd+kd`` and ``customkd+dkd`` add the registered KD or DKD term (trainer/methods/registry.py). Its
settings are declared in trainer/methods/options.py (``CustomKDOptions``).

Heads customized through (``customize_head``): ``student`` (the method), ``random`` (a fixed random
head, the paper's ablation as a frozen head) and ``random-trained`` (a random-init head θ^c_t trained
jointly with θ^h_t, the paper's ablation as described). θ^h_t, P_s and the heads are dropped after
training.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from customkd.common.devices import optimizer_implementation
from customkd.common.errors import UserError
from customkd.trainer.feature_range import activation_range, unreachable
from customkd.trainer.methods.base import EpochContext, Method, MethodDims, StepInputs, Term, feature_mse, task_loss


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
    customizer_optimizer: str  # θ^h_t's optimiser: "adamw" or "sgd" (momentum 0.9: updates stay in L_cus's span)
    customizer_lr: float
    customizer_weight_decay: float
    customizer_reset: bool  # re-initialise θ^h_t and its optimiser before every round
    customize_epochs: int  # passes over the epoch's cached views per round
    customize_warmup: int  # KD epochs before the first round (the head must mean something)
    alternate_every: int  # one round before every alternate_every-th KD epoch after the warm-up


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


def make_customizer_optimizer(params: CustomKDParams, parameters: list[nn.Parameter]) -> torch.optim.Optimizer:
    """θ^h_t's own optimiser (and a jointly trained random head's): fused on CUDA, foreach on CPU."""
    implementation = optimizer_implementation(parameters)
    if params.customizer_optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=params.customizer_lr, momentum=0.9,
                               weight_decay=params.customizer_weight_decay, **implementation)
    return torch.optim.AdamW(parameters, lr=params.customizer_lr, weight_decay=params.customizer_weight_decay,
                             **implementation)


class CustomKD(Method):
    customizes = True
    stage_name = "customize"
    params: CustomKDParams

    def __init__(self, dims: MethodDims, params: CustomKDParams, terms: tuple[Term, ...] = ()) -> None:
        super().__init__(dims, params, terms)
        self.customizer = make_customizer(params.customizer, dims.teacher_dim, dims.student_dim, params.customizer_init)
        self.activation = dims.student_activation if params.customizer_activation == "student" else nn.Identity()
        self.student_range = activation_range(dims.student_activation)  # where f_s can go, for the log
        self.projector = nn.Linear(dims.student_dim, dims.teacher_dim)
        self.random_head = None
        if params.customize_head in ("random", "random-trained"):
            self.random_head = nn.Linear(dims.student_dim, dims.num_classes)
            self.random_head.requires_grad_(params.customize_head == "random-trained")
        # customization rounds done: no task-specific term before the first one (nothing customized yet). The
        # KD step branches on the host's count (reading the buffer there would wait for the GPU); the buffer
        # carries it in checkpoints, and loading one sets the host's count (_load_from_state_dict).
        self.register_buffer("rounds", torch.zeros((), dtype=torch.long))
        self.rounds_done = 0
        self.optimizer: torch.optim.Optimizer | None = None  # made on first use, after the method moved to its device

    def student_side_parameters(self) -> list[nn.Parameter]:
        return list(self.projector.parameters())

    def add_round(self) -> None:
        """Count one finished customization round, on the host and in the checkpointed buffer. Every rank runs
        every round, so the counts agree across ranks without the buffer's broadcast."""
        self.rounds_done += 1
        self.rounds += 1

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.rounds_done = int(self.rounds)  # a checkpoint's count; read once, when it is loaded

    def customizer_parameters(self) -> list[nn.Parameter]:
        """What the customization stage trains: θ^h_t, and the random head when it is trained jointly."""
        head = list(self.random_head.parameters()) if self.params.customize_head == "random-trained" else []
        return list(self.customizer.parameters()) + head

    def customizer_optimizer(self) -> torch.optim.Optimizer:
        if self.optimizer is None:
            self.optimizer = make_customizer_optimizer(self.params, self.customizer_parameters())
        return self.optimizer

    def optimizer_states(self) -> dict:
        return {"customizer": self.customizer_optimizer().state_dict()}

    def load_optimizer_states(self, states: dict) -> None:
        self.customizer_optimizer().load_state_dict(states["customizer"])

    def customizes_at(self, epoch: int) -> bool:
        """Whether a customization round runs before KD epoch ``epoch`` (0-based)."""
        warmup, every = self.params.customize_warmup, self.params.alternate_every
        return epoch >= warmup and (epoch - warmup) % every == 0

    def epoch_stage(self, ctx: EpochContext) -> dict | None:
        """One customization round before this KD epoch when one is due: ``customize_epochs`` passes over the
        epoch's cached views (one generator, so each pass draws its own order); the last pass's record."""
        if not self.customizes_at(ctx.epoch):
            return None
        if self.params.customizer_reset:
            torch.manual_seed(ctx.seed * 1000 + ctx.epoch)
            for module in self.customizer.modules():
                if isinstance(module, nn.Linear):
                    module.reset_parameters()
            self.optimizer = None
        generator = torch.Generator().manual_seed(ctx.seed * 1000 + ctx.epoch)
        for _ in range(self.params.customize_epochs):
            record = self.customize_epoch(ctx, generator)
        return record

    def customize_epoch(self, ctx: EpochContext, generator: torch.Generator) -> dict:
        """One pass of L_cus over the epoch's cached features, only θ^h_t training; in ``ctx.batch_size`` batches,
        in a random order (in order when the features stream: block-local reads). Sums stay on the device and are
        read once after the pass."""
        self.train()
        optimizer, started, total = self.customizer_optimizer(), time.perf_counter(), len(ctx.labels)
        order = torch.arange(total) if ctx.block_local else torch.randperm(total, generator=generator)
        labels = ctx.labels[order.to(ctx.labels.device)]  # in this pass's order: one copy of the order, not one a batch
        steps = []  # per batch: (loss, correct, used) float64 on the device
        for start in range(0, total, ctx.batch_size):
            idx = order[start : start + ctx.batch_size]
            features = ctx.features[idx]
            with torch.no_grad():
                probe_logits = ctx.probe(features)
            parts = self.customization_loss(features, labels[start : start + ctx.batch_size], probe_logits, ctx.head)
            optimizer.zero_grad(set_to_none=True)
            parts["loss"].backward()
            optimizer.step()
            steps.append(torch.stack([parts[k].detach().double() for k in ("loss", "correct", "used")]))
        loss_sum, correct, used = 0.0, 0.0, 0.0
        sizes = [min(ctx.batch_size, total - start) for start in range(0, total, ctx.batch_size)]
        for (loss, right, kept), size in zip(torch.stack(steps).cpu().tolist() if steps else [], sizes, strict=True):
            loss_sum, correct, used = loss_sum + loss * size, correct + right, used + kept
        if not math.isfinite(loss_sum):
            raise UserError(f"the customization loss became {loss_sum} (round {self.rounds_done + 1}); check "
                            "--customizer-lr and the teacher features (`customkd cache verify`)")
        self.add_round()
        return {"loss": loss_sum / max(total, 1), "accuracy": correct / max(used, 1.0),
                "used_fraction": used / max(total, 1), "seconds": time.perf_counter() - started}

    def epoch_metrics(self, means: dict) -> dict:
        """``rms_ratio``: RMS(a(θ^h_t(f_t))) / RMS(f_s), is the target on the student's scale; ``head_share``: the
        share of its mean square inside the head's row space (what L_cus sets). From the epoch's global means."""
        metrics = {}
        if "customized_ms" in means:
            metrics["rms_ratio"] = math.sqrt(means["customized_ms"] / max(means["student_ms"], 1e-12))
        if "customized_head_ms" in means:
            metrics["head_share"] = means["customized_head_ms"] / max(means["customized_ms"], 1e-12)
        return metrics

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
            # the mean over the used rows, unused ones (-1) ignored: no boolean mask, no host read. A batch with
            # none used has a NaN mean and zero gradients; where() reports it as 0
            mean = F.cross_entropy(logits, targets, ignore_index=-1, label_smoothing=params.customize_smoothing)
            loss = torch.where(used.any(), mean, torch.zeros_like(mean))
        correct = ((logits.argmax(1) == targets) & used).sum()
        return {"loss": loss, "correct": correct, "used": used.sum()}

    def own_parts(self, step: StepInputs) -> dict:
        params, counts = self.params, step.counts
        task = task_loss(step.logits, step.labels, counts)
        general = feature_mse(self.projector(step.student_features), step.teacher_features, counts)
        parts = {"task": task, "general": general}
        if self.rounds_done > 0:
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
