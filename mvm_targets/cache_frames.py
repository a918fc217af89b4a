"""Cache clips whose frames are already decoded (by another decoder, a renderer, a benchmark).

`cache_decoded_clips` stores them as `mvmtargets extract` stores decoded videos: the frames set, each
stored target computed from the frames by its `Target.compute`, ledger lines and the captions in the
dataset's manifest, all through the store's own writer (`ShardWriter`, `ShardSet.commit`). So
`CacheReader`, `read_target_infos` and the trainer read them like extracted clips. Nothing here
decodes a video: PyAV, OpenCV and the like are never imported.

The frames were not sampled from a video by this package, so no sampling rule or decoder is stamped:
the shards say where the frames came from (`origin`), and the frames folder is
`frames-t{T}-s{S}-{hash of T, S and origin}`, apart from any folder `extract` writes at the same T and S.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from mvm_targets.errors import InputError
from mvm_targets.extract import ExtractConfig, check_codecs, clip_record, compute_target, shard_attrs
from mvm_targets.shard_writer import ShardWriter
from mvm_targets.store import schema
from mvm_targets.store.layout import ClipCache
from mvm_targets.store.ledger import Ledger
from mvm_targets.store.manifest import update_manifest
from mvm_targets.store.shard_set import ClipRecord
from mvm_targets.targets.spec import PATCH_PX, Target
from mvm_targets.video.decode import DecodedClip
from mvm_targets.video.inputs import VideoItem

GIVEN = "decoded frames given to cache_decoded_clips"


@dataclass(frozen=True)
class GivenFrames:
    """What the shards say about frames that were handed over decoded: T, S and their origin. It stands
    where `extract` has its `SamplingConfig` (frames_id, describe, config_hash), so the shard
    attributes are built by the same function (`shard_attrs`)."""

    num_frames: int
    size: int
    origin: str = GIVEN

    def describe(self) -> dict[str, Any]:
        return {"num_frames": self.num_frames, "size": self.size, "origin": self.origin, "decoder": self.origin}

    def config_hash(self) -> str:
        payload = {"num_frames": self.num_frames, "size": self.size, "origin": self.origin}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:8]

    @property
    def frames_id(self) -> str:
        return f"frames-t{self.num_frames}-s{self.size}-{self.config_hash()}"


def cache_decoded_clips(clips: Iterable[DecodedClip], captions: Mapping[str, Sequence[str]], cache_root: Path,
                        dataset: str, targets: Sequence[Target] = (), origin: str = GIVEN,
                        clips_per_shard: int = 64, compression: str | None = "lzf",
                        batch_size: int = 8) -> ClipCache:
    """Store `clips` (frames (T, S, S, 3) uint8, one T and S for all) and the stored `targets` computed
    from them under `cache_root/dataset/`, `clips_per_shard` clips per shard; returns that clip cache.

    `captions`: key -> the clip's captions (a key may have none). Targets run on batches of
    `batch_size` clips; a target that is never stored (`spec.stored` False) is left out, as `extract`
    does. Clips already cached under the same key are kept as they are (a rerun adds only new clips).

    Raises:
        InputError: no clips, frames that are not (T, S, S, 3) uint8 with S a multiple of 32 px, clips of
            different T or S, or a target failing on a clip (naming the clip and the target).
    """
    stream = iter(clips)
    first = next(stream, None)
    if first is None:
        raise InputError(f"{Path(cache_root) / dataset}: no clips to cache")
    given = GivenFrames(*_geometry(first, None), origin=origin)
    config = ExtractConfig(cache_root=Path(cache_root), dataset=dataset, sampling=given,  # type: ignore[arg-type]
                           batch_size=batch_size, clips_per_shard=clips_per_shard, compression=compression)
    clip_cache = ClipCache(Path(cache_root) / dataset / given.frames_id)
    stored = list({t.spec.target_id: t for t in targets if t.spec.stored}.values())
    check_codecs(stored, given)  # type: ignore[arg-type]
    sets = {schema.FRAMES_SET: clip_cache.frames} | {t.spec.target_id: clip_cache.target_set(t.spec.target_id)
                                                      for t in stored}
    attrs = {set_id: {**shard_attrs(config, set_id, stored), "geometry": json.dumps({"size": given.size,
                                                                                   "origin": origin})}
             for set_id in sets}
    writer = ShardWriter(sets, attrs, compression, Ledger(clip_cache.ledger_path))
    buffers: dict[str, list[ClipRecord]] = {set_id: [] for set_id in sets}

    def add(batch: list[DecodedClip]) -> None:
        update_manifest(clip_cache.manifest_path, [VideoItem(clip.key, Path(str(clip.source.get("path", origin))),
                                                             tuple(captions.get(clip.key, ()))) for clip in batch])
        outputs: dict[str, dict[str, dict[str, np.ndarray]]] = {}
        for target in stored:
            for key, result in compute_target(target, batch).items():
                if isinstance(result, tuple):
                    raise InputError(f"{dataset}: clip '{key}': {result[1]}")
                outputs.setdefault(key, {})[target.spec.target_id] = result
        for clip in batch:
            for set_id in sets:
                buffers[set_id].append(clip_record(clip, set_id, outputs.get(clip.key, {})))
        for set_id, records in buffers.items():
            while len(records) >= clips_per_shard:
                writer.commit_set(set_id, records[:clips_per_shard])
                del records[:clips_per_shard]

    batch: list[DecodedClip] = []
    for clip in chain([first], stream):
        _geometry(clip, (given.num_frames, given.size))
        batch.append(clip)
        if len(batch) == batch_size:
            add(batch)
            batch = []
    if batch:
        add(batch)
    for set_id, records in buffers.items():
        if records:
            writer.commit_set(set_id, records)
    return clip_cache


def _geometry(clip: DecodedClip, expected: tuple[int, int] | None) -> tuple[int, int]:
    """(T, S) of a clip's frames, checked: (T, S, S, 3) uint8, S a multiple of the patch size, and
    `expected` when given (the first clip's)."""
    frames = np.asarray(clip.frames)
    shape = tuple(frames.shape)
    if frames.dtype != np.uint8 or len(shape) != 4 or shape[3] != 3 or shape[1] != shape[2] or \
            shape[1] % PATCH_PX or not shape[0]:
        raise InputError(f"clip '{clip.key}': frames must be (T, S, S, 3) uint8 with S a multiple of {PATCH_PX}, "
                         f"got {shape} {frames.dtype}")
    if expected is not None and shape[:2] != expected:
        raise InputError(f"clip '{clip.key}': {shape[0]} frames of {shape[1]} px, but the first clip has "
                         f"{expected[0]} of {expected[1]} px; one cache holds one T and S")
    if len(clip.frame_indices) != shape[0] or len(clip.timestamps) != shape[0]:
        raise InputError(f"clip '{clip.key}': {len(clip.frame_indices)} frame indices and {len(clip.timestamps)} "
                         f"timestamps for {shape[0]} frames")
    return shape[0], shape[1]
