"""Running the distill process under ``torchrun``: DistributedDataParallel with a fixed global batch.

Rule (recorded in config.json): ``--batch-size`` is the *global* batch. Every global batch of the
epoch's order is split across ranks; each rank's loss is weighted by ``local_n · world / global_n``
so DDP's gradient average equals the single-process gradient of the whole global batch, whatever
the number of ranks. The learning rate therefore needs no scaling. Every sample is seen exactly
once per epoch (a rank left without samples in a short last batch runs a zero-weight step).
"""

from __future__ import annotations

from featcache.parallel import (  # noqa: F401 - re-exported for the trainer
    DistEnv,
    all_gather_objects,
    barrier,
    broadcast_object,
    init_distributed,
    on_main,
    reduce_sums,
)

BATCH_RULE = "fixed global batch: --batch-size is split across ranks, learning rate unchanged"


def split_global_batches(items: list, batch_size: int, env: DistEnv) -> tuple[list[list], list[float]]:
    """This rank's share of each global batch, and the loss weight that keeps gradients exact."""
    local, weights = [], []
    for start in range(0, len(items), batch_size):
        global_batch = items[start : start + batch_size]
        mine = global_batch[env.rank :: env.world]
        weights.append(len(mine) * env.world / len(global_batch))
        local.append(mine or global_batch[:1])  # zero-weight step keeps the ranks in lockstep
    return local, weights
