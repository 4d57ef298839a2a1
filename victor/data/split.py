"""Who reads what: the split of a stream across ranks and DataLoader workers, in one place.

`rank_share` gives each rank one contiguous stretch of the data, balanced to within one sample,
and the same number of slots on every rank (the shorter stretches end with one padding slot), so
that every rank runs the same number of steps (DDP and ZeRO hang otherwise). `worker_batches`
deals a rank's batches to its DataLoader workers in the order the DataLoader collects them.
Map-style data is split by the Trainer's sampler (accelerate's `BatchSamplerShard`) instead.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Reader:
    """One consumer of a stream: a rank of `world`, and a DataLoader worker of `workers` in it."""

    rank: int = 0
    world: int = 1
    worker: int = 0
    workers: int = 1


def current_reader() -> Reader:
    """This process's rank (torch.distributed, else torchrun's environment) and DataLoader worker."""
    import torch.distributed as dist
    from torch.utils.data import get_worker_info

    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    else:
        rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    info = get_worker_info()
    worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
    return Reader(rank, world, worker, workers)


def rank_share(total: int, rank: int, world: int) -> tuple[int, int, int]:
    """(first position, samples, slots) of `rank`: the first `total % world` ranks get one sample
    more; every rank gets `ceil(total / world)` slots, the last `slots - samples` of them padding."""
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} of {world}")
    base, extra = divmod(total, world)
    return rank * base + min(rank, extra), base + (rank < extra), math.ceil(total / world)


def worker_batches(slots: int, batch_size: int, worker: int, workers: int, first: int = 0) -> range:
    """The batches (of `batch_size` slots, the last maybe short) that DataLoader worker `worker` of
    `workers` builds, from batch `first` on: the DataLoader takes batches from its workers in turn,
    starting with worker 0, so batch j is worker (j - first) mod workers's."""
    batches = math.ceil(slots / batch_size)
    return range(first + worker, batches, workers)
