"""`mvmtargets show`: a clip's frames above what the model will regress, as one PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mvm_targets import visualize
from mvm_targets.store.reader import CacheReader


def target_images(spec: dict, data: np.ndarray, size: int) -> list[np.ndarray]:
    """One (S, S, 3) uint8 picture per frame (or per frame pair) of a cached target's data."""
    grid, name = spec["grid"], spec["name"]
    if name == "flow":  # (T-1, 2, S, S): one colour scale for the whole clip, so speeds compare
        largest = float(np.linalg.norm(data.astype(np.float32), axis=1).max()) or 1.0
        return [visualize.flow_to_rgb(pair.astype(np.float32), largest) for pair in data]
    if grid == "dense":  # (T, S, S) or (T, 1, S, S) scalar maps: HOG image, depth
        return [visualize.scalar_map_to_rgb(frame.reshape(size, size).astype(np.float32)) for frame in data]
    if grid == "patch":  # (T, N, D) features per 32-px patch
        return [visualize.patch_features_to_rgb(frame.astype(np.float32), size) for frame in data]
    if grid == "token":  # (T, h, w) or (T, h*w) token ids
        side = visualize.square_side(int(np.prod(data.shape[1:])))
        return [visualize.token_ids_to_rgb(frame.reshape(side, side), size) for frame in data]
    raise ValueError(f"cannot draw target '{name}' with grid '{grid}'")


def render_target_panel(cache_root: Path, dataset: str, key: str, target: str, out: Path) -> Path:
    """Write `out`: frames in the top row, the target's pictures below them."""
    refs = [] if target in ("pixel", "frames") else [target]
    reader = CacheReader(cache_root, dataset, targets=refs)
    if key not in reader.keys:
        examples = ", ".join(reader.keys[:3])
        raise ValueError(f"{reader.clip_cache.root}: no clip '{key}' cached with {target} (e.g. {examples})")
    clip = reader[key]
    frames = clip["frames"]
    if not refs:
        pictures, spec = list(frames), {"target_id": "frames"}
    else:
        spec = reader.attrs(target)["target_spec"]
        pictures = target_images(spec, clip[target], frames.shape[1])
    title = f"{key}  |  {spec['target_id']}"
    return visualize.save_png(visualize.render_panel(frames, pictures, title=title), out)
