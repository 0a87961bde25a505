"""The student's optimiser and learning-rate schedule, built by timm.

- :func:`create_optimizer`: timm's :func:`~timm.optim.create_optimizer_v2` (``adamw``: torch's AdamW; ``sgd``:
  torch's SGD with Nesterov momentum 0.9) over the student and the method's student-side parameters (projectors),
  in that order. With ``--decay-norm-bias`` (the default) one group decays every parameter; without it timm's
  parameter groups (:func:`~timm.optim.param_groups_weight_decay`) exempt 1-D parameters (norms, biases), ``*.bias``
  and the student's ``no_weight_decay()`` list.
- :func:`create_scheduler` → :class:`CosineSchedule`: timm's :class:`~timm.scheduler.CosineLRScheduler` stepped per
  optimiser update. Without warm-up, the lr of update ``t`` (counted from 0) of ``T`` is
  ``lr · ½ (1 + cos(π t / T))``; with ``W`` warm-up updates, ``t < W`` instead take
  ``warmup_lr + t (lr − warmup_lr) / W`` (timm's ``warmup_prefix=False``: the cosine still spans all ``T``).
"""

from __future__ import annotations

import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from torch import nn

from customkd.common.devices import optimizer_implementation
from customkd.trainer.config import DistillConfig
from customkd.trainer.methods import Method
from customkd.trainer.students import Student


class TrainedParameters(nn.Module):
    """What the student's optimiser trains, named for timm's parameter groups: ``student.*`` then ``method.N``."""

    def __init__(self, student: Student, method_parameters: list[nn.Parameter]) -> None:
        super().__init__()
        self.student = student
        self.method = nn.ParameterList(method_parameters)

    def no_weight_decay(self) -> set[str]:
        """The student model's own exemptions (a ViT's position embedding and class token), under this module."""
        listed = getattr(self.student.model, "no_weight_decay", set)()
        return {f"student.model.{name}" for name in listed}


def create_optimizer(cfg: DistillConfig, student: Student, method: Method) -> torch.optim.Optimizer:
    """The optimiser of the student and the method's student-side parameters (``--optimizer``, ``--lr``,
    ``--weight-decay``, ``--decay-norm-bias``); fused on CUDA, foreach on CPU."""
    method_parameters = method.student_side_parameters()
    parameters = list(student.parameters()) + method_parameters
    trained = parameters if cfg.decay_norm_bias else TrainedParameters(student, method_parameters)
    return create_optimizer_v2(trained, cfg.optimizer, lr=cfg.effective_lr, weight_decay=cfg.effective_weight_decay,
                               momentum=0.9, filter_bias_and_bn=not cfg.decay_norm_bias,
                               **optimizer_implementation(parameters))


class CosineSchedule(CosineLRScheduler):
    """timm's cosine schedule with linear warm-up over optimiser updates, counting them itself: :meth:`advance` after
    each update. timm's ``state_dict`` is the scheduler's attributes, so the count is in the checkpoint."""

    def __init__(self, optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0,
                 warmup_lr: float = 0.0) -> None:
        super().__init__(optimizer, t_initial=total_steps, lr_min=0.0, warmup_t=warmup_steps, warmup_lr_init=warmup_lr,
                         warmup_prefix=False, t_in_epochs=False)
        self.updates = 0

    def advance(self) -> None:
        """One optimiser update done: set the lr of the next."""
        self.updates += 1
        self.step_update(self.updates)

    def load_state_dict(self, state_dict: dict) -> None:
        """timm's load takes any dict; refuse one that is not this schedule's (a torch scheduler's, from a checkpoint
        of an older version), so that a resume says so instead of training on a wrong lr."""
        missing = sorted(set(self.state_dict()) - set(state_dict))
        if missing:
            raise KeyError(f"no {', '.join(missing)} in the scheduler state")
        super().load_state_dict(state_dict)


def create_scheduler(cfg: DistillConfig, optimizer: torch.optim.Optimizer, total_steps: int,
                     warmup_steps: int = 0) -> CosineSchedule:
    """The lr schedule of ``total_steps`` optimiser updates, the first ``warmup_steps`` warming up from
    ``--warmup-lr``."""
    return CosineSchedule(optimizer, total_steps, warmup_steps, cfg.warmup_lr)
