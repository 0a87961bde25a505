"""Running the distill process under ``torchrun``: DistributedDataParallel with a fixed global batch.

Rule (recorded in config.json): ``--batch-size`` is the *global* batch. Every global batch of the
epoch's order is split across ranks. Each loss term is a sum over this rank's samples divided by
that term's count in the whole global batch (all samples, labeled, unlabeled; see
:class:`trainer.methods.BatchCounts`) and multiplied by the world size, so DDP's gradient average
equals the single-process gradient of the whole global batch, whatever the number of ranks and
however labeled samples fall across them. The learning rate therefore needs no scaling. Every
sample is seen exactly once per epoch (a rank left without samples in a short last batch runs an
inactive, zero-loss step). BatchNorm statistics are per rank on CPU (gloo); on CUDA they are
synchronised (SyncBatchNorm).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as torch_dist
from torch import nn

from customkd.common.distributed import DistEnv
from customkd.trainer.methods.base import BatchCounts

BATCH_RULE = ("fixed global batch: --batch-size is split across ranks, every loss term normalised by its "
              "global count, learning rate unchanged")


def split_global_batches(items: list, batch_size: int, env: DistEnv,
                         row_labels: np.ndarray) -> tuple[list[list], list[BatchCounts]]:
    """This rank's share of each global batch of (row, …) items, and that global batch's counts."""
    local, counts = [], []
    for start in range(0, len(items), batch_size):
        global_batch = items[start : start + batch_size]
        mine = global_batch[env.rank :: env.world]
        labeled = int((row_labels[[item[0] for item in global_batch]] >= 0).sum())
        counts.append(BatchCounts(len(global_batch), labeled, len(global_batch) - labeled, env.world, bool(mine)))
        local.append(mine or global_batch[:1])  # an inactive step keeps the ranks in lockstep
    return local, counts


def broadcast_module(env: DistEnv, module: nn.Module) -> None:
    """Rank 0's parameters and buffers on every rank: θ^h_t is trained outside DDP, and this makes it
    identical on every rank by construction, not by deterministic kernels."""
    if not env.active:
        return
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            torch_dist.broadcast(tensor.data, src=0)
