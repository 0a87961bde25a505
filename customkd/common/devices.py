"""Devices and mixed precision for both processes: one ``--device`` resolver, one autocast."""

from __future__ import annotations

from typing import TYPE_CHECKING

from customkd.common.errors import UserError

if TYPE_CHECKING:
    import torch

AUTOCAST_DTYPES = {"fp32": None, "bf16": "bfloat16", "fp16": "float16"}  # precision name → autocast dtype
# glibc's default allocator makes PyTorch page-fault heavily on CPU (docs/design.md §9): keep freed memory. The
# Makefile exports the same value; the bench and the report pass it to the processes they start.
GLIBC_TUNABLES = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736"
AUTO_PRECISION = {"cuda": "bf16", "cpu": "fp32"}  # auto: bf16 autocast on a GPU, exact fp32 on CPU


def resolve_device(device: str) -> torch.device:
    """``auto`` (a GPU when there is one), ``cpu``, ``cuda`` or ``cuda:N``; CUDA asked for without a GPU is refused.
    Both processes resolve ``--device`` here."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device != "cpu" and device != "cuda" and not device.startswith("cuda:"):
        raise UserError(f"unknown --device {device!r}; known: auto, cpu, cuda, cuda:N")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device} asked for CUDA but no GPU is visible; use --device cpu")
    return torch.device(device)


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` becomes this device's precision; any other name stays."""
    return AUTO_PRECISION.get(device.type, "fp32") if precision == "auto" else precision


def autocast(device: torch.device, precision: str):
    """Autocast at a resolved precision (``fp32`` = off): the teacher's forward and the student's.
    fp16 needs a GPU (CPU autocast has no fp16 kernels worth using)."""
    import torch

    dtype_name = AUTOCAST_DTYPES[precision]
    if dtype_name is None:
        return torch.autocast(device.type, enabled=False)
    if device.type == "cpu" and dtype_name == "float16":
        raise UserError("--precision fp16 needs a GPU; use bf16 or fp32 on CPU")
    return torch.autocast(device.type, dtype=getattr(torch, dtype_name))


def optimizer_implementation(parameters) -> dict:
    """The keyword that picks an optimiser's multi-tensor implementation for where ``parameters`` live: ``fused``
    on CUDA (one kernel for every parameter, no per-parameter host work), ``foreach`` elsewhere (CPU has no
    fused SGD; its foreach step computes what the per-parameter loop computes)."""
    first = next(iter(parameters), None)
    if first is not None and first.device.type == "cuda":
        return {"fused": True}
    return {"foreach": True}
