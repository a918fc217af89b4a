"""`pixel`: the cached frames themselves (docs/method.md §4.1).

The trainer regresses ImageNet-normalised RGB; normalisation happens there, so the store keeps
the uint8 frames once and this target is never written a second time (`stored=False`): its
`derive` function turns a clip's cached frames into the target wherever it is read.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from mvm_targets.targets.registry import register_target
from mvm_targets.targets.spec import (Augmentation, CropRule, FlipRule, Grid, PaperScaling, TargetSpec,
                                      register_augmentation)


def mirror_pixels(data: np.ndarray, extras: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(T, 3, S, S) frames -> the mirrored frames: the pixel target of a mirrored clip is its mirror image."""
    return data[..., ::-1], extras


@register_augmentation("pixel")
def pixel_augmentation(variant: str, params: Mapping[str, Any]) -> Augmentation:
    """Pixels are the frames: a flip mirrors them and a crop of them is the cropped frames, bit for bit."""
    return Augmentation(flip=FlipRule.EXACT, mirror=mirror_pixels, crop=CropRule.EXACT,
                        note="the target is the frames themselves")


def channels_first(frames: np.ndarray) -> np.ndarray:
    """One clip's frames (T, S, S, 3) uint8 -> the pixel target (T, 3, S, S) uint8."""
    return np.ascontiguousarray(frames.transpose(0, 3, 1, 2))


def frame_pictures(data: np.ndarray, size: int) -> list[np.ndarray]:
    """(T, 3, S, S) uint8 -> the frames themselves, (S, S, 3) uint8 each."""
    return [np.ascontiguousarray(frame.transpose(1, 2, 0)) for frame in data]


PIXEL_SPEC = TargetSpec(
    name="pixel", variant="rgb", version=1, grid=Grid.DENSE, dtype="uint8", loss="l1",
    clip_shape=lambda t, s: (t, 3, s, s), stored=False, derive=channels_first, picture=frame_pictures,
    augmentation=pixel_augmentation("rgb", {}), normalize_as_input=True,
    paper_scaling=PaperScaling("mean", 1 / 3, "released code: mean L1 per masked pixel-channel / 3"),
    description="the canonical frames, (T, 3, S, S) uint8; ImageNet-normalised by the trainer",
)


class PixelTarget:
    spec = PIXEL_SPEC

    def compute(self, frames: np.ndarray) -> dict[str, np.ndarray]:
        """frames: (B, T, S, S, 3) uint8 -> {"data": (B, T, 3, S, S) uint8}."""
        return {"data": np.stack([channels_first(clip) for clip in frames])}


@register_target("pixel", variants=("rgb",))
def build_pixel(variant: str) -> PixelTarget:
    return PixelTarget()
