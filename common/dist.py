"""Multi-GPU and multi-node training under torchrun: one process per device.

    torchrun --nproc_per_node=4 02_train_stage1.py ...                       # one machine
    torchrun --nnodes=2 --node_rank=0 --master_addr=HOST --nproc_per_node=8 ...  # two machines

Every rank draws the same global batch stream (the samplers are pure functions of seed and
epoch) and keeps a disjoint shard of every batch, so the ranks together see exactly the
batches a single process would; DistributedDataParallel averages the gradients. Validation
recordings are split over the ranks and the scores gathered, so every rank selects the same
best epoch. Only rank 0 writes artifacts. Without torchrun (WORLD_SIZE unset) every function
here is a no-op and the scripts run as one process, on CPU or one GPU.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as tdist


def rank_world() -> tuple[int, int]:
    """(rank, world size): from the process group, else torchrun's environment, else (0, 1)."""
    if tdist.is_available() and tdist.is_initialized():
        return tdist.get_rank(), tdist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def is_main() -> bool:
    return rank_world()[0] == 0


def active() -> bool:
    return tdist.is_available() and tdist.is_initialized() and tdist.get_world_size() > 1


def setup(device_name: str = "auto") -> torch.device:
    """The process's device; under torchrun also joins the process group (NCCL on GPUs,
    gloo on CPU) and takes GPU LOCAL_RANK."""
    from common.infer import resolve_device

    device = resolve_device(device_name)
    if int(os.environ.get("WORLD_SIZE", 1)) <= 1:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    if not tdist.is_initialized():
        tdist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def shard(batch: list, rank: int, world: int) -> list:
    """This rank's part of one global batch: items rank, rank + world, ..."""
    return batch[rank::world]


class ShardedBatches(torch.utils.data.Sampler):
    """Wraps a batch sampler (lists of indices): yields this rank's shard of every batch.
    A global batch smaller than the world size is skipped by every rank alike (DDP needs the
    same number of steps on each rank)."""

    def __init__(self, batches, rank: int | None = None, world: int | None = None):
        self.batches = batches
        own_rank, own_world = rank_world()
        self.rank = own_rank if rank is None else rank
        self.world = own_world if world is None else world

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        for batch in self.batches:
            if len(batch) >= self.world:
                yield shard(list(batch), self.rank, self.world)


def wrap(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel around `model` under torchrun, else the model itself."""
    if not active():
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def mean(value: float) -> float:
    """The mean of a float over the ranks."""
    if not active():
        return value
    tensor = torch.tensor([value], dtype=torch.float64)
    tdist.all_reduce(tensor)
    return float(tensor.item()) / tdist.get_world_size()


def map_split(fn, items: list):
    """fn(items) computed in shards over the ranks and gathered on every rank, in order.
    fn must return an array-like with one row per item."""
    import numpy as np

    if not active():
        return fn(items)
    rank, world = rank_world()
    mine = fn(items[rank::world]) if items[rank::world] else None
    parts = [None] * world
    tdist.all_gather_object(parts, mine)
    rows = [None] * len(items)
    for r, part in enumerate(parts):
        for j, row in enumerate(part if part is not None else []):
            rows[r + j * world] = row
    return np.stack(rows)


def from_main(fn):
    """fn() run on rank 0 only (say, creating the run folder); its result on every rank."""
    if not active():
        return fn()
    box = [fn() if is_main() else None]
    tdist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if active():
        tdist.barrier()


def loader_workers(num_workers: int, device) -> int:
    """DataLoader processes: `num_workers` if set (>= 0); -1 = auto: none on the CPU (the
    model's threads use every core and an item costs ~0.1 ms), min(4, cores - 1) on a GPU,
    where a step takes milliseconds (more workers only compete with the process that
    launches the GPU's work)."""
    if num_workers >= 0:
        return num_workers
    return min(4, max((os.cpu_count() or 1) - 1, 0)) if torch.device(device).type == "cuda" else 0


def loader(dataset, batch_sampler, device, num_workers: int = -1) -> torch.utils.data.DataLoader:
    """The DataLoader of every training stage: workers as loader_workers decides, each
    prefetching 4 batches, and pinned host memory on a GPU (non-blocking copies)."""
    workers = loader_workers(num_workers, device)
    extra = {"prefetch_factor": 4} if workers > 0 else {}
    return torch.utils.data.DataLoader(dataset, batch_sampler=batch_sampler, num_workers=workers,
                                       pin_memory=torch.device(device).type == "cuda", **extra)


def shuffled_loader(dataset, batch_size: int, generator, device, num_workers: int = -1,
                    drop_last: bool = False) -> torch.utils.data.DataLoader:
    """DataLoader(shuffle=True) with this rank's shard of every batch: one process draws the
    same batches as DataLoader(dataset, batch_size, shuffle=True, generator=generator)."""
    sampler = torch.utils.data.RandomSampler(dataset, generator=generator)
    batches = ShardedBatches(torch.utils.data.BatchSampler(sampler, batch_size, drop_last))
    return loader(dataset, batches, device, num_workers)
