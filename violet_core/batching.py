"""Deterministic, resumable batch order: step s always sees the same samples, for any worker count.

The order of epoch e is a permutation seeded by (seed, e); each rank takes its own slice of every
global batch. Resuming at step s therefore only needs s: no sampler state is saved.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from violet_core.distributed import Dist


def epoch_batches(num_items: int, batch_size: int, seed: int, epoch: int, dist: Dist) -> list[list[int]]:
    """This rank's batches of epoch `epoch`: lists of `batch_size` dataset indices (last partial batch dropped)."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(num_items, generator=generator).tolist()
    global_batch = batch_size * dist.world
    batches = []
    for start in range(0, num_items - global_batch + 1, global_batch):
        mine = start + dist.rank * batch_size
        batches.append(order[mine:mine + batch_size])
    return batches


def batches_per_epoch(num_items: int, batch_size: int, dist: Dist) -> int:
    count = num_items // (batch_size * dist.world)
    if count == 0:
        raise ValueError(f"{num_items} training items are fewer than one global batch "
                         f"({batch_size} per process x {dist.world} processes); lower the batch size")
    return count


def batch_stream(dataset: Dataset, collate: Callable[[list], dict], batch_size: int, seed: int, start_step: int,
                 dist: Dist, device: torch.device, num_workers: int = 0) -> Iterator[dict]:
    """Endless batches from global step `start_step` on, moved to `device`."""
    per_epoch = batches_per_epoch(len(dataset), batch_size, dist)
    epoch, skip = divmod(start_step, per_epoch)
    while True:
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)  # before the loader starts, so fresh workers inherit it
        batches = epoch_batches(len(dataset), batch_size, seed, epoch, dist)[skip:]
        loader = DataLoader(dataset, batch_sampler=batches, collate_fn=collate, num_workers=num_workers,
                            pin_memory=device.type == "cuda")
        for batch in loader:
            yield to_device(batch, device)
        epoch, skip = epoch + 1, 0


def to_device(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, dict):
        return {k: to_device(v, device) for k, v in value.items()}
    return value
