"""Distillation methods: one explicit name → class table."""

from __future__ import annotations

from common.errors import UserError
from trainer.methods.base import BatchCounts, Method, MethodContext, StepInputs
from trainer.methods.customkd import CustomKD, CustomKDWithDKD
from trainer.methods.dkd import DKD
from trainer.methods.fitnet import FitNet
from trainer.methods.kd import HintonKD
from trainer.methods.kd_fitnet import KDWithFitNet
from trainer.methods.student import StudentOnly

METHODS: dict[str, type[Method]] = {
    "student": StudentOnly,
    "fitnet": FitNet,
    "kd": HintonKD,
    "kd+fitnet": KDWithFitNet,
    "dkd": DKD,
    "customkd": CustomKD,
    "customkd+dkd": CustomKDWithDKD,
}


def resolve_method(name: str) -> type[Method]:
    if name not in METHODS:
        raise UserError(f"unknown method {name!r}; known: {', '.join(METHODS)}")
    return METHODS[name]


def create_method(name: str, ctx: MethodContext) -> Method:
    return resolve_method(name)(ctx)


__all__ = ["METHODS", "BatchCounts", "Method", "MethodContext", "StepInputs", "create_method", "resolve_method"]
