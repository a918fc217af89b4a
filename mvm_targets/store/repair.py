"""`mvmtargets verify --repair`: act on what verify found, never deleting data.

- A damaged shard (or a leftover temporary file) is moved, under its set's lock, to
  `<dataset>/quarantine/<UTC time>/<frames_id>/<set_id>/`, and its clips get a `redo` ledger line:
  the next `extract` with the same inputs and targets computes them again (shards are the truth
  for what is done, so a clip without a shard is work to do).
- Clips the ledger calls done that no shard holds get a `redo` line too.
- Committed clips the ledger does not record get their `done` line (what extract does at start-up).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from mvm_targets.store import schema
from mvm_targets.store.layout import ClipCache
from mvm_targets.store.ledger import Ledger, LedgerEntry
from mvm_targets.store.locking import exclusive_lock, fsync_path
from mvm_targets.store.shard_set import ShardSet
from mvm_targets.store.verify import Finding, VerifyReport


@dataclass
class RepairSummary:
    moved: list[tuple[Path, Path]] = field(default_factory=list)  # (from, to)
    redo: int = 0  # clips marked for re-extraction
    recorded: int = 0  # committed clips added to the ledger
    lines: list[str] = field(default_factory=list)  # one per action, for the user


def repair_cache(report: VerifyReport, now: float | None = None) -> RepairSummary:
    """Apply every finding of `report` (from `verify_cache`); returns what was done."""
    summary = RepairSummary()
    stamps: dict[Path, Path] = {}  # dataset folder -> this repair's quarantine folder
    for finding in report.findings:
        cache = finding.clip_cache
        if finding.kind in ("damaged", "leftover") and finding.path is not None:
            if cache.dataset_dir not in stamps:
                stamps[cache.dataset_dir] = _new_quarantine(cache.dataset_dir, now)
            destination = stamps[cache.dataset_dir] / cache.root.name / finding.set_id / finding.path.name
            if not _move_under_lock(finding.path, destination):
                continue
            summary.moved.append((finding.path, destination))
            summary.lines.append(f"moved {finding.path} to {destination} ({finding.reason})")
            if finding.kind == "damaged":
                _mark_redo(cache, finding, f"{finding.path.name}: {finding.reason}; moved to {destination}", summary)
        elif finding.kind == "lost":
            _mark_redo(cache, finding, "the ledger said done but no shard held it", summary)
        elif finding.kind == "unrecorded":
            _record_done(cache, finding, summary)
    return summary


def _new_quarantine(dataset_dir: Path, now: float | None) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    candidate, number = dataset_dir / schema.QUARANTINE_DIR / stamp, 1
    while candidate.exists():  # two repairs within one second
        number += 1
        candidate = dataset_dir / schema.QUARANTINE_DIR / f"{stamp}-{number}"
    return candidate


def _move_under_lock(source: Path, destination: Path) -> bool:
    """Rename `source` to `destination` while holding the set's commit lock: a writer holds it from
    creating its temporary file until the rename, so what we move is never being written."""
    with exclusive_lock(source.parent / ".lock"):
        if not source.exists():  # another repair (or a writer cleaning its temporaries) got there first
            return False
        destination.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, destination)  # same file system: the dataset folder holds both
        fsync_path(source.parent)
        fsync_path(destination.parent)
    return True


def _mark_redo(cache: ClipCache, finding: Finding, message: str, summary: RepairSummary) -> None:
    Ledger(cache.ledger_path).append(LedgerEntry(key, finding.set_id, "redo", error_class="Repaired", message=message)
                                     for key in finding.keys)
    summary.redo += len(finding.keys)
    if finding.kind == "lost" and finding.keys:
        summary.lines.append(f"{cache.root / finding.set_id}: {len(finding.keys)} clip(s) without a shard "
                             "marked for re-extraction")


def _record_done(cache: ClipCache, finding: Finding, summary: RepairSummary) -> None:
    wanted = set(finding.keys)
    shard_set = ShardSet(cache.root / finding.set_id)
    entries = [LedgerEntry(key, finding.set_id, "done", shard=name, message="recorded by verify --repair")
               for name, keys in shard_set.keys_by_shard().items() for key in keys if key in wanted]
    Ledger(cache.ledger_path).append(entries)
    summary.recorded += len(entries)
    summary.lines.append(f"{shard_set.directory}: {len(entries)} committed clip(s) recorded in the ledger")
