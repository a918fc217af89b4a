"""From the (B, T, h, w) patch-grid mask to pixels: blocks for dense losses, zeroed patches for the encoder."""

from __future__ import annotations

import torch


def upsample_mask(mask: torch.Tensor, factor: int) -> torch.Tensor:
    """(B, T, h, w) -> (B, T, h * factor, w * factor): each cell becomes a factor x factor block."""
    if mask.dim() != 4:
        raise ValueError(f"mask must be (B, T, h, w), got shape {tuple(mask.shape)}")
    return mask.repeat_interleave(factor, dim=2).repeat_interleave(factor, dim=3)


def apply_video_mask(video: torch.Tensor, mask: torch.Tensor, patch: int = 32) -> torch.Tensor:
    """video (B, T, 3, S, S), mask (B, T, h, w) -> a copy with masked patches set to 0.

    0 in ImageNet-normalised space is the mean colour, which is what the encoder sees; there is no
    learnable mask token.
    """
    batch, frames, _, height, width = video.shape
    if mask.shape != (batch, frames, height // patch, width // patch) or height % patch or width % patch:
        raise ValueError(f"mask {tuple(mask.shape)} does not tile video {tuple(video.shape)} "
                         f"with {patch}-px patches")
    pixels = upsample_mask(mask.to(video.device), patch)
    return video.masked_fill(pixels[:, :, None], 0.0)
