"""Distillation methods: one explicit name → class table, and one name → params table.

:data:`METHOD_PARAMS` is the one place where the run's options (``DistillConfig``, the CLI flags)
become a method's own params; methods never see the config.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

from common.errors import UserError
from trainer.config import DistillConfig
from trainer.methods.base import BatchCounts, Method, MethodDims, StepInputs
from trainer.methods.customkd import (
    CustomKD,
    CustomKDDKDParams,
    CustomKDKDParams,
    CustomKDParams,
    CustomKDWithDKD,
    CustomKDWithKD,
)
from trainer.methods.dkd import DKD, DKDParams
from trainer.methods.fitnet import FitNet, FitNetParams
from trainer.methods.kd import HintonKD, KDParams
from trainer.methods.kd_fitnet import KDFitNetParams, KDWithFitNet
from trainer.methods.student import StudentOnly, StudentParams

METHODS: dict[str, type[Method]] = {
    "student": StudentOnly,
    "fitnet": FitNet,
    "kd": HintonKD,
    "kd+fitnet": KDWithFitNet,
    "dkd": DKD,
    "customkd": CustomKD,
    "customkd+kd": CustomKDWithKD,
    "customkd+dkd": CustomKDWithDKD,
}


def student_params(cfg: DistillConfig) -> StudentParams:
    return StudentParams()


def fitnet_params(cfg: DistillConfig) -> FitNetParams:
    return FitNetParams(lambda_general=cfg.effective_lambda_general)


def kd_params(cfg: DistillConfig) -> KDParams:
    return KDParams(temperature=cfg.kd_temperature, weight=cfg.kd_weight)


def kd_fitnet_params(cfg: DistillConfig) -> KDFitNetParams:
    return KDFitNetParams(**dataclasses.asdict(fitnet_params(cfg)), kd=kd_params(cfg))


def dkd_params(cfg: DistillConfig) -> DKDParams:
    return DKDParams(alpha=cfg.dkd_alpha, beta=cfg.dkd_beta, temperature=cfg.kd_temperature, warmup=cfg.dkd_warmup)


def customkd_params(cfg: DistillConfig) -> CustomKDParams:
    return CustomKDParams(customizer=cfg.customizer, customizer_activation=cfg.customizer_activation,
                          customize_head=cfg.customize_head, customize_target=cfg.customize_target,
                          pseudo_threshold=cfg.pseudo_threshold, customize_smoothing=cfg.customize_smoothing,
                          lambda_general=cfg.effective_lambda_general, lambda_specific=cfg.lambda_specific,
                          specific_space=cfg.specific_space, specific_loss=cfg.specific_loss,
                          customizer_init=cfg.customizer_init)


def customkd_kd_params(cfg: DistillConfig) -> CustomKDKDParams:
    return CustomKDKDParams(**dataclasses.asdict(customkd_params(cfg)), kd=kd_params(cfg))


def customkd_dkd_params(cfg: DistillConfig) -> CustomKDDKDParams:
    return CustomKDDKDParams(**dataclasses.asdict(customkd_params(cfg)), dkd=dkd_params(cfg))


# Same names as METHODS: how each method's params are read from the run's config.
METHOD_PARAMS: dict[str, Callable[[DistillConfig], object]] = {
    "student": student_params,
    "fitnet": fitnet_params,
    "kd": kd_params,
    "kd+fitnet": kd_fitnet_params,
    "dkd": dkd_params,
    "customkd": customkd_params,
    "customkd+kd": customkd_kd_params,
    "customkd+dkd": customkd_dkd_params,
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


def resolve_method(name: str) -> type[Method]:
    if name not in METHODS:
        raise UserError(f"unknown method {name!r}; known: {', '.join(METHODS)}")
    return METHODS[name]


def method_params(name: str, cfg: DistillConfig) -> object:
    """The params of method ``name`` taken from the run's config (``KDParams`` for ``kd``, ...)."""
    resolve_method(name)
    return METHOD_PARAMS[name](cfg)


def create_method(name: str, ctx: MethodContext) -> Method:
    return resolve_method(name)(ctx.dims, method_params(name, ctx.config))


__all__ = ["METHODS", "METHOD_PARAMS", "BatchCounts", "Method", "MethodContext", "MethodDims", "StepInputs",
           "create_method", "method_params", "resolve_method"]
