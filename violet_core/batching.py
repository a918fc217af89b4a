"""Deterministic, resumable batch order: step s always sees the same samples, for any worker count.

The order of epoch e is a permutation seeded by (seed, e); each rank takes its own slice of every
global batch. `BatchStream.state_dict()` holds the epoch, the position within it and the epoch's
order, so a resumed stream continues with the very batch an uninterrupted one would yield next.

Nothing here draws from the global RNGs: a DataLoader iterator otherwise takes its worker base
seed from the global torch generator, and a resumed run, which opens a fresh iterator mid-epoch,
would then shift every later dropout and drop-path draw.

One DataLoader serves the whole run: its batch sampler runs on from epoch to epoch, and each index
travels with its epoch, so worker processes are started once and keep their open shard files
(persistent workers), and the next epoch's first batches are read while this epoch ends. Batches
come in pinned memory on CUDA, are copied one batch ahead (violet_core.data.device_batch) and are
normalised on the device as they are handed over.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from violet_core.data.device_augment import apply_pending_crop
from violet_core.data.device_batch import DevicePrefetcher, normalize_batch
from violet_core.data.device_batch import to_device as to_device  # the step's copy for callers that batch by hand
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


class _EpochItems(Dataset):
    """`items[(epoch, index)]`: item `index` of `dataset` as drawn for `epoch`. A worker keeps its copy
    of the dataset for the whole run, so the epoch comes with each index instead of through `set_epoch`
    in the main process."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        epoch, index = key
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        return self.dataset[index]


class _Schedule:
    """The loader's batch sampler: this rank's batches of (epoch, index) from `start` on, epoch after
    epoch without end. `start` = (epoch, batches of it already used, its order) is set by the stream
    before each iterator is made; no reference back to the stream, so no reference cycle keeps the
    workers alive."""

    def __init__(self, num_items: int, batch_size: int, seed: int, dist: Dist) -> None:
        self.num_items, self.batch_size, self.seed, self.dist = num_items, batch_size, seed, dist
        self.start: tuple[int, int, list[int]] = (0, 0, [])

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch, position, order = self.start
        while True:
            for batch in rank_batches(order, self.batch_size, self.dist)[position:]:
                yield [(epoch, index) for index in batch]
            epoch, position = epoch + 1, 0
            order = epoch_order(self.num_items, self.seed, epoch)


class BatchStream:
    """Endless batches on `device` in the order of `epoch_batches`, resumable from `state_dict()`.

    Each batch is drawn from one run-long DataLoader (module docstring), copied to `device` one batch
    ahead, cropped and flipped there when its dataset left that to the device (`apply_pending_crop`),
    given to `fill` while its video is still uint8 (online targets: `OnlineTargets.fill`) and
    then normalised there (`normalize_batch`). `position` counts the batches of the current epoch
    handed out; the loader's workers and the copy ahead may have read further, but those batches were
    never used and are read again after a resume.
    """

    def __init__(self, dataset: Dataset, collate: Callable[[list], dict], batch_size: int, seed: int,
                 dist: Dist, device: torch.device, num_workers: int = 0,
                 fill: Callable[[dict], dict] | None = None) -> None:
        self.dataset, self.collate, self.batch_size, self.seed = dataset, collate, batch_size, seed
        self.dist, self.device, self.num_workers, self.fill = dist, device, num_workers, fill
        self.num_items = len(dataset)
        self.per_epoch = batches_per_epoch(self.num_items, batch_size, dist)
        self.epoch, self.position = 0, 0
        self._order: list[int] | None = None
        self._schedule = _Schedule(self.num_items, batch_size, seed, dist)
        self._loader: DataLoader | None = None
        self._batches: DevicePrefetcher | None = None

    def __iter__(self) -> "BatchStream":
        return self

    def __next__(self) -> dict:
        if self._batches is None:
            self._batches = DevicePrefetcher(iter(self._data_loader()), self.device)
        if self.position >= self.per_epoch:
            self.epoch, self.position, self._order = self.epoch + 1, 0, None
        batch = apply_pending_crop(next(self._batches))
        self.position += 1
        if self.fill is not None:
            batch = self.fill(batch)
        return normalize_batch(batch)

    def _data_loader(self) -> DataLoader:
        """The run's loader, its sampler set to continue from (epoch, position)."""
        self._schedule.start = (self.epoch, self.position, self._current_order())
        if self._loader is None:
            workers = self.num_workers
            # its own generator: the worker base seed must not come from (and advance) the global one
            self._loader = DataLoader(_EpochItems(self.dataset), batch_sampler=self._schedule, collate_fn=self.collate,
                                      num_workers=workers, pin_memory=self.device.type == "cuda",
                                      persistent_workers=workers > 0,
                                      generator=torch.Generator().manual_seed(self.seed * _EPOCH_STRIDE))
        return self._loader

    def _current_order(self) -> list[int]:
        if self._order is None:
            self._order = epoch_order(self.num_items, self.seed, self.epoch)
        return self._order

    def state_dict(self) -> dict[str, Any]:
        """Plain data: ints and this epoch's order as an int64 tensor (N,)."""
        order = self._current_order()
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
        # a fresh iterator of the same loader (the same workers) continues from there; batches read
        # ahead of the old position are dropped
        self.epoch, self.position, self._order, self._batches = int(state["epoch"]), int(state["position"]), order, None
