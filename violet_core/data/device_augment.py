"""The crop and flip of a batch's frames, on the training device (docs/method.md §1).

With `data.augment_on: device` the dataset draws every augmentation as before and applies it to the
targets, but hands over the frames of the temporal window uncropped and unflipped (uint8, at the cached
size), with the crop size under PENDING_CROP. Here the whole batch is cropped and flipped in one gather,
using each item's own draw (`aug`: top and left in 32-px patches, flip 0/1):

    video (B, T, Sc, Sc, 3) uint8 -> (B, T, S, S, 3) uint8,
    item b = frames[top_b*32 : top_b*32 + S, left_b*32 : left_b*32 + S], mirrored left-right if flip_b

which are the pixels the dataset gives with `data.augment_on: loader` (the crop of the mirrored window
taken at the mirrored position equals the mirror of the crop), so both settings train on the same data.
A gather of uint8 values is exact on any device.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from violet_core.target_info import PATCH_PX

# batch field: the crop size in px still to be applied to "video" on the device (absent: already done)
PENDING_CROP = "video_crop_px"


def crop_and_flip(video: Tensor, top: Tensor, left: Tensor, flip: Tensor, size_px: int) -> Tensor:
    """(B, T, Sc, Sc, 3) frames -> (B, T, S, S, 3), S = `size_px`: item b's S x S crop at patch
    (top[b], left[b]), mirrored left-right where flip[b] is nonzero. top, left, flip: (B,) ints.

    Raises:
        ValueError: S is not a positive multiple of 32 or exceeds the frames.
    """
    batch, _, height, width, _ = video.shape
    if size_px <= 0 or size_px % PATCH_PX or size_px > min(height, width):
        raise ValueError(f"crop size must be a positive multiple of {PATCH_PX} px within the {height}x{width} "
                         f"frames, got {size_px}")
    if batch == 0:
        return video[:, :, :size_px, :size_px]
    rows = top.to(video.device, torch.int64) * PATCH_PX
    cols = left.to(video.device, torch.int64) * PATCH_PX
    # the draws are not checked against the frame size here: that would wait for the device every
    # step; the dataset draws them inside the patch grid (`check_crop_size`)
    offsets = torch.arange(size_px, device=video.device)
    mirrored = flip.to(video.device).bool()[:, None]
    row_index = rows[:, None] + offsets  # (B, S)
    col_index = cols[:, None] + torch.where(mirrored, offsets.flip(0), offsets)  # (B, S)
    items = torch.arange(batch, device=video.device)[:, None, None]
    # advanced indices on (batch, row, column) around the frame axis: the result is (B, S, S, T, 3)
    picked = video.permute(0, 2, 3, 1, 4)[items, row_index[:, :, None], col_index[:, None, :]]
    return picked.permute(0, 3, 1, 2, 4)


def apply_pending_crop(batch: dict[str, Any]) -> dict[str, Any]:
    """`batch` with its video cropped and flipped by its `aug` draws when PENDING_CROP asks for it
    (a new dict without that field); otherwise `batch` itself."""
    if PENDING_CROP not in batch:
        return batch
    out = dict(batch)
    size_px = int(out.pop(PENDING_CROP))
    aug = batch["aug"]
    out["video"] = crop_and_flip(batch["video"], aug["top"], aug["left"], aug["flip"], size_px)
    return out
