"""`pixel`: the cached frames themselves (spec §4.1).

The trainer regresses ImageNet-normalised RGB; normalisation happens there, so the store keeps
the uint8 frames once and this target is never written a second time (`stored=False`).
"""

from __future__ import annotations

import numpy as np

from mvm_targets.targets.registry import register_target
from mvm_targets.targets.spec import Grid, TargetSpec

PIXEL_SPEC = TargetSpec(
    name="pixel", variant="rgb", version=1, grid=Grid.DENSE, dtype="uint8", loss="l1",
    clip_shape=lambda t, s: (t, 3, s, s), stored=False,
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
