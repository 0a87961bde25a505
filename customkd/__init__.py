"""customkd as a library: the two processes and what uses their results.

    import customkd
    store = customkd.extract(customkd.ExtractConfig(teacher="dinov2_vits", data="folder:/data/pets",
                                                    out="caches/pets.zarr"))
    run = customkd.distill(customkd.DistillConfig(cache="caches/pets.zarr", method="customkd"))
    print(run.final["accuracy"], customkd.evaluate(run.run_dir)["accuracy"])
    customkd.predict(run.run_dir, images="/data/new_photos", out="preds.csv")
    page = customkd.compare(cache="caches/pets.zarr", methods="kd,customkd", seeds="0,1,2", out="runs/compare-pets")

Heavy modules (torch, timm, zarr) load on first use, so ``import customkd`` is quick.
"""

from __future__ import annotations

from customkd.common import interrupt as _interrupt

if _interrupt.started_as_program():  # first, before anything heavy loads: Ctrl-C is one line from here on
    _interrupt.own_handlers()

import importlib  # noqa: E402 - after the handlers
import importlib.metadata  # noqa: E402

from customkd.common.errors import UserError  # noqa: E402
from customkd.featcache.config import ExtractConfig  # noqa: E402
from customkd.trainer.config import DistillConfig  # noqa: E402

__version__ = importlib.metadata.version("customkd")
__all__ = ["CompareConfig", "DistillConfig", "ExtractConfig", "UserError", "compare", "distill", "evaluate", "extract",
           "predict"]

_FUNCTIONS = {"extract": ("customkd.featcache.extract", "extract"), "distill": ("customkd.trainer.distill", "distill"),
              "evaluate": ("customkd.trainer.evaluate", "evaluate_run"), "predict": ("customkd.trainer.predict", "predict_images"),
              "compare": ("customkd.report.store_compare", "compare"),
              "CompareConfig": ("customkd.report.config", "CompareConfig")}


def __getattr__(name: str):
    if name in _FUNCTIONS:
        module, function = _FUNCTIONS[name]
        return getattr(importlib.import_module(module), function)
    raise AttributeError(f"module 'customkd' has no attribute {name!r}")
