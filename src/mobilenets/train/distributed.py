"""Data-parallel training under ``torchrun`` (one process per GPU or per CPU share).

``torchrun --nproc_per_node N -m mobilenets train ...`` sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR; we
start gloo on CPU and nccl on GPU. Each process reads its own shard of every epoch (DistributedSampler), DDP
averages the gradients, and only rank 0 writes logs and files. With ``--sync-bn`` BN layers use statistics of the
global batch (torch supports SyncBatchNorm on GPUs only).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..errors import UserError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class World:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup(device: str = "auto") -> World:
    """Join the process group torchrun describes (a single process needs none)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise UserError("device='cuda': no CUDA GPU is visible; use device='cpu'")
    dev = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
        if not use_cuda:
            # The cores are shared between the local processes.
            local = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))
        log.debug("rank %d of %d on %s", rank, world_size, dev)
    return World(rank, world_size, local_rank, dev)


def wrap(model: nn.Module, world: World, sync_bn: bool) -> nn.Module:
    if sync_bn:
        if world.device.type != "cuda":
            raise UserError("sync_bn needs GPUs (torch's SyncBatchNorm has no CPU kernel); leave sync_bn off on CPU")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if not world.distributed:
        return model
    ids = [world.device.index] if world.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def max_over_ranks(value: float, world: World) -> float:
    """The largest of every rank's ``value``, on every rank (so clock-driven choices agree across ranks)."""
    if not world.distributed:
        return value
    t = torch.tensor([float(value)], dtype=torch.float64, device=world.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def any_flag(flag: bool, world: World) -> bool:
    """True on every rank when ``flag`` is true on any rank (keeps ranks in step when one must stop)."""
    return max_over_ranks(1.0 if flag else 0.0, world) > 0


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def cleanup(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()
