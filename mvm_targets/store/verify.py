"""`mvmtargets verify`: reopen every shard and check it against its own description and the ledger."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from mvm_targets.store import schema
from mvm_targets.store.layout import ClipCache, dataset_caches, list_datasets
from mvm_targets.store.ledger import Ledger
from mvm_targets.store.shard_set import ShardSet


@dataclass
class VerifyReport:
    shards: int = 0
    clips: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_cache(cache_root: Path, dataset: str | None = None) -> VerifyReport:
    """Check every dataset (or one) under `cache_root`; problems are one line each."""
    report = VerifyReport()
    datasets = [dataset] if dataset else list_datasets(cache_root)
    if not datasets:
        report.problems.append(f"{cache_root}: no cached datasets found")
    for name in datasets:
        caches = dataset_caches(cache_root, name)
        if not caches:
            report.problems.append(f"{Path(cache_root) / name}: no cached clips")
        for clip_cache in caches:
            _verify_clip_cache(clip_cache, report)
    return report


def _verify_clip_cache(clip_cache: ClipCache, report: VerifyReport) -> None:
    ledger = Ledger(clip_cache.ledger_path)
    entries, malformed = ledger.read()
    report.problems += [f"{ledger.path}:{n}: malformed ledger line" for n in malformed]
    latest = {(e.key, e.set_id): e for e in entries}
    frame_keys = None
    for shard_set in [clip_cache.frames, *clip_cache.target_sets()]:
        committed = _verify_set(shard_set, report)
        if shard_set.set_id == schema.FRAMES_SET:
            frame_keys = set(committed)
        elif frame_keys is not None:
            orphans = set(committed) - frame_keys
            if orphans:
                report.problems.append(f"{shard_set.directory}: {len(orphans)} clip(s) have no cached frames, "
                                       f"e.g. {sorted(orphans)[0]}")
        done = {k for (k, s), e in latest.items() if s == shard_set.set_id and e.status == "done"}
        for key in sorted(done - set(committed))[:5]:
            report.problems.append(f"{shard_set.directory}: ledger says '{key}' is done but no shard holds it")
        for key in sorted(set(committed) - done)[:5]:
            report.problems.append(f"{shard_set.directory}: '{key}' is in a shard but the ledger does not record it "
                                   "(rerun extract to reconcile)")


def _verify_set(shard_set: ShardSet, report: VerifyReport) -> list[str]:
    keys: list[str] = []
    for stale in shard_set.directory.glob(".shard-*.tmp"):
        report.problems.append(f"{stale}: leftover temporary file from an interrupted write (rerun extract)")
    for shard in shard_set.shards():
        report.shards += 1
        try:
            keys += _verify_shard(shard, shard_set.set_id, report)
        except (OSError, KeyError, ValueError) as error:
            report.problems.append(f"{shard}: unreadable ({(str(error).splitlines() or [''])[0]})")
    for key, count in Counter(keys).items():
        if count > 1:
            report.problems.append(f"{shard_set.directory}: '{key}' is stored {count} times")
    report.clips += len(keys)
    return keys


def _verify_shard(path: Path, set_id: str, report: VerifyReport) -> list[str]:
    problems = report.problems
    with h5py.File(path, "r") as handle:
        version = int(handle.attrs.get("schema_version", -1))
        if version != schema.SCHEMA_VERSION:
            problems.append(f"{path}: schema version {version}, this code reads {schema.SCHEMA_VERSION}")
            return []
        if handle.attrs.get("set_id") != set_id:
            problems.append(f"{path}: belongs to set '{handle.attrs.get('set_id')}', found in '{set_id}'")
        spec = json.loads(handle.attrs["target_spec"])
        keys = [k.decode() for k in handle[schema.KEYS][()]]
        data = handle[schema.DATA]
        expected = (len(keys), *spec["clip_shape"])
        if data.shape != expected:
            problems.append(f"{path}: data shape {data.shape}, expected {expected}")
        if data.dtype != np.dtype(spec["dtype"]):
            problems.append(f"{path}: data dtype {data.dtype}, expected {spec['dtype']}")
        per_clip = [data, handle[schema.FRAME_INDICES], handle[schema.TIMESTAMPS], handle[schema.SOURCES],
                    *handle.get(schema.EXTRAS_GROUP, {}).values()]
        for dataset in per_clip:
            if dataset.shape[0] != len(keys):
                problems.append(f"{path}: {dataset.name} has {dataset.shape[0]} rows for {len(keys)} keys")
            if dataset.dtype.kind == "f":
                for row in range(dataset.shape[0]):  # one clip (= one chunk) at a time: bounded memory
                    if not np.isfinite(dataset[row]).all():
                        problems.append(f"{path}: {dataset.name} row {row} ('{keys[row]}') has NaN/Inf")
    return keys
