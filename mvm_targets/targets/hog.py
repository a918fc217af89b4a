"""`hog`: histograms of oriented gradients (docs/method.md §4.2), in two variants.

- `paper`: what the official VIOLETv2 code regresses, the *visualisation* image of
  `skimage.feature.hog(x, orientations=9, pixels_per_cell=(8, 8), cells_per_block=(2, 2),
  visualize=True, channel_axis=2)[1]` on the ImageNet-normalised float32 frame: per 8x8 cell, one
  radius-3 line segment per orientation bin, drawn with the cell's mean gradient magnitude in that
  bin (dominant RGB channel per pixel, no block normalisation; skimage's truncated end points make
  bins 2/3 and 5/6 draw the same segment). Dense, (T, S, S).
- `maskfeat`: MaskFeat-style features: per-channel 9-bin cell histograms of the [0, 1] frame, each
  L2-normalised over its bins, grouped by 32-px patch. (T, (S/32)^2, 4*4*3*9 = 432).

Both equal skimage 0.26 bit for bit before the float16 cast; `hog_kernels` explains how. On the
2-core development machine they run at ~2,000-3,000 frames/s at 224^2, against ~10 frames/s for
skimage's rendering path and ~25 for its three single-channel calls (benchmarks/bench_hog.py).

Augmentations (`hog_augmentation`):
- Flip: recomputed from the mirrored frames. A flip turns an unsigned orientation theta into
  (180 - theta) mod 180, so mass in bin i moves to bin n-1-i, except mass at exactly 0 degrees (a
  pixel with no vertical gradient: every pixel of the first and last rows, flat rows of texture),
  which stays in bin 0 because bins are half-open [k, k+1) * 180/n. The stored histograms do not say
  how much of bin 0's mass sat at exactly 0 degrees, so no mapping of the stored target is exact;
  the paper rendering is not even mirror-symmetric (skimage draws each cell's segments around pixel
  (cell/2, cell/2), half a pixel off the cell's centre), and a flip reverses the order in which a
  cell's float32 sums run. The kernels are fast enough to recompute per training item.
- Crop (aligned with the cells, as every grid-aligned crop is): a cell's value depends only on the
  pixels of the cell and their 4-neighbours, and skimage sets the gradient across the frame's edge to
  0. So the stored target restricted to the crop equals the target of the cropped frames in every
  cell except those touching a crop edge that lies inside the frame (one cell deep).
"""

from __future__ import annotations

import functools
from typing import Any, Mapping

import numpy as np

from mvm_targets.targets import hog_kernels
from mvm_targets.targets.half import to_float16
from mvm_targets.targets.registry import UnknownTargetError, register_target
from mvm_targets.targets.spec import (Augmentation, CropRule, FlipRule, Grid, PATCH_PX, PaperScaling, TargetSpec,
                                      register_augmentation)

HOG_VERSION = 1
VARIANTS = ("paper", "maskfeat")
CHUNK_FRAMES = 32  # frames per kernel call in `compute` (16 per core on two cores)

_DESCRIPTIONS = {
    "paper": (
        "VIOLETv2's HOG target: skimage.feature.hog(orientations, pixels_per_cell=(cell, cell), "
        "cells_per_block=(2, 2), visualize=True, channel_axis=2)[1], the hog_image rendering (not the "
        "descriptor), of the ImageNet-normalised float32 frame; (T, S, S) float16, bit-equal to skimage "
        "before the cast"),
    "maskfeat": (
        "MaskFeat-style HOG: per RGB channel of the [0, 1] float32 frame, cell histograms of unsigned "
        "orientation (skimage, cells_per_block=(1, 1), block_norm='L2', eps=1e-5), grouped per 32-px "
        "patch as (cell_row, cell_col, channel, bin); (T, (S/32)^2, (32/cell)^2 * 3 * orientations) float16"),
}


class HogTarget:
    """The `hog` target; `build_hog(variant)` makes one.

    `compute(frames)` takes (B, T, S, S, 3) uint8 with S a multiple of 32 and returns
    `{"data": (B, *spec.clip_shape(T, S)) float16}`:

    - paper: data[b, t] is the (S, S) hog_image of frame t.
    - maskfeat: data[b, t, p, ((i * k + j) * 3 + ch) * O + o] is bin o of channel ch in cell (i, j)
      of patch p, k = 32 / cell cells per patch side, O = orientations; patches run row-major over
      the (S/32, S/32) grid, so at S=224, cell=8: (T, 49, 4 * 4 * 3 * 9 = 432), index
      (cell_row, cell_col, channel, bin) inside a patch.

    `compute_float32(frames)` returns the same array in float32, before the cast (the kernels' exact
    result, equal to skimage's).
    """

    def __init__(self, variant: str, orientations: int = 9, cell: int = 8) -> None:
        if variant not in VARIANTS:
            raise UnknownTargetError(
                f"unknown variant '{variant}' for target 'hog'; known variants: {', '.join(VARIANTS)}")
        if not 1 <= orientations <= hog_kernels.MAX_ORIENTATIONS:
            raise ValueError(f"orientations must be in [1, {hog_kernels.MAX_ORIENTATIONS}], got {orientations}")
        if cell < 2 or PATCH_PX % cell:
            raise ValueError(f"cell must divide the {PATCH_PX}-px patch and be at least 2, got {cell}")
        self.variant = variant
        self.orientations = orientations
        self.cell = cell
        per_patch = (PATCH_PX // cell) ** 2 * 3 * orientations
        if variant == "paper":
            grid, clip_shape = Grid.DENSE, (lambda t, s: (t, s, s))
        else:
            grid, clip_shape = Grid.PATCH, (lambda t, s: (t, (s // PATCH_PX) ** 2, per_patch))
        params = {"orientations": orientations, "cell": cell}
        self.spec = TargetSpec(
            name="hog", variant=variant, version=HOG_VERSION, grid=grid, dtype="float16", loss="l1",
            clip_shape=clip_shape, params=params, description=_DESCRIPTIONS[variant],
            augmentation=hog_augmentation(variant, params),
            # released code: masked mean for the HOG image; a MaskFeat descriptor per patch is treated
            # as a feature (summed over D per masked patch, / 3, as SIF)
            paper_scaling=PaperScaling("mean", 1.0, "masked mean") if grid is Grid.DENSE
            else PaperScaling("sum", 1 / 3, "as SIF: sum over D per masked patch / 3"),
        )

    def compute(self, frames: np.ndarray) -> dict[str, np.ndarray]:
        """frames: (B, T, S, S, 3) uint8 -> {"data": (B, *spec.clip_shape(T, S)) float16}."""
        batch, num_frames, size = _check_clips(frames)
        flat = frames.reshape(batch * num_frames, size, size, 3)
        per_frame = self.spec.clip_shape(num_frames, size)[1:]
        data = np.empty((len(flat), *per_frame), dtype=np.float16)
        # Chunks of frames through one float32 buffer: it stays in cache for the float16 cast, and a
        # fresh float32 array as large as the batch (~50 MB for 256 paper frames) made the whole call
        # up to ~40% slower on two cores, in page faults.
        scratch = np.empty((min(CHUNK_FRAMES, len(flat)), *per_frame), dtype=np.float32)
        for start in range(0, len(flat), CHUNK_FRAMES):
            stop = min(start + CHUNK_FRAMES, len(flat))
            part = self._kernel(flat[start:stop], scratch[:stop - start])
            to_float16(part, out=data[start:stop])
        return {"data": data.reshape(batch, num_frames, *per_frame)}

    def compute_float32(self, frames: np.ndarray) -> np.ndarray:
        """`compute(frames)["data"]` before the float16 cast."""
        batch, num_frames, size = _check_clips(frames)
        out = self._kernel(frames.reshape(batch * num_frames, size, size, 3))
        return out.reshape(batch, *self.spec.clip_shape(num_frames, size))

    def _kernel(self, frames: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """(N, S, S, 3) uint8 -> (N, *per-frame target shape) float32."""
        if self.variant == "paper":
            return hog_kernels.paper_hog_image(frames, self.orientations, self.cell, out=out)
        return hog_kernels.maskfeat_patch_hog(frames, self.orientations, self.cell, PATCH_PX, out=out)


def _check_clips(frames: np.ndarray) -> tuple[int, int, int]:
    """Validate (B, T, S, S, 3) uint8 with S a multiple of the patch size; return (B, T, S)."""
    if not isinstance(frames, np.ndarray) or frames.ndim != 5 or frames.shape[-1] != 3:
        raise ValueError(f"hog expects frames shaped (B, T, S, S, 3), got {getattr(frames, 'shape', type(frames))}")
    if frames.dtype != np.uint8:
        raise ValueError(f"hog expects uint8 frames, got {frames.dtype}")
    batch, num_frames, height, width, _ = frames.shape
    if height != width:
        raise ValueError(f"hog expects square S x S frames, got {height} x {width}")
    if height % PATCH_PX or height == 0:
        raise ValueError(f"hog needs the frame size S to be a positive multiple of {PATCH_PX} (the patch size), "
                         f"got S={height}")
    return batch, num_frames, height


def mirror_orientation_bins(hist_bins_last: np.ndarray) -> np.ndarray:
    """Map orientation bin i to bin n - 1 - i along the last axis (n bins), e.g. for 9 bins 0<->8, 4<->4.

    A horizontal flip turns an unsigned gradient orientation theta into 180 - theta, so the bin of
    [i, i+1) * 180/n lands on (n-1-i, n-i] * 180/n: bin n-1-i, except for an orientation exactly on
    a bin edge: 0 degrees (no vertical gradient component) stays in bin 0, and for even n 90 degrees
    stays in bin n/2 (with 9 bins no other edge is ever hit exactly). The histograms do not record
    which mass sat on an edge, so this mapping is the flipped target only for frames without such
    pixels; the trainer recomputes HOG on flipped frames instead (module docstring).
    The last axis must be the bins: reshape a flattened maskfeat vector to (..., 3, n) first.
    """
    return np.ascontiguousarray(np.asarray(hist_bins_last)[..., ::-1])


def flip_maskfeat(data: np.ndarray, size: int, orientations: int = 9, cell: int = 8) -> np.ndarray:
    """The naive mirror of a maskfeat target: data (..., (S/32)^2, D) -> same shape, with patch
    columns, cell columns and bins mirrored. It is the target of the flipped frames only when no
    pixel has a 0-degree gradient (`mirror_orientation_bins`), which the first and last rows of every
    frame have; kept to show and measure that, never used to flip a training clip."""
    k = PATCH_PX // cell
    p = size // PATCH_PX
    grid = data.reshape(*data.shape[:-2], p, p, k, k, 3, orientations)
    grid = grid[..., :, ::-1, :, ::-1, :, :]  # patch column, then cell column inside the patch
    return mirror_orientation_bins(grid).reshape(data.shape)


@register_augmentation("hog")
def hog_augmentation(variant: str, params: Mapping[str, Any]) -> Augmentation:
    """Both variants: flips recomputed from the mirrored frames, crops exact one cell away from an
    inner crop edge (module docstring)."""
    orientations, cell = int(params.get("orientations", 9)), int(params.get("cell", 8))
    return Augmentation(
        flip=FlipRule.RECOMPUTE, recompute=functools.partial(recompute_clip, variant, orientations, cell),
        crop=CropRule.BORDER, crop_margin_px=cell,
        note="0-degree gradients stay in bin 0 under a flip, so no mapping of stored histograms is exact")


def recompute_clip(variant: str, orientations: int, cell: int, frames: np.ndarray) -> dict[str, np.ndarray]:
    """One clip's frames (T, S, S, 3) uint8 -> {"data": (T, ...) float16}, what `compute` stores for it."""
    target = _cached_target(variant, orientations, cell)
    return {"data": target.compute(np.ascontiguousarray(frames)[None])["data"][0]}


@functools.lru_cache(maxsize=None)
def _cached_target(variant: str, orientations: int, cell: int) -> HogTarget:
    return HogTarget(variant, orientations=orientations, cell=cell)


@register_target("hog", variants=VARIANTS)
def build_hog(variant: str, orientations: int = 9, cell: int = 8) -> HogTarget:
    """`paper` (VIOLETv2's skimage hog_image, dense) or `maskfeat` (per-channel L2-normalised cell
    histograms, per patch)."""
    return HogTarget(variant, orientations=orientations, cell=cell)
