"""`mvmtargets verify`: reopen every shard, read every chunk, check it against its own description and the ledger.

Each problem is one line. Problems that `verify --repair` can fix also carry a `Finding`: a
damaged shard (unreadable, truncated, a chunk failing its Fletcher-32 checksum, NaN/Inf values),
clips the ledger calls done that no shard holds, committed clips the ledger does not record, and
temporary files left by an interrupted write. A codec's side arrays (`codec/*`, e.g. int8 scales) are
read and checked like every other dataset. Shards written before checksums were added are
still read in full; a note says they carry none.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import h5py
import numpy as np

from mvm_targets.store import schema
from mvm_targets.store.codecs import CodecError, codec_of_record
from mvm_targets.store.damage import DAMAGE_ERRORS, DamagedShardError, first_line, open_shard
from mvm_targets.store.layout import ClipCache, dataset_caches, list_datasets
from mvm_targets.store.ledger import Ledger, LedgerEntry
from mvm_targets.store.shard_set import ShardSet

MAX_LINES_PER_SHARD = 10  # damaged rows listed one per line; beyond this, one summary line

FindingKind = Literal["damaged", "lost", "unrecorded", "leftover"]


@dataclass(frozen=True)
class Finding:
    """Something `verify --repair` can fix. `keys`: the clips concerned (for a damaged shard: all of
    its clips, since the whole shard is moved aside and re-extracted)."""

    kind: FindingKind
    clip_cache: ClipCache
    set_id: str
    keys: tuple[str, ...]
    reason: str
    path: Path | None = None  # the damaged shard or leftover file; None for ledger-only findings


@dataclass
class VerifyReport:
    shards: int = 0
    clips: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # worth knowing, not a failure (e.g. shards without checksums)
    findings: list[Finding] = field(default_factory=list)
    unrepairable: int = 0  # problems no finding covers: `--repair` leaves them

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, problem: str, finding: Finding | None = None) -> None:
        self.problems.append(problem)
        if finding is None:
            self.unrepairable += 1
        elif finding not in self.findings:
            self.findings.append(finding)


def verify_cache(cache_root: Path, dataset: str | None = None) -> VerifyReport:
    """Check every dataset (or one) under `cache_root`; problems are one line each."""
    report = VerifyReport()
    datasets = [dataset] if dataset else list_datasets(cache_root)
    if not datasets:
        report.add(f"{cache_root}: no cached datasets found")
    for name in datasets:
        caches = dataset_caches(cache_root, name)
        if not caches:
            report.add(f"{Path(cache_root) / name}: no cached clips")
        for clip_cache in caches:
            _verify_clip_cache(clip_cache, report)
    return report


@dataclass
class _SetResult:
    healthy: list[str] = field(default_factory=list)  # keys of shards that passed, with repeats
    damaged: set[str] = field(default_factory=set)  # keys of damaged shards (from the shard or the ledger)
    unchecksummed: int = 0  # shards with at least one dataset lacking a checksum
    datasets_without: set[str] = field(default_factory=set)


def _verify_clip_cache(clip_cache: ClipCache, report: VerifyReport) -> None:
    ledger = Ledger(clip_cache.ledger_path)
    entries, malformed = ledger.read()
    for number in malformed:
        report.add(f"{ledger.path}:{number}: malformed ledger line")
    latest = {(e.key, e.set_id): e for e in entries}
    frame_keys: set[str] | None = None
    for shard_set in [clip_cache.frames, *clip_cache.target_sets()]:
        set_id = shard_set.set_id
        mine = {k: e for (k, s), e in latest.items() if s == set_id}
        result = _verify_set(clip_cache, shard_set, mine, report)
        committed = set(result.healthy)
        redo = {k for k, e in mine.items() if e.status == "redo"} - committed - result.damaged
        if set_id == schema.FRAMES_SET:
            frame_keys = committed | result.damaged | redo
        elif frame_keys is not None:
            orphans = committed - frame_keys
            if orphans:
                report.add(f"{shard_set.directory}: {len(orphans)} clip(s) have no cached frames, "
                           f"e.g. {sorted(orphans)[0]} (rerun extract with these videos)")
        done = {k for k, e in mine.items() if e.status == "done"}
        lost = sorted(done - committed - result.damaged)
        if lost:
            finding = Finding("lost", clip_cache, set_id, tuple(lost), "the ledger says done but no shard holds it")
            for key in lost[:5]:
                report.add(f"{shard_set.directory}: ledger says '{key}' is done but no shard holds it", finding)
            if len(lost) > 5:
                report.add(f"{shard_set.directory}: ... and {len(lost) - 5} more clip(s) done without a shard", finding)
        unrecorded = sorted(committed - done)
        if unrecorded:
            finding = Finding("unrecorded", clip_cache, set_id, tuple(unrecorded), "in a shard, not in the ledger")
            for key in unrecorded[:5]:
                report.add(f"{shard_set.directory}: '{key}' is in a shard but the ledger does not record it "
                           "(rerun extract, or verify --repair, to reconcile)", finding)
        if redo:
            how = "rerun extract" if set_id == schema.FRAMES_SET else "rerun extract with this target"
            report.add(f"{shard_set.directory}: {len(redo)} clip(s) moved to quarantine await re-extraction, "
                       f"e.g. '{sorted(redo)[0]}' ({how})")
        if result.unchecksummed:
            report.notes.append(
                f"{shard_set.directory}: {result.unchecksummed} shard(s) carry no checksum "
                f"(datasets {', '.join(sorted(result.datasets_without))}; written before checksums were added): "
                "all their chunks were read, but damage that still decodes goes unnoticed there")


def _verify_set(clip_cache: ClipCache, shard_set: ShardSet, entries: dict[str, LedgerEntry],
                report: VerifyReport) -> _SetResult:
    result = _SetResult()
    for stale in sorted(shard_set.directory.glob(".shard-*.tmp")):
        finding = Finding("leftover", clip_cache, shard_set.set_id, (), "temporary file of an interrupted write", stale)
        report.add(f"{stale}: leftover temporary file from an interrupted write (rerun extract, or verify --repair)",
                   finding)
    by_shard: dict[str, list[str]] = defaultdict(list)  # what the ledger says each shard holds
    for key, entry in entries.items():
        if entry.status == "done" and entry.shard:
            by_shard[entry.shard].append(key)
    for shard in shard_set.shards():
        report.shards += 1
        check = _ShardCheck(shard, shard_set.set_id, sorted(by_shard.get(shard.name, ())))
        check.run()
        result.unchecksummed += bool(check.without_checksum)
        result.datasets_without |= check.without_checksum
        for line in check.problems:
            report.add(line)
        if check.damage:
            finding = Finding("damaged", clip_cache, shard_set.set_id, tuple(check.keys), check.damage[0][1], shard)
            for line, _ in check.damage[:MAX_LINES_PER_SHARD]:
                report.add(line, finding)
            if len(check.damage) > MAX_LINES_PER_SHARD:
                report.add(f"{shard}: ... and {len(check.damage) - MAX_LINES_PER_SHARD} more damaged row(s)", finding)
            result.damaged |= set(check.keys)
        else:
            result.healthy += check.keys
        report.clips += len(check.keys)
    for key, count in Counter(result.healthy).items():
        if count > 1:
            report.add(f"{shard_set.directory}: '{key}' is stored {count} times")
    return result


class _ShardCheck:
    """Reads one shard completely. `damage`: (problem line, reason) for what repair fixes by
    re-extraction; `problems`: mismatches it cannot fix (schema version, shapes, dtypes)."""

    def __init__(self, path: Path, set_id: str, ledger_keys: list[str]):
        self.path, self.set_id = path, set_id
        self.keys: list[str] = ledger_keys  # replaced by the shard's own keys once they are read
        self.damage: list[tuple[str, str]] = []
        self.problems: list[str] = []
        self.without_checksum: set[str] = set()

    def run(self) -> None:
        try:
            handle = open_shard(self.path)
        except DamagedShardError as error:
            self._damaged_whole(f"cannot be opened: {error.reason}")
            return
        with handle:
            try:
                self._check(handle)
            except DAMAGE_ERRORS as error:  # a group or attribute too damaged to read
                self._damaged_whole(first_line(error))

    def _damaged_whole(self, reason: str) -> None:
        known = f"; its clips per the ledger: {_some(self.keys)}" if self.keys else ""
        self.damage.append((f"{self.path}: damaged shard, {reason}{known}", reason))

    def _check(self, handle: h5py.File) -> None:
        version = int(handle.attrs.get("schema_version", -1))
        if version != schema.SCHEMA_VERSION:
            self.problems.append(f"{self.path}: schema version {version}, this code reads {schema.SCHEMA_VERSION}")
            return
        if handle.attrs.get("set_id") != self.set_id:
            self.problems.append(f"{self.path}: belongs to set '{handle.attrs.get('set_id')}', "
                                 f"found in '{self.set_id}'")
        keys_dataset = self._dataset(handle, schema.KEYS)
        if keys_dataset is None:
            return
        try:
            self.keys = [k.decode() for k in keys_dataset[()]]
        except DAMAGE_ERRORS as error:
            self._damaged_whole(f"its key list fails to read ({first_line(error)})")
            return
        self._note_checksum(keys_dataset)
        spec = json.loads(handle.attrs["target_spec"])
        try:
            codec = codec_of_record(spec)
        except CodecError as error:
            self.problems.append(f"{self.path}: {error} (written by newer code?)")
            return
        datasets = [self._dataset(handle, name) for name in
                    (schema.SOURCES, schema.DATA, schema.FRAME_INDICES, schema.TIMESTAMPS)]
        for group in (schema.EXTRAS_GROUP, schema.CODEC_GROUP):
            if group in handle:
                datasets += [self._dataset(handle, f"{group}/{name}") for name in handle[group]]
        data = datasets[1]
        if data is not None:
            # as stored: a codec changes the dtype and, pooled, the shape (store/codecs.py)
            grid = str(spec.get("grid", ""))
            expected = (len(self.keys), *codec.stored_shape(grid, spec["clip_shape"]))
            if data.shape != expected:
                self.problems.append(f"{self.path}: data shape {data.shape}, expected {expected}")
            dtype = codec.stored_dtype(spec["dtype"])
            if data.dtype != np.dtype(dtype):
                self.problems.append(f"{self.path}: data dtype {data.dtype}, expected {dtype}")
            for name, shape in codec.side_shapes(grid, spec["clip_shape"]).items():
                side = handle.get(f"{schema.CODEC_GROUP}/{name}")
                if side is None:
                    self.problems.append(f"{self.path}: codec '{codec.name}' needs /{schema.CODEC_GROUP}/{name}, "
                                         "which is missing")
                elif side.shape != (len(self.keys), *shape):
                    self.problems.append(f"{self.path}: {schema.CODEC_GROUP}/{name} shape {side.shape}, "
                                         f"expected {(len(self.keys), *shape)}")
        for dataset in datasets:
            if dataset is None:
                continue
            if dataset.shape[0] != len(self.keys):
                self.problems.append(f"{self.path}: {dataset.name} has {dataset.shape[0]} rows "
                                     f"for {len(self.keys)} keys")
                continue
            self._note_checksum(dataset)
            self._read_every_chunk(dataset)

    def _dataset(self, handle: h5py.File, name: str) -> h5py.Dataset | None:
        try:
            return handle[name]
        except DAMAGE_ERRORS as error:
            self._damaged_whole(f"dataset /{name} cannot be opened ({first_line(error)})")
            return None

    def _note_checksum(self, dataset: h5py.Dataset) -> None:
        if not dataset.fletcher32:
            self.without_checksum.add(dataset.name.lstrip("/"))

    def _read_every_chunk(self, dataset: h5py.Dataset) -> None:
        """One chunk (= one clip in shards this code writes) at a time: bounded memory, and a
        failing checksum names the clip."""
        name = dataset.name.lstrip("/")
        pieces = dataset.iter_chunks() if dataset.chunks else [tuple(slice(0, n) for n in dataset.shape)]
        for piece in pieces:
            rows = range(*piece[0].indices(dataset.shape[0]))
            try:
                values = dataset[piece]
            except DAMAGE_ERRORS as error:
                reason = "fails its checksum" if dataset.fletcher32 else "cannot be read"
                for row in rows:
                    self.damage.append((f"{self.path}: {name} row {row} ('{self.keys[row]}') {reason} "
                                        f"({first_line(error)})", f"{name} {reason}"))
                continue
            if values.dtype.kind == "f":
                finite = np.isfinite(values).reshape(len(rows), -1).all(axis=1)
                for row, ok in zip(rows, finite):
                    if not ok:
                        self.damage.append((f"{self.path}: {name} row {row} ('{self.keys[row]}') has NaN/Inf",
                                            f"{name} has NaN/Inf"))


def _some(keys: list[str], limit: int = 5) -> str:
    shown = ", ".join(f"'{k}'" for k in keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")
