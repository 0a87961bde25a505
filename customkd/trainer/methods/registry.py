"""The table of methods: each a base (the modules it trains beside the student, with
its own params) plus registered logit terms, and one place where the run's options become params.

:data:`BASES` and :data:`TERMS` are where the run's options (``DistillConfig``, the CLI flags) become a base's or a
term's params; methods never see the config. A combined method (``kd+fitnet``, ``customkd+dkd``) is a base plus
terms, its loss their weighted sum: adding a combination is one line of :data:`METHODS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

from customkd.common.errors import UserError
from customkd.trainer.config import DistillConfig
from customkd.trainer.methods.base import BatchCounts, EpochContext, Method, MethodDims, StepInputs, Term
from customkd.trainer.methods.customkd import CustomKD, CustomKDParams
from customkd.trainer.methods.dkd import DKDParams, dkd
from customkd.trainer.methods.fitnet import FitNet, FitNetParams
from customkd.trainer.methods.kd import KDParams, kd_term
from customkd.trainer.methods.student import StudentOnly, StudentParams


def student_params(cfg: DistillConfig) -> StudentParams:
    return StudentParams()


def fitnet_params(cfg: DistillConfig) -> FitNetParams:
    return FitNetParams(lambda_general=cfg.effective_lambda_general)


def kd_params(cfg: DistillConfig) -> KDParams:
    return KDParams(temperature=cfg.kd_temperature, weight=cfg.kd_weight)


def dkd_params(cfg: DistillConfig) -> DKDParams:
    return DKDParams(alpha=cfg.dkd_alpha, beta=cfg.dkd_beta, temperature=cfg.kd_temperature, warmup=cfg.dkd_warmup)


def customkd_params(cfg: DistillConfig) -> CustomKDParams:
    return CustomKDParams(customizer=cfg.customizer, customizer_activation=cfg.customizer_activation,
                          customize_head=cfg.customize_head, customize_target=cfg.customize_target,
                          pseudo_threshold=cfg.pseudo_threshold, customize_smoothing=cfg.customize_smoothing,
                          lambda_general=cfg.effective_lambda_general, lambda_specific=cfg.lambda_specific,
                          specific_space=cfg.specific_space, specific_loss=cfg.specific_loss,
                          customizer_init=cfg.customizer_init, customizer_optimizer=cfg.customizer_optimizer,
                          customizer_lr=cfg.customizer_lr, customizer_weight_decay=cfg.customizer_weight_decay,
                          customizer_reset=cfg.customizer_reset, customize_epochs=cfg.customize_epochs,
                          customize_warmup=cfg.customize_warmup, alternate_every=cfg.alternate_every)


# base name -> (class, how its params are read from the run's config)
BASES: dict[str, tuple[type[Method], Callable[[DistillConfig], object]]] = {
    "student": (StudentOnly, student_params),
    "fitnet": (FitNet, fitnet_params),
    "customkd": (CustomKD, customkd_params),
}
# term name -> (how its params are read from the run's config, the term of those params)
TERMS: dict[str, tuple[Callable[[DistillConfig], object], Callable[[object], Term]]] = {
    "kd": (kd_params, kd_term),
    "dkd": (dkd_params, dkd),
}


@dataclass(frozen=True)
class Recipe:
    """A method: its base and the registered terms added to the base's loss, in this order."""

    base: str
    terms: tuple[str, ...] = ()


METHODS: dict[str, Recipe] = {
    "student": Recipe("student"),
    "fitnet": Recipe("fitnet"),
    "kd": Recipe("student", ("kd",)),
    "kd+fitnet": Recipe("fitnet", ("kd",)),
    "dkd": Recipe("student", ("dkd",)),
    "customkd": Recipe("customkd"),
    "customkd+kd": Recipe("customkd", ("kd",)),
    "customkd+dkd": Recipe("customkd", ("dkd",)),
}


@dataclass(frozen=True)
class MethodContext:
    """What the trainer knows when it builds a method: :class:`MethodDims`'s fields and the run's config,
    which :func:`create_method` turns into the method's params."""

    teacher_dim: int  # D
    student_dim: int  # d_s
    num_classes: int  # C
    config: DistillConfig
    student_activation: nn.Module = field(default_factory=nn.Identity)  # see MethodDims

    @property
    def dims(self) -> MethodDims:
        return MethodDims(self.teacher_dim, self.student_dim, self.num_classes, self.student_activation)


def resolve_method(name: str) -> Recipe:
    if name not in METHODS:
        raise UserError(f"unknown method {name!r}; known: {', '.join(METHODS)}")
    return METHODS[name]


def method_class(name: str) -> type[Method]:
    """The class of method ``name``: what it declares (``customizes``, ``stage_name``) without building it."""
    return BASES[resolve_method(name).base][0]


def method_params(name: str, cfg: DistillConfig) -> object:
    """The params of method ``name``'s base taken from the run's config (``FitNetParams`` for ``kd+fitnet``, ...)."""
    return BASES[resolve_method(name).base][1](cfg)


def method_terms(name: str, cfg: DistillConfig) -> tuple[Term, ...]:
    """The registered terms of method ``name``, their params taken from the run's config."""
    return tuple(TERMS[term][1](TERMS[term][0](cfg)) for term in resolve_method(name).terms)


def create_method(name: str, ctx: MethodContext) -> Method:
    return method_class(name)(ctx.dims, method_params(name, ctx.config), method_terms(name, ctx.config))


__all__ = ["BASES", "METHODS", "TERMS", "BatchCounts", "EpochContext", "Method", "MethodContext", "MethodDims",
           "Recipe", "StepInputs", "Term", "create_method", "method_class", "method_params", "method_terms",
           "resolve_method"]
