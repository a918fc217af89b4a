"""torchrun support: one process per device, rank 0 writes. Single-process runs need no set-up."""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def init_distributed(device: str) -> Dist:
    """Read torchrun's environment; NCCL on CUDA, gloo on CPU (so CI can test two CPU processes)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
    return Dist(rank, world, local_rank)


def resolve_device(requested: str, local_rank: int = 0) -> torch.device:
    if requested == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was requested but no CUDA device is available")
    return torch.device(f"cuda:{local_rank}" if requested == "cuda" else requested)


def barrier(state: Dist) -> None:
    if state.enabled:
        dist.barrier()


def all_reduce_mean(value: torch.Tensor, state: Dist) -> torch.Tensor:
    """Mean of a tensor over ranks (for logging losses that every rank computes on its own shard)."""
    if not state.enabled:
        return value
    value = value.detach().clone()
    dist.all_reduce(value)
    return value / state.world


def all_gather_objects(value: Any, state: Dist) -> list[Any]:
    """Every rank's `value`, in rank order (checkpoints keep each rank's own RNG state)."""
    if not state.enabled:
        return [value]
    gathered: list[Any] = [None] * state.world
    dist.all_gather_object(gathered, value)
    return gathered


def shutdown(state: Dist) -> None:
    if state.enabled and dist.is_initialized():
        dist.destroy_process_group()
