"""Distillation methods. Each base (``student``, ``fitnet``, ``customkd``) and each registered term (``kd``, ``dkd``)
has its own file; :mod:`trainer.methods.options` declares every method's settings (light: the run's config and
the command line read them without importing torch); :mod:`trainer.methods.registry` is the table of methods.

The registry's and the base classes' names are importable from here; they load on first use, so importing the
options does not import torch.
"""

from __future__ import annotations

import importlib

_REGISTRY = ("BASES", "METHODS", "TERMS", "MethodContext", "Recipe", "create_method", "method_class", "method_params",
             "method_terms", "resolve_method")
_BASE = ("BatchCounts", "EpochContext", "Method", "MethodDims", "StepInputs", "Term")
__all__ = [*_REGISTRY, *_BASE]


def __getattr__(name: str):
    if name in _REGISTRY:
        return getattr(importlib.import_module("customkd.trainer.methods.registry"), name)
    if name in _BASE:
        return getattr(importlib.import_module("customkd.trainer.methods.base"), name)
    raise AttributeError(f"module 'customkd.trainer.methods' has no attribute {name!r}")
