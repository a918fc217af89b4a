"""`pixel`: the cached frames themselves (spec §4.1).

The trainer regresses ImageNet-normalised RGB; normalisation happens there, so the store keeps
the uint8 frames once and this target is never written a second time (`stored=False`).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from mvm_targets.targets.registry import register_target
from mvm_targets.targets.spec import Augmentation, CropRule, FlipRule, Grid, TargetSpec, register_augmentation


def mirror_pixels(data: np.ndarray, extras: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(T, 3, S, S) frames -> the mirrored frames: the pixel target of a mirrored clip is its mirror image."""
    return data[..., ::-1], extras


@register_augmentation("pixel")
def pixel_augmentation(variant: str, params: Mapping[str, Any]) -> Augmentation:
    """Pixels are the frames: a flip mirrors them and a crop of them is the cropped frames, bit for bit."""
    return Augmentation(flip=FlipRule.EXACT, mirror=mirror_pixels, crop=CropRule.EXACT,
                        note="the target is the frames themselves")


PIXEL_SPEC = TargetSpec(
    name="pixel", variant="rgb", version=1, grid=Grid.DENSE, dtype="uint8", loss="l1",
    clip_shape=lambda t, s: (t, 3, s, s), stored=False, augmentation=pixel_augmentation("rgb", {}),
    description="the canonical frames, (T, 3, S, S) uint8; ImageNet-normalised by the trainer",
)


class PixelTarget:
    spec = PIXEL_SPEC

    def compute(self, frames: np.ndarray) -> dict[str, np.ndarray]:
        """frames: (B, T, S, S, 3) uint8 -> {"data": (B, T, 3, S, S) uint8}."""
        return {"data": np.ascontiguousarray(frames.transpose(0, 1, 4, 2, 3))}


@register_target("pixel", variants=("rgb",))
def build_pixel(variant: str) -> PixelTarget:
    return PixelTarget()
