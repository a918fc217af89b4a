"""Deterministic, resumable batch order: step s always sees the same samples, for any worker count.

The order of epoch e is a permutation seeded by (seed, e); each rank takes its own slice of every
global batch. `BatchStream.state_dict()` holds the epoch, the position within it and the epoch's
order, so a resumed stream continues with the very batch an uninterrupted one would yield next.

Nothing here draws from the global RNGs: a DataLoader iterator otherwise takes its worker base
seed from the global torch generator, and a resumed run, which opens a fresh iterator mid-epoch,
would then shift every later dropout and drop-path draw.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch.utils.data import DataLoader, Dataset

from violet_core.distributed import Dist

_EPOCH_STRIDE = 100_003  # seed * stride + epoch: distinct generator seeds for (seed, epoch) pairs


def epoch_order(num_items: int, seed: int, epoch: int) -> list[int]:
    """The global permutation of dataset indices for `epoch` (the same on every rank)."""
    generator = torch.Generator().manual_seed(seed * _EPOCH_STRIDE + epoch)
    return torch.randperm(num_items, generator=generator).tolist()


def rank_batches(order: list[int], batch_size: int, dist: Dist) -> list[list[int]]:
    """This rank's batches of one epoch's `order`: lists of `batch_size` indices (last partial global batch dropped)."""
    global_batch = batch_size * dist.world
    batches = []
    for start in range(0, len(order) - global_batch + 1, global_batch):
        mine = start + dist.rank * batch_size
        batches.append(order[mine:mine + batch_size])
    return batches


def epoch_batches(num_items: int, batch_size: int, seed: int, epoch: int, dist: Dist) -> list[list[int]]:
    """This rank's batches of epoch `epoch`: lists of `batch_size` dataset indices (last partial batch dropped)."""
    return rank_batches(epoch_order(num_items, seed, epoch), batch_size, dist)


def batches_per_epoch(num_items: int, batch_size: int, dist: Dist) -> int:
    count = num_items // (batch_size * dist.world)
    if count == 0:
        raise ValueError(f"{num_items} training items are fewer than one global batch "
                         f"({batch_size} per process x {dist.world} processes); lower the batch size")
    return count


class BatchStream:
    """Endless batches (moved to `device`) in the order of `epoch_batches`, resumable from `state_dict()`.

    `position` counts the batches of the current epoch already handed out; prefetching workers may
    have read further, but those batches were never used and are read again after a resume.
    """

    def __init__(self, dataset: Dataset, collate: Callable[[list], dict], batch_size: int, seed: int,
                 dist: Dist, device: torch.device, num_workers: int = 0) -> None:
        self.dataset, self.collate, self.batch_size, self.seed = dataset, collate, batch_size, seed
        self.dist, self.device, self.num_workers = dist, device, num_workers
        self.num_items = len(dataset)
        self.per_epoch = batches_per_epoch(self.num_items, batch_size, dist)
        self.epoch, self.position = 0, 0
        self._order: list[int] | None = None
        self._iterator = None

    def __iter__(self) -> "BatchStream":
        return self

    def __next__(self) -> dict:
        if self.position >= self.per_epoch:
            self.epoch, self.position, self._order, self._iterator = self.epoch + 1, 0, None, None
        if self._iterator is None:
            self._iterator = iter(self._loader())
        batch = next(self._iterator)
        self.position += 1
        return to_device(batch, self.device)

    def _loader(self) -> DataLoader:
        if self._order is None:
            self._order = epoch_order(self.num_items, self.seed, self.epoch)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(self.epoch)  # before the loader starts, so fresh workers inherit it
        batches = rank_batches(self._order, self.batch_size, self.dist)[self.position:]
        # its own generator: the worker base seed must not come from (and advance) the global one
        generator = torch.Generator().manual_seed(self.seed * _EPOCH_STRIDE + self.epoch)
        return DataLoader(self.dataset, batch_sampler=batches, collate_fn=self.collate, num_workers=self.num_workers,
                          pin_memory=self.device.type == "cuda", generator=generator)

    def state_dict(self) -> dict[str, Any]:
        """Plain data: ints and this epoch's order as an int64 tensor (N,)."""
        order = self._order if self._order is not None else epoch_order(self.num_items, self.seed, self.epoch)
        return {"epoch": self.epoch, "position": self.position, "order": torch.tensor(order, dtype=torch.int64),
                "num_items": self.num_items, "batch_size": self.batch_size, "world": self.dist.world}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue where `state` was taken; the data, batch size and process count must be the same."""
        saved = (int(state["num_items"]), int(state["batch_size"]), int(state["world"]))
        if saved != (self.num_items, self.batch_size, self.dist.world):
            raise ValueError(f"the checkpoint was taken with {saved[0]} training items, batch size {saved[1]} and "
                             f"{saved[2]} processes; this run has {self.num_items}, {self.batch_size} and "
                             f"{self.dist.world}, so its data order cannot continue: restore those settings, "
                             f"or delete the checkpoint to restart the run")
        order = state["order"].tolist()
        if sorted(order) != list(range(self.num_items)):
            raise ValueError(f"the checkpoint's data order is not a permutation of {self.num_items} items")
        self.epoch, self.position, self._order, self._iterator = int(state["epoch"]), int(state["position"]), order, None


def to_device(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, dict):
        return {k: to_device(v, device) for k, v in value.items()}
    return value
