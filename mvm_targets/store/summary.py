"""`mvmtargets info`: what a cache holds, per dataset, sampling configuration and set."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from mvm_targets.store.layout import dataset_caches, list_datasets
from mvm_targets.store.ledger import Ledger
from mvm_targets.store.manifest import read_manifest


@dataclass
class SetSummary:
    set_id: str
    clips: int
    shards: int
    bytes: int
    failed: int
    skipped: int
    failure_classes: dict[str, int] = field(default_factory=dict)


@dataclass
class CacheSummary:
    dataset: str
    frames_id: str
    videos: int  # in the manifest
    sets: list[SetSummary]


def summarize_cache(cache_root: Path, dataset: str | None = None) -> list[CacheSummary]:
    summaries = []
    for name in [dataset] if dataset else list_datasets(cache_root):
        for clip_cache in dataset_caches(cache_root, name):
            latest = Ledger(clip_cache.ledger_path).latest()
            videos = len(read_manifest(clip_cache.manifest_path))
            sets = []
            for shard_set in [clip_cache.frames, *clip_cache.target_sets()]:
                statuses = [e for (_, s), e in latest.items() if s == shard_set.set_id]
                failures = Counter(e.error_class for e in statuses if e.status == "failed")
                shards = shard_set.shards()
                sets.append(SetSummary(
                    set_id=shard_set.set_id, clips=len(shard_set.committed_keys()), shards=len(shards),
                    bytes=sum(p.stat().st_size for p in shards), failed=sum(failures.values()),
                    skipped=sum(1 for e in statuses if e.status == "skipped"), failure_classes=dict(failures)))
            summaries.append(CacheSummary(name, clip_cache.root.name, videos, sets))
    return summaries
