"""torchrun process groups for both processes: which rank am I, barriers, small collectives.

Launched without torchrun everything degrades to a single process (world size 1, no-ops). torch is
imported inside the functions that need it, so the CLI can ask :func:`is_main_process` before any
heavy import (``--help`` stays instant).
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from customkd.common.errors import UserError

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def process_env() -> DistEnv:
    """This process's place under torchrun, read from its environment (rank 0 of 1 without torchrun)."""
    return DistEnv(int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")),
                   int(os.environ.get("LOCAL_RANK", "0")))


def is_main_process() -> bool:
    """Rank 0 speaks for everyone: logs, progress bars, messages. The only rank test in the project."""
    return process_env().main


def init_distributed(device: str) -> tuple[DistEnv, torch.device]:
    """Join the torchrun process group when launched by torchrun; pick this rank's device."""
    import torch
    import torch.distributed as torch_dist

    env = process_env()
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    chosen = torch.device(f"cuda:{env.local_rank}") if device == "cuda" else torch.device(device)
    if env.active and not torch_dist.is_initialized():
        if chosen.type == "cuda":
            torch.cuda.set_device(chosen)
        torch_dist.init_process_group("nccl" if chosen.type == "cuda" else "gloo",
                                      timeout=dt.timedelta(minutes=30))
    return env, chosen


def barrier(env: DistEnv) -> None:
    import torch.distributed as torch_dist

    if env.active:
        torch_dist.barrier()


def broadcast_object(env: DistEnv, value):
    """Rank 0's ``value`` on every rank."""
    import torch.distributed as torch_dist

    if not env.active:
        return value
    box = [value]
    torch_dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_objects(env: DistEnv, value) -> list:
    import torch.distributed as torch_dist

    if not env.active:
        return [value]
    out = [None] * env.world
    torch_dist.all_gather_object(out, value)
    return out


def reduce_sums(env: DistEnv, sums: dict[str, float]) -> dict[str, float]:
    """Sum each named float over ranks (same keys on every rank)."""
    import torch
    import torch.distributed as torch_dist

    if not env.active:
        return sums
    keys = sorted(sums)
    tensor = torch.tensor([sums[k] for k in keys], dtype=torch.float64)
    torch_dist.all_reduce(tensor)
    return dict(zip(keys, tensor.tolist(), strict=True))


def on_main(env: DistEnv, action):
    """Run ``action`` on rank 0 only; its result, or its UserError, reaches every rank.

    Without this, a refusal on rank 0 would leave the other ranks waiting at the next collective."""
    result, error = None, None
    if env.main:
        try:
            result = action()
        except UserError as exc:
            error = str(exc)
    result, error = broadcast_object(env, (result, error))
    if error:
        raise UserError(error)
    return result
