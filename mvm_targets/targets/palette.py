"""`palette`: a positive control for the built-in synthetic dataset, made from its ground truth.

The synthetic renderer draws objects in six saturated colours that never occur in its muted
backgrounds, and every caption names its objects' colours. This target marks which of those colours
a clip contains, as the same 6-vector at every 32-px patch of every frame. A masked patch can then
only be predicted from the rest of the clip, and predicting it means representing exactly what the
captions talk about: a target that must help retrieval. A harness that cannot show this effect
cannot be trusted with a real one, so the demo grid trains it beside the real targets.

Regressed with L2: a clip holds one to three of the six colours, so each entry is 0 more often than
1, and the L1 minimiser (the median) is the all-zero head, which teaches the encoder nothing; the L2
minimiser is the probability of the colour, which the encoder can only approach by seeing colours.
It is meaningful only on the synthetic dataset (`mvmtargets synth`).
"""

from __future__ import annotations

import numpy as np

from mvm_targets.synth.scene import COLORS
from mvm_targets.targets.registry import register_target
from mvm_targets.targets.spec import (PATCH_PX, Augmentation, CropRule, FlipRule, Grid, TargetSpec,
                                      register_augmentation)

DISTANCE = 60  # RGB distance within which a pixel counts as a palette colour
MIN_PIXELS = 4  # pixels of one colour in one patch before the colour counts (ignores codec fringes)


def mirror_patch_grid(data: np.ndarray, extras: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(T, h*w, 6) -> the same map with each row of patches reversed (a mirrored clip has the same colours)."""
    count, patches, colours = data.shape
    side = int(round(patches ** 0.5))
    return data.reshape(count, side, side, colours)[:, :, ::-1].reshape(count, patches, colours), extras


@register_augmentation("palette")
def palette_augmentation(variant: str, params: dict) -> Augmentation:
    """A flip keeps the clip's colours (exact); a crop may cut an object out of view, so the cropped
    clip's own target could differ from the whole clip's (context)."""
    return Augmentation(flip=FlipRule.EXACT, mirror=mirror_patch_grid, crop=CropRule.CONTEXT,
                        note="colours present in the whole clip")


class PaletteTarget:
    """(T, h*w, 6) float16: 1 for each palette colour present anywhere in the clip, at every patch."""

    def __init__(self) -> None:
        self.palette = np.array(list(COLORS.values()), dtype=np.float32)  # (6, 3)
        self.spec = TargetSpec(
            name="palette", variant="truth", version=1, grid=Grid.PATCH, dtype="float16", loss="l2",
            clip_shape=lambda t, s: (t, (s // PATCH_PX) ** 2, len(COLORS)),
            params={"threshold": DISTANCE, "min_pixels": MIN_PIXELS, "scope": "clip"},
            augmentation=palette_augmentation("truth", {}),
            description="positive control for the synthetic dataset: the clip's object colours at every patch")

    def compute(self, frames: np.ndarray) -> dict[str, np.ndarray]:
        """frames: (B, T, S, S, 3) uint8 -> {"data": (B, T, (S/32)^2, 6) float16}."""
        batch, count, size = frames.shape[:3]
        side, colours = size // PATCH_PX, len(self.palette)
        present = np.zeros((batch, colours), dtype=bool)
        for index, colour in enumerate(self.palette):  # one colour at a time keeps memory at (B, T, S, S)
            near = np.linalg.norm(frames.astype(np.float32) - colour, axis=-1) < DISTANCE
            per_patch = near[:, :, : side * PATCH_PX, : side * PATCH_PX].reshape(
                batch, count, side, PATCH_PX, side, PATCH_PX).sum(axis=(3, 5))
            present[:, index] = (per_patch >= MIN_PIXELS).any(axis=(1, 2, 3))
        data = np.broadcast_to(present[:, None, None, :], (batch, count, side * side, colours))
        return {"data": np.ascontiguousarray(data, dtype=np.float16)}


@register_target("palette", variants=("truth",), in_all=False)  # meaningless on real videos
def build_palette(variant: str) -> PaletteTarget:
    return PaletteTarget()
