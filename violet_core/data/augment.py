"""Clip augmentations that keep the frames and every cached target consistent.

A clip is the dict `CacheReader[key]` returns, in the STORED layout (numpy, before tensors):
    frames            (T, S, S, 3) uint8
    DENSE target      (T', S, S) or (T', C, S, S), T' = T - frames_needed + 1 (pairs: T - 1)
    PATCH target      (T, h*w, D) feature vectors, h = w = S/32 (vq:v1 ids: (T, h, w))
    TOKEN target      (T, S/8, S/8) ids
    "<ref>/<extra>"   per-frame / per-pair side statistics (e.g. "<ref>/max_magnitude" (T-1,))
    "frame_indices", "timestamps"  (T,) per-frame metadata
Only the refs named by the given `TargetInfo`s (and their extras) are transformed; a ref absent from
the clip is skipped (e.g. a target that is never stored, which the dataset derives from the augmented
frames with its module's `derive` function).

How a target follows a flip or a crop is declared by the target's own module
(`mvm_targets.targets.spec.Augmentation`, read back from the stored spec by `augmentation_for`);
nothing here depends on which target it is, only on that declaration and on the target's grid:
    flip "exact"      the module's transform of the stored target (e.g. a mirror, and -u for a flow field)
    flip "recompute"  the module recomputes the target from the mirrored frames
    flip "refuse"     an error, unless approximate flips are asked for: then the stored grid is
                      mirrored, which is not what the teacher gives on the mirrored clip
    crop              a plain slice of the target's grid; the module may recompute extras from it

Every function returns a new dict and never writes into the arrays it was given; results may be
views (negative strides included), so convert with np.ascontiguousarray before torch.from_numpy.

Crops stay on the 32-px patch grid (VIOLETv2 masks 32x32 patches, and PATCH/TOKEN targets only exist
on that grid), so a crop of any target is a plain slice of its grid.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

# TOKEN_PX: one DALL-E token per 8 x 8 pixels
from mvm_targets.targets.spec import TOKEN_PX, Augmentation, FlipRule
from violet_core.config import ConfigError
from violet_core.target_info import PATCH_PX, TargetInfo

PER_FRAME_META = ("frame_indices", "timestamps")


def target_augmentation(info: TargetInfo) -> Augmentation:
    """The flip/crop behaviour `info`'s target declares (from its module, else its stored spec)."""
    return info.spec.augmentation


def check_flips(infos: Iterable[TargetInfo], hflip_prob: float, approximate_flips: bool = False) -> None:
    """Refuse flips of cached targets that cannot be flipped exactly, unless approximate flips are allowed.

    An online target is computed from the flipped clip itself (docs/method.md §11), so its flip rule
    does not apply.

    Raises:
        ConfigError: `hflip_prob` > 0, `approximate_flips` is off and a cached target's flip rule is "refuse".
    """
    if hflip_prob <= 0 or approximate_flips:
        return
    refusing = [info for info in infos if not info.online and target_augmentation(info).flip is FlipRule.REFUSE]
    if refusing:
        raise _refusal(refusing, f"'data.hflip_prob': {hflip_prob} flips clips")


def _refusal(refusing: list[TargetInfo], asked: str) -> ConfigError:
    names = ", ".join(f"'{info.ref}'" for info in refusing)
    return ConfigError(
        f"{asked}, but target {names} cannot be flipped exactly ({target_augmentation(refusing[0]).note}); set "
        f"data.hflip_prob: 0, or data.approximate_flips: true to mirror the cached target, which is not what "
        f"the teacher gives on the mirrored clip")


# ------------------------------------------------------------------------------------------------
# Horizontal flip

def hflip_clip(clip: dict, infos: list[TargetInfo], approximate_flips: bool = False) -> dict:
    """Mirror the frames left-right, and every target as its module declares (module docstring).

    With `approximate_flips`, targets that refuse flips are mirrored on their grid (DENSE: the width
    axis; PATCH: the patch columns, vectors unchanged; TOKEN: the token columns), extras unchanged.

    Raises:
        ConfigError: a target refuses flips and `approximate_flips` is off.
        ValueError: a recomputed target does not have the stored target's shape.
    """
    out = dict(clip)
    frames = clip["frames"][:, :, ::-1]
    out["frames"] = frames
    size = clip["frames"].shape[1]
    for info in infos:
        if info.ref not in clip:
            continue
        aug = target_augmentation(info)
        data, extras = clip[info.ref], _extras(clip, info.ref)
        if aug.flip is FlipRule.EXACT:
            data, extras = aug.mirror(data, extras)
        elif aug.flip is FlipRule.RECOMPUTE:
            fresh = dict(aug.recompute(np.ascontiguousarray(frames)))
            recomputed = fresh.pop("data")
            if recomputed.shape != data.shape:
                raise ValueError(f"target {info.ref}: recomputed on the flipped frames with shape {recomputed.shape}, "
                                 f"but the cache holds {data.shape}")
            data, extras = recomputed, {**extras, **fresh}
        elif approximate_flips:
            data = _mirror_grid(info, data, size)
        else:
            raise _refusal([info], "a clip is flipped")
        out[info.ref] = data
        out.update({f"{info.ref}/{name}": value for name, value in extras.items()})
    return out


def _mirror_grid(info: TargetInfo, data: np.ndarray, size: int) -> np.ndarray:
    """The stored target mirrored on its grid (what approximate flips do)."""
    if info.grid in ("dense", "token"):
        return data[..., ::-1]
    if info.grid == "patch":
        grid, restore = _patch_grid(data, size // PATCH_PX, info)
        return restore(grid[:, :, ::-1])
    raise ValueError(f"target {info.ref}: unknown grid {info.grid!r}")


def _extras(clip: dict, ref: str) -> dict[str, np.ndarray]:
    """The clip's extras of target `ref`, by bare name ("flow/max_magnitude" -> "max_magnitude")."""
    prefix = f"{ref}/"
    return {name[len(prefix):]: value for name, value in clip.items() if name.startswith(prefix)}


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
    patch. Cropped values are the stored values (computed on the full frame), not a recomputation on
    the cropped frames; how far the two agree is the target's declared crop rule ("exact": everywhere;
    "border": except within a margin of the crop edges inside the frame; "context": in general
    nowhere). A target's module may recompute its extras from the cropped target (flow's per-pair
    largest magnitude, so that the 50-px pair rule looks at the motion inside the crop); other extras
    are kept.
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
        extras = _extras(clip, info.ref)
        crop_extras = target_augmentation(info).crop_extras
        if extras and crop_extras is not None and not whole:
            out.update({f"{info.ref}/{name}": value for name, value in crop_extras(out[info.ref], extras).items()})
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
