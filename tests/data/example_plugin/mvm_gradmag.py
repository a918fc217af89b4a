"""`gradmag`: the gradient magnitude of each grey frame, a dense MVM target defined outside mvm_targets.

Grey is ITU-R BT.601 luma of the frame in [0, 1]; the gradient is the central difference along each
axis with the frame's edge pixels repeated (so a frame's border has one-sided halves), and the target
is sqrt(gx^2 + gy^2) per pixel, (T, S, S) float16, regressed with L1.

Declarations: a horizontal flip negates gx and keeps gy, so the magnitude of a mirrored frame is the
mirrored magnitude (`exact`); a grid-aligned crop changes values only in the one-pixel ring where the
cropped frame repeats its new edge instead of seeing the neighbour (`border`, 1 px).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from mvm_targets.targets.registry import register_target
from mvm_targets.targets.spec import (Augmentation, CropRule, FlipRule, Grid, TargetSpec, check_clip_batch,
                                      register_augmentation)

LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def gradient_magnitude(frames: np.ndarray) -> np.ndarray:
    """(B, T, S, S, 3) uint8 -> (B, T, S, S) float32 gradient magnitude of the grey frames."""
    grey = (frames.astype(np.float32) / 255.0) @ LUMA
    padded = np.pad(grey, [(0, 0), (0, 0), (1, 1), (1, 1)], mode="edge")
    gx = (padded[:, :, 1:-1, 2:] - padded[:, :, 1:-1, :-2]) / 2
    gy = (padded[:, :, 2:, 1:-1] - padded[:, :, :-2, 1:-1]) / 2
    return np.sqrt(gx * gx + gy * gy)


def mirror(data: np.ndarray, extras: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """One clip's (T, S, S) target -> the target of the mirrored clip."""
    return data[..., ::-1], extras


@register_augmentation("gradmag")
def gradmag_augmentation(variant: str, params: Mapping[str, Any]) -> Augmentation:
    return Augmentation(flip=FlipRule.EXACT, mirror=mirror, crop=CropRule.BORDER, crop_margin_px=1,
                        note="central differences: sign-symmetric under a mirror, one pixel of support")


def clip_shape(num_frames: int, size: int) -> tuple[int, ...]:
    """One clip's data shape, (T, S, S); a module-level function so that the target pickles."""
    return (num_frames, size, size)


class GradMagTarget:
    def __init__(self, variant: str) -> None:
        params = {"grey": "BT.601 luma of [0, 1] RGB", "gradient": "central differences, edge repeated"}
        self.spec = TargetSpec(name="gradmag", variant=variant, version=1, grid=Grid.DENSE, dtype="float16",
                               loss="l1", clip_shape=clip_shape, params=params,
                               description="grey-frame gradient magnitude, (T, S, S) float16",
                               augmentation=gradmag_augmentation(variant, params))

    def compute(self, frames: np.ndarray) -> dict[str, np.ndarray]:
        """frames: (B, T, S, S, 3) uint8 -> {"data": (B, T, S, S) float16}."""
        check_clip_batch(frames)
        return {"data": gradient_magnitude(frames).astype(np.float16)}


@register_target("gradmag", variants=("central",))
def build_gradmag(variant: str) -> GradMagTarget:
    return GradMagTarget(variant)
