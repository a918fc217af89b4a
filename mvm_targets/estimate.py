"""How much a cache will take on disk, from a few clips, before anything is written.

A shard's size is close to linear in its clips: `per_shard + clips * per_clip` (one clip per
compressed chunk, plus the file's fixed metadata). Both numbers are measured by building, in
memory and with the store's own shard writer (`shard_image`), the shard of a sample and the shard
of the sample twice over; the difference is the sample's own bytes, so the fixed part separates.
The shard writer applies each target's storage codec (store/codecs.py), so the figures are those of
the codec chosen.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

from mvm_targets.store import schema
from mvm_targets.store.shard_set import ClipRecord, shard_image


@dataclass(frozen=True)
class SetSize:
    """One set's (frames' or one target's) size law."""

    set_id: str
    per_clip: float  # bytes each clip adds to a shard
    per_shard: float  # bytes every shard file carries whatever its clips (attributes, headers)

    def bytes_for(self, clips: int, clips_per_shard: int) -> float:
        """Bytes of `clips` clips committed in shards of `clips_per_shard` (the last one partial)."""
        return math.ceil(clips / clips_per_shard) * self.per_shard + clips * self.per_clip

    def bytes_per_clip(self, clips_per_shard: int) -> float:
        return self.per_clip + self.per_shard / clips_per_shard


@dataclass(frozen=True)
class Estimate:
    sizes: list[SetSize]
    clips: int  # clips the estimate is for
    clips_per_shard: int
    sampled: int  # clips measured
    failed: int  # sampled clips that could not be decoded or computed

    def total_bytes(self) -> float:
        return sum(size.bytes_for(self.clips, self.clips_per_shard) for size in self.sizes)


def measure_set(set_id: str, records: Sequence[ClipRecord], attrs: dict[str, Any],
                compression: str | None) -> SetSize:
    """Fit `per_shard + n * per_clip` to the in-memory shard images of `records` and of `records` twice."""
    if not records:
        raise ValueError(f"{set_id}: no clips to measure")
    attrs = {**attrs, "set_id": set_id}  # ShardSet.commit adds it too
    once = len(shard_image(list(records), attrs, compression))
    twice = len(shard_image(list(records) * 2, attrs, compression))
    per_clip = (twice - once) / len(records)
    return SetSize(set_id, per_clip, max(0.0, once - per_clip * len(records)))


def human_bytes(size: float) -> str:
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if size >= scale:
            return f"{size / scale:.2f} {unit}"
    return f"{size:.0f} B"


def format_estimate(sizes: Sequence[SetSize], clips: int, clips_per_shard: int, note: str) -> str:
    """One line: bytes per clip in all and per set, and the total for `clips` clips."""
    per_clip = sum(s.bytes_per_clip(clips_per_shard) for s in sizes)
    total = sum(s.bytes_for(clips, clips_per_shard) for s in sizes)
    parts = ", ".join(f"{s.set_id} {human_bytes(s.bytes_per_clip(clips_per_shard))}" for s in sizes)
    return f"estimate ({note}): {human_bytes(per_clip)} per clip ({parts}); {human_bytes(total)} in all"


def sample_evenly(items: Sequence[Any], count: int) -> list[Any]:
    """`count` items spread over the whole list (first and last included), in order."""
    if count >= len(items):
        return list(items)
    if count == 1:
        return [items[0]]
    return [items[round(i * (len(items) - 1) / (count - 1))] for i in range(count)]


def estimate_cache(items: Sequence[Any], targets: Sequence[Any], config: Any, sample: int = 8) -> Estimate:
    """Decode and compute `sample` of `items` in memory and size the shards the store would write.

    `config` is an `ExtractConfig` (sampling, compression, clips per shard); `targets` the built
    targets. Nothing is written. Raises ValueError when no sampled clip could be decoded.
    """
    from mvm_targets.decode_pool import DecodeFailure, decode_one
    from mvm_targets.extract import check_codecs, clip_record, compute_target, shard_attrs

    stored = [t for t in targets if t.spec.stored]
    check_codecs(stored, config.sampling)
    clips, failed = [], 0
    for item in sample_evenly(items, sample):
        outcome = decode_one(item, config.sampling)
        if isinstance(outcome, DecodeFailure):
            failed += 1
        else:
            clips.append(outcome)
    outputs: dict[str, dict[str, Any]] = {clip.key: {} for clip in clips}
    for target in stored:
        for key, result in compute_target(target, clips).items() if clips else ():
            if isinstance(result, tuple):
                outputs.pop(key, None)  # a clip a target fails on is stored by no set
            elif key in outputs:
                outputs[key][target.spec.target_id] = result
    good = [clip for clip in clips if clip.key in outputs]
    failed += len(clips) - len(good)
    if not good:
        raise ValueError(f"none of the {sample} sampled videos could be decoded and computed, "
                         "so there is nothing to measure")
    set_ids = [schema.FRAMES_SET] + [t.spec.target_id for t in stored]
    sizes = [measure_set(set_id, [clip_record(clip, set_id, outputs[clip.key]) for clip in good],
                         shard_attrs(config, set_id, stored), config.compression) for set_id in set_ids]
    return Estimate(sizes, len(items), config.clips_per_shard, len(good), failed)
