"""Clip augmentations that keep the frames and every cached target consistent.

A clip is the dict `CacheReader[key]` returns, in the STORED layout (numpy, before tensors):
    frames            (T, S, S, 3) uint8
    DENSE target      (T', S, S) or (T', C, S, S), T' = T - frames_needed + 1 (flow: (T-1, 2, S, S))
    PATCH target      (T, h*w, D) feature vectors, h = w = S/32 (vq:v1 ids: (T, h, w))
    TOKEN target      (T, S/8, S/8) ids
    "<ref>/<extra>"   per-frame / per-pair side statistics (e.g. "flow/max_magnitude" (T-1,))
    "frame_indices", "timestamps"  (T,) per-frame metadata
Only the refs named by the given `TargetInfo`s (and their extras) are transformed; a ref absent from
the clip is skipped (e.g. "pixel", which the dataset rebuilds from the augmented frames).

Every function returns a new dict and never writes into the arrays it was given; results may be
views (negative strides included), so convert with np.ascontiguousarray before torch.from_numpy.

Crops stay on the 32-px patch grid (VIOLETv2 masks 32x32 patches, and PATCH/TOKEN targets only exist
on that grid), so a crop of any target is a plain slice of its grid.
"""

from __future__ import annotations

import functools

import numpy as np

from mvm_targets.targets.flow import flip_flow_horizontal, max_magnitude
from mvm_targets.targets.hog import flip_maskfeat
from mvm_targets.targets.hog_kernels import line_stencil
from mvm_targets.targets.spec import TOKEN_PX  # one DALL-E token per 8 x 8 pixels
from violet_core.target_info import PATCH_PX, TargetInfo

PER_FRAME_META = ("frame_indices", "timestamps")

# Targets for which mirroring the stored target gives the target of the mirrored clip. They are
# per-pixel geometric quantities, so the mirror is the same quantity seen in a mirror; the stored
# values remain one estimator's output on the unflipped frames:
#   pixel  bit-exact.
#   flow   the mirrored field with u negated is the motion of the mirrored pair. DIS or RAFT run on
#          the mirrored frames would estimate it slightly differently (they are not flip-equivariant;
#          for DIS at 64 px the two differ by ~0.01 px end-point error, against ~0.8 px without the
#          sign change).
#   depth  likewise for DPT.
# Not exact:
#   hog    (both variants) exact except for gradients at exactly 0 degrees (no vertical difference:
#          every pixel of the first and last image rows, and flat rows of texture). skimage's
#          half-open bins put them in bin 0 before and after a flip; the mirrored histogram has them
#          in bin n-1, the other side of the same 0/180 degree edge. On 16 clips of the 224-px
#          synthetic set up to ~94% of the 8x8 cells hold such a pixel, and the mirrored target
#          differs from the HOG of the mirrored frames by ~14% (paper) / ~28% (maskfeat) of its L1
#          mass. Only recomputing HOG on the flipped frames is exact: the stored histograms do not
#          say how much mass sat exactly at 0 degrees.
#   sif, tvf, mmf, vq: teacher features and codes are not flip-equivariant (a network's output on a
#          mirrored frame is not its mirrored output), so mirroring their patch/token grid is an
#          approximation.
FLIP_EXACT = frozenset({"pixel", "flow", "depth"})


def flip_is_exact(info: TargetInfo) -> bool:
    """Whether `hflip_clip` mirrors this target into the mirrored clip's target (see FLIP_EXACT)."""
    return info.name in FLIP_EXACT


# ------------------------------------------------------------------------------------------------
# Horizontal flip

def hflip_clip(clip: dict, infos: list[TargetInfo]) -> dict:
    """Mirror the frames and every target left-right.

    - DENSE maps flip their last (width) axis; flow also negates u (`flip_flow_horizontal`).
    - hog:paper mirrors within the 8-px cell layout of skimage's rendering (`flip_paper_hog`).
    - hog:maskfeat mirrors patch columns, cell columns and orientation bins (`flip_maskfeat`).
    - other PATCH targets mirror the patch columns of the h x w grid; TOKEN grids flip columns.
    - extras and per-frame metadata are unchanged (a maximum |flow| is flip-invariant).

    Which of these are exact and which approximate (hog at 0-degree gradients, teacher features): see
    FLIP_EXACT.
    """
    out = dict(clip)
    out["frames"] = clip["frames"][:, :, ::-1]
    size = clip["frames"].shape[1]
    for info in infos:
        if info.ref in clip:
            out[info.ref] = _flip_target(info, clip[info.ref], size)
    return out


def flip_paper_hog(data: np.ndarray, orientations: int = 9, cell: int = 8) -> np.ndarray:
    """(..., S, S) hog:paper rendering -> the rendering of the mirrored frame (up to the 0-degree
    bin edge, see FLIP_EXACT).

    skimage draws each cell's bin segments around pixel (cell/2, cell/2), half a pixel right of the
    cell's centre, so a mirrored segment sits one column left of where skimage would draw it. Most
    segments are still the mirror image of the bin they move to (integer truncation of the end
    points), but with 9 bins and 8-px cells the horizontal segment of bin 4 is not: its end pixel
    lands in column 0 of the cell instead of column 7, and a plain mirror is wrong there. Those pixels
    are moved back here; when another configuration's segments cannot be fixed by such single-pixel
    moves the plain mirror is returned.
    """
    out = np.ascontiguousarray(data[..., ::-1])
    for row, src, dst in _paper_hog_moves(orientations, cell) or ():
        moved = out[..., row::cell, src::cell].copy()
        out[..., row::cell, src::cell] = 0
        out[..., row::cell, dst::cell] = moved
    return out


@functools.lru_cache(maxsize=None)
def _paper_hog_moves(orientations: int, cell: int) -> tuple[tuple[int, int, int], ...] | None:
    """Cell-local pixel moves (row, from_col, to_col) that turn the mirrored rendering into the
    rendering of the mirrored histograms; None when single-pixel moves cannot do it."""
    stencil = line_stencil(orientations, cell).astype(bool)
    mirrored = stencil[:, :, ::-1]
    # After a flip, bin o carries what bin n-1-o held, so the mirrored segment of bin o must become
    # the segment that bin n-1-o is drawn with.
    wanted = stencil[::-1]
    moves = []
    for o in range(orientations):
        extra, missing = mirrored[o] & ~wanted[o], wanted[o] & ~mirrored[o]
        if not extra.any() and not missing.any():
            continue
        if extra.sum() != 1 or missing.sum() != 1:
            return None
        (r0, c0), (r1, c1) = np.argwhere(extra)[0], np.argwhere(missing)[0]
        # The move is safe only if no other segment touches either pixel (values there are one bin's).
        if r0 != r1 or mirrored[:, r0, c0].sum() != 1 or wanted[:, r0, c0].any() \
                or wanted[:, r1, c1].sum() != 1 or mirrored[:, r1, c1].any():
            return None
        moves.append((int(r0), int(c0), int(c1)))
    return tuple(moves)


def _flip_target(info: TargetInfo, data: np.ndarray, size: int) -> np.ndarray:
    if info.grid == "dense":
        if info.name == "flow":
            return flip_flow_horizontal(data)
        if info.name == "hog" and info.variant == "paper":
            return flip_paper_hog(data, **_hog_params(info))
        return data[..., ::-1]
    if info.grid == "patch":
        side = size // PATCH_PX
        if info.name == "hog" and info.variant == "maskfeat":
            return flip_maskfeat(data, side * PATCH_PX, **_hog_params(info))
        grid, restore = _patch_grid(data, side, info)
        return restore(grid[:, :, ::-1])
    if info.grid == "token":
        return data[..., ::-1]
    raise ValueError(f"target {info.ref}: unknown grid {info.grid!r}")


def _hog_params(info: TargetInfo) -> dict[str, int]:
    return {"orientations": int(info.params.get("orientations", 9)), "cell": int(info.params.get("cell", 8))}


def _patch_grid(data: np.ndarray, side: int, info: TargetInfo):
    """A PATCH target as a (T, h, w, ...) grid, and the function that puts a (T, h', w', ...) grid
    back into the stored layout."""
    if data.ndim == 3 and data.shape[1] == side * side:  # (T, h*w, D) feature vectors
        grid = data.reshape(data.shape[0], side, side, data.shape[2])
        return grid, lambda g: g.reshape(g.shape[0], g.shape[1] * g.shape[2], g.shape[3])
    if data.ndim == 3 and data.shape[1:] == (side, side):  # (T, h, w) ids, e.g. vq:v1
        return data, lambda g: g
    raise ValueError(f"target {info.ref}: PATCH data of shape {data.shape} does not match a {side}x{side} "
                     f"patch grid (frames of {side * PATCH_PX} px)")


# ------------------------------------------------------------------------------------------------
# Grid-aligned crop

def crop_clip(clip: dict, infos: list[TargetInfo], top_patch: int, left_patch: int, size_patches: int) -> dict:
    """Crop patches [top, top+n) x [left, left+n) of the 32-px grid from the frames and every target.

    DENSE targets are cropped in pixels, PATCH targets on their h x w grid, TOKEN targets 4 cells per
    patch. Crop and stored target commute exactly: cropped values are the stored values (computed on
    the full frame), not a recomputation on the cropped frame, which would differ at the crop border
    for targets with spatial support (HOG's gradients, flow, teacher receptive fields).
    "flow/max_magnitude" is recomputed on the cropped flow, so the 50-px pair rule looks at the motion
    inside the crop, as VIOLETv2 (which computes flow on the cropped clip) does (from the float16
    values, so it may exceed the stored float32-based maximum by a float16 rounding); other extras are kept.
    """
    size = clip["frames"].shape[1]
    side = size // PATCH_PX
    if size_patches < 1 or top_patch < 0 or left_patch < 0 or max(top_patch, left_patch) + size_patches > side:
        raise ValueError(f"crop of {size_patches} patches at (top={top_patch}, left={left_patch}) does not fit "
                         f"the {side}x{side} patch grid of {size}-px frames")
    px = slice(top_patch * PATCH_PX, (top_patch + size_patches) * PATCH_PX)
    pc = slice(left_patch * PATCH_PX, (left_patch + size_patches) * PATCH_PX)
    out = dict(clip)
    out["frames"] = clip["frames"][:, px, pc]
    per_token = PATCH_PX // TOKEN_PX
    for info in infos:
        if info.ref not in clip:
            continue
        data = clip[info.ref]
        if info.grid == "dense":
            out[info.ref] = data[..., px, pc]
        elif info.grid == "patch":
            grid, restore = _patch_grid(data, side, info)
            out[info.ref] = restore(grid[:, top_patch:top_patch + size_patches, left_patch:left_patch + size_patches])
        elif info.grid == "token":
            rows = slice(top_patch * per_token, (top_patch + size_patches) * per_token)
            cols = slice(left_patch * per_token, (left_patch + size_patches) * per_token)
            out[info.ref] = data[..., rows, cols]
        else:
            raise ValueError(f"target {info.ref}: unknown grid {info.grid!r}")
        whole = (top_patch, left_patch, size_patches) == (0, 0, side)
        if info.name == "flow" and f"{info.ref}/max_magnitude" in clip and not whole:
            out[f"{info.ref}/max_magnitude"] = max_magnitude(out[info.ref])
    return out


def random_grid_crop(clip: dict, infos: list[TargetInfo], out_size: int, rng: np.random.Generator) -> dict:
    """A uniformly placed grid-aligned `out_size` crop; the clip itself when it already has that size.

    Raises:
        ValueError: `out_size` is not a positive multiple of 32 or exceeds the clip's frame size.
    """
    size = clip["frames"].shape[1]
    side, wanted = check_crop_size(size, out_size)
    if wanted == side:
        return clip
    top, left = (int(v) for v in rng.integers(0, side - wanted + 1, size=2))
    return crop_clip(clip, infos, top, left, wanted)


def check_crop_size(size: int, out_size: int) -> tuple[int, int]:
    """(patch grid side of `size`, of `out_size`) after checking that the crop can be made."""
    if out_size <= 0 or out_size % PATCH_PX:
        raise ValueError(f"crop size must be a positive multiple of {PATCH_PX} px (the patch grid), got {out_size}")
    if out_size > size:
        raise ValueError(f"crop size {out_size} px is larger than the cached frames ({size} px)")
    return size // PATCH_PX, out_size // PATCH_PX


# ------------------------------------------------------------------------------------------------
# Temporal window

def temporal_window(clip: dict, infos: list[TargetInfo], num_frames: int, start: int) -> dict:
    """Frames [start, start + num_frames) and the targets defined on them.

    A target needing k consecutive frames (k = 2: flow pairs) keeps entries [start, start + num_frames
    - k + 1), i.e. exactly the pairs formed inside the window (none when num_frames < k). An extra
    whose leading length equals its target's follows the same slice ("flow/max_magnitude" per pair);
    other extras are kept whole.
    """
    total = clip["frames"].shape[0]
    if num_frames < 1 or start < 0 or start + num_frames > total:
        raise ValueError(f"window of {num_frames} frames at {start} does not fit a clip of {total} frames")
    out = dict(clip)
    out["frames"] = clip["frames"][start:start + num_frames]
    for name in PER_FRAME_META:
        if name in clip:
            out[name] = clip[name][start:start + num_frames]
    for info in infos:
        if info.ref not in clip:
            continue
        data = clip[info.ref]
        length = total - info.frames_needed + 1
        if data.shape[0] != length:
            raise ValueError(f"target {info.ref}: {data.shape[0]} entries for a {total}-frame clip, expected "
                             f"{length} (frames_needed={info.frames_needed})")
        window = slice(start, start + max(num_frames - info.frames_needed + 1, 0))
        out[info.ref] = data[window]
        prefix = f"{info.ref}/"
        for name, value in clip.items():
            if name.startswith(prefix) and np.ndim(value) >= 1 and np.shape(value)[0] == length:
                out[name] = value[window]
    return out
