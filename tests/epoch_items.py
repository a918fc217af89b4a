"""A dataset whose items say where they came from, for tests of the batch stream's order and workers."""

from __future__ import annotations

import os

import torch
from torch.utils.data import Dataset


class EpochIndexItems(Dataset):
    """Item i of epoch e: {"video": tensor([i, e]), "pid": the id of the process that built it}."""

    def __init__(self, size: int) -> None:
        self.size, self.epoch = size, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict:
        return {"video": torch.tensor([index, self.epoch]), "pid": os.getpid()}


def collate_epoch_items(items: list[dict]) -> dict:
    """(B, 2) [index, epoch] rows under "video", and the builders' pids."""
    return {"video": torch.stack([item["video"] for item in items]), "pids": [item["pid"] for item in items]}
