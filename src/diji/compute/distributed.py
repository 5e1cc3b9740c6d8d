"""torch.distributed set-up, vendor-neutral: the collective back-end comes from the device's profile.

`diji train …` under `torchrun --nproc-per-node N` reads RANK / WORLD_SIZE / LOCAL_RANK from the
environment; a plain `diji train …` is world size 1 and never touches torch.distributed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from diji.compute.backends import backend_for
from diji.errors import DijiError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    """This process's rank in [0, world_size)."""
    world_size: int = 1
    """Number of processes."""
    local_rank: int = 0
    """Rank on this node: picks the accelerator index."""
    backend: str = ""
    """Collective back-end in use ('' when not distributed)."""

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_world_size() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise DijiError(f"WORLD_SIZE must be an integer, got '{os.environ['WORLD_SIZE']}'") from None


def rank_device(device: torch.device, local_rank: int) -> torch.device:
    """One accelerator per process: index = local rank (the CPU has no index)."""
    if device.type == "cpu":
        return device
    dev = torch.device(device.type, local_rank)
    acc = getattr(torch, "accelerator", None)
    if acc is not None and hasattr(acc, "set_device_index"):
        acc.set_device_index(local_rank)
    return dev


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group torchrun set up (idempotent); world size 1 needs no group."""
    world = env_world_size()
    if world <= 1:
        return DistInfo()
    dist = torch.distributed
    if not dist.is_available():
        raise DijiError("this torch build has no torch.distributed; run in a single process")
    backend = backend_for(device.type).dist_backend
    if not dist.is_initialized():
        try:
            dist.init_process_group(backend=backend)
        except (RuntimeError, ValueError) as e:
            raise DijiError(f"cannot start the '{backend}' process group for {device.type}: {e}") from None
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), backend)


def all_reduce_mean(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """In-place mean over ranks (SUM then divide: gloo has no AVG)."""
    if info.enabled:
        torch.distributed.all_reduce(t)
        t /= info.world_size
    return t


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        torch.distributed.all_reduce(t)
    return t


def average_gradients(params: list[torch.nn.Parameter], info: DistInfo) -> None:
    """Data-parallel gradient averaging with one flat all-reduce per optimizer step.

    Called once after all accumulation micro-batches (the `no_sync` pattern of DDP). Flattening into one
    buffer turns many small collectives into one large one, which is what dominates on gloo.
    """
    if not info.enabled:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch._utils._flatten_dense_tensors(grads)
    torch.distributed.all_reduce(flat)
    flat /= info.world_size
    for g, synced in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads), strict=True):
        g.copy_(synced)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        torch.distributed.barrier()


def broadcast_object(obj, info: DistInfo):
    """Rank 0's Python object on every rank."""
    if not info.enabled:
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]
