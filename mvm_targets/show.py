"""`mvmtargets show`: a clip's frames above what the model will regress, as one PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np

from mvm_targets import visualize
from mvm_targets.store.reader import CacheReader
from mvm_targets.targets.registry import declared_spec
from mvm_targets.targets.spec import Grid, StoredSpec


def target_images(spec: StoredSpec | Mapping[str, Any], data: np.ndarray, size: int) -> list[np.ndarray]:
    """One (S, S, 3) uint8 picture per frame (or per frame pair) of a target's data: the picture its
    module declares (`TargetSpec.picture`), else the default of its grid."""
    if not isinstance(spec, StoredSpec):
        spec = StoredSpec.from_record(spec, declarations=False)
    declared = declared_spec(spec.name, spec.variant, spec.grid.value)
    if declared is not None and declared.picture is not None:
        return declared.picture(data, size)
    return grid_pictures(spec, data, size)


def grid_pictures(spec: StoredSpec, data: np.ndarray, size: int) -> list[np.ndarray]:
    """The default picture of each grid, for targets that declare none."""
    if np.issubdtype(data.dtype, np.integer) and spec.grid is not Grid.DENSE:
        # (T, h, w) or (T, h*w) class ids, on the token or the patch grid
        side = visualize.square_side(int(np.prod(data.shape[1:])))
        return [visualize.token_ids_to_rgb(frame.reshape(side, side), size) for frame in data]
    if spec.grid is Grid.DENSE:  # (T', S, S) or (T', C, S, S): one scalar map per frame (mean over channels)
        return [visualize.scalar_map_to_rgb(frame.astype(np.float32).reshape(-1, size, size).mean(axis=0))
                for frame in data]
    if spec.grid is Grid.PATCH:  # (T, N, D) features per 32-px patch
        return [visualize.patch_features_to_rgb(frame.astype(np.float32), size) for frame in data]
    raise ValueError(f"cannot draw target '{spec.target_id}' with grid '{spec.grid.value}' and dtype {data.dtype}")


def render_target_panel(cache_root: Path, dataset: str, key: str, target: str, out: Path,
                        frames_id: str | None = None) -> Path:
    """Write `out`: frames in the top row, the target's pictures below them. `frames_id` picks the
    sampling configuration when the dataset has several."""
    refs = [] if target == "frames" else [target]  # any other ref, stored or derived from the frames
    reader = CacheReader(cache_root, dataset, targets=refs, frames_id=frames_id)
    if key not in reader.keys:
        examples = ", ".join(reader.keys[:3])
        raise ValueError(f"{reader.clip_cache.root}: no clip '{key}' cached with {target} (e.g. {examples})")
    clip = reader[key]
    frames = clip["frames"]
    if not refs:
        pictures, target_id = list(frames), "frames"
    else:
        spec = reader.spec(target)
        pictures, target_id = target_images(spec, clip[target], frames.shape[1]), spec.target_id
    title = f"{key}  |  {target_id}"
    return visualize.save_png(visualize.render_panel(frames, pictures, title=title), out)
