"""`pixelnorm`: VideoMAE's reconstruction target, per-patch normalised pixels on the 32-px patch grid.

VideoMAE regresses (MSE) the pixels of each masked patch after normalising them by that patch's own
statistics: the frames are taken in [0, 1], each patch's values are grouped per channel, and each
channel is shifted by its mean over the patch's pixels and divided by its unbiased standard deviation
plus 1e-6 (`(x - mean) / (sqrt(var) + 1e-6)`, `torch.var` with its default unbiased estimator). The
flattened patch lists the pixels row by row with the 3 channels innermost, as VideoMAE's
`b n (p c)` layout. VideoMAE's patches are 2 x 16 x 16 tubelets; here a patch is one 32 x 32 block
of one frame, VIOLETv2's video token, so the target is (T, (S/32)^2, 32 * 32 * 3) float16.

A patch's values depend on that patch alone, so a grid-aligned crop keeps them exactly, and the
target of a mirrored clip is the stored one with the patch columns and each patch's pixel columns
reversed (the statistics of a patch do not change under a mirror).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from mvm_targets.targets.half import to_float16
from mvm_targets.targets.patch_grid import PatchClipShape, check_frames, patch_grid_side
from mvm_targets.targets.registry import register_target
from mvm_targets.targets.spec import (PATCH_PX, Augmentation, CropRule, FlipRule, Grid, TargetSpec,
                                      register_augmentation)

EPS = 1e-6  # VideoMAE's: added to the standard deviation, not to the variance
DIM = PATCH_PX * PATCH_PX * 3


def normalise_patches(frames: np.ndarray) -> np.ndarray:
    """(B, T, S, S, 3) uint8 -> (B, T, (S/32)^2, 32*32*3) float32, each patch normalised per channel."""
    batch, num_frames, size = check_frames(frames, "pixelnorm")
    side = patch_grid_side(size)
    x = frames.astype(np.float32) / 255.0
    # (B, T, gy, py, gx, px, C) -> (B, T, gy, gx, py*px, C): one row of pixels per patch
    x = x.reshape(batch, num_frames, side, PATCH_PX, side, PATCH_PX, 3).transpose(0, 1, 2, 4, 3, 5, 6)
    x = x.reshape(batch, num_frames, side * side, PATCH_PX * PATCH_PX, 3).astype(np.float64)
    mean = x.mean(axis=3, keepdims=True)
    std = np.sqrt(x.var(axis=3, ddof=1, keepdims=True))
    return ((x - mean) / (std + EPS)).astype(np.float32).reshape(batch, num_frames, side * side, DIM)


def mirror_patches(data: np.ndarray, extras: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(T, (S/32)^2, 32*32*3) -> the target of the mirrored clip: patch columns and pixel columns reversed."""
    num_frames, cells, _ = data.shape
    side = int(round(cells ** 0.5))
    grid = data.reshape(num_frames, side, side, PATCH_PX, PATCH_PX, 3)[:, :, ::-1, :, ::-1]
    return np.ascontiguousarray(grid).reshape(data.shape), extras


def picture(data: np.ndarray, size: int) -> list[np.ndarray]:
    """One clip's (T, (S/32)^2, 3072) target -> a (S, S, 3) uint8 picture per frame: the patches put back
    in place, each channel's normalised value in [-2, 2] shown from black to full intensity."""
    side = size // PATCH_PX
    grid = data.astype(np.float32).reshape(-1, side, side, PATCH_PX, PATCH_PX, 3).transpose(0, 1, 3, 2, 4, 5)
    images = np.clip((grid.reshape(-1, size, size, 3) + 2) * (255 / 4), 0, 255).astype(np.uint8)
    return list(images)


@register_augmentation("pixelnorm")
def pixelnorm_augmentation(variant: str, params: Mapping[str, Any]) -> Augmentation:
    """Exact under flips and grid-aligned crops: each patch is normalised by its own statistics only."""
    return Augmentation(flip=FlipRule.EXACT, mirror=mirror_patches, crop=CropRule.EXACT,
                        note="each patch is normalised by its own mean and std")


class PixelNormTarget:
    """(B, T, S, S, 3) uint8 -> {"data": (B, T, (S/32)^2, 3072) float16}."""

    def __init__(self, variant: str) -> None:
        params = {"patch": f"{PATCH_PX}x{PATCH_PX} per frame", "scale": "pixels / 255",
                  "normalisation": "per patch and channel: (x - mean) / (unbiased std + 1e-6)",
                  "layout": "pixels row-major, channels innermost"}
        self.spec = TargetSpec(
            name="pixelnorm", variant=variant, version=1, grid=Grid.PATCH, dtype="float16", loss="l2",
            clip_shape=PatchClipShape(DIM), params=params,
            description="VideoMAE's per-patch normalised pixels, (T, (S/32)^2, 3072) float16",
            augmentation=pixelnorm_augmentation(variant, params), picture=picture,
            paper_scaling=None,  # not one of the paper's targets: the plain masked mean in every mode
        )

    def compute(self, frames: np.ndarray) -> dict[str, np.ndarray]:
        """frames: (B, T, S, S, 3) uint8 -> {"data": (B, T, (S/32)^2, 3072) float16}."""
        return {"data": to_float16(normalise_patches(frames))}


@register_target("pixelnorm", variants=("videomae",))
def build_pixelnorm(variant: str) -> PixelNormTarget:
    """`pixelnorm:videomae`: see the module docstring; it takes no options."""
    return PixelNormTarget(variant)
