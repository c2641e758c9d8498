"""Process groups for data-parallel training: one code path for 1 process, ``torchrun`` and Ray Train.

``setup()`` joins the group ``torchrun`` describes (``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` + rendezvous
env), or uses the one a launcher such as Ray Train's ``TorchTrainer`` already initialised, or runs alone.
Gradients are averaged with ONE all-reduce of a flat buffer per optimisation step (after the local
accumulation), which is what DDP computes without its bucketed overlap: with the same micro-batches,
``world`` processes x ``accumulate`` micro-steps give the same update as 1 process x ``world * accumulate``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # we initialised it (and so destroy it at the end)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device: str = "auto") -> Dist:
    """The process group and this process's device. ``device``: ``auto`` (CUDA when present), ``cpu``,
    ``cuda`` or ``cuda:N`` (under several processes ``cuda`` means ``cuda:LOCAL_RANK``)."""
    owns = False
    if not (dist.is_available() and dist.is_initialized()) and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        use_cuda = device != "cpu" and torch.cuda.is_available()
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        owns = True
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local = int(os.environ.get("LOCAL_RANK", rank % max(1, torch.cuda.device_count() or 1)))
    else:
        rank, world, local = 0, 1, 0
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local if world > 1 else 0)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    return Dist(rank, world, local, dev, owns)


def average_gradients(params: list[torch.nn.Parameter], d: Dist) -> None:
    """Average ``.grad`` over the processes (one flat all-reduce). No-op alone."""
    if d.world == 1:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= d.world
    offset = 0
    for p, g in zip(params, grads):
        n = g.numel()
        chunk = flat[offset : offset + n].view_as(g)
        if p.grad is None:
            p.grad = chunk.clone()
        else:
            p.grad.copy_(chunk)
        offset += n


def all_mean(values: torch.Tensor, d: Dist) -> torch.Tensor:
    """Mean of a tensor over the processes (for logged losses)."""
    if d.world == 1:
        return values
    out = values.clone()
    dist.all_reduce(out)
    return out / d.world


def any_flag(flag: bool, d: Dist) -> bool:
    """True on every process when any process raised ``flag`` (a stop request seen by one rank)."""
    if d.world == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=d.device)
    dist.all_reduce(t)
    return bool(t.item() > 0)


def barrier(d: Dist) -> None:
    if d.world > 1:
        dist.barrier()


def teardown(d: Dist) -> None:
    if d.owns_group and dist.is_initialized():
        dist.destroy_process_group()
