"""The extraction loop behind `mvmtargets extract`.

Each video is decoded once; that decode feeds every requested target. Work is split across
processes by a stable hash of the key. Clips are committed in shards of `clips_per_shard`; the
ledger is written after each commit, and reconciled with the committed shards at start-up, so a
SIGKILL at any moment loses at most the clips buffered since the last commit. Decoding runs ahead
in worker processes (decode_pool.py) and commits run in a writer thread (shard_writer.py), so the
three stages overlap.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from mvm_targets.decode_pool import DecodeFailure, decode_in_order
from mvm_targets.errors import InputError
from mvm_targets.shard_writer import Flush, ShardWriter
from mvm_targets.store import schema
from mvm_targets.store.codecs import codec_of_record
from mvm_targets.store.damage import open_shard, read
from mvm_targets.store.diskspace import is_out_of_space, raise_if_out_of_space
from mvm_targets.store.layout import ClipCache
from mvm_targets.store.ledger import Ledger, LedgerEntry
from mvm_targets.store.manifest import update_manifest
from mvm_targets.store.shard_set import ClipRecord, ShardSet
from mvm_targets.targets.spec import Target
from mvm_targets.video.decode import DecodedClip, SamplingConfig
from mvm_targets.video.inputs import VideoItem

SKIP_CLASSES = {"TooShort"}  # the video is fine but not usable at this T: recorded as "skipped"


@dataclass(frozen=True)
class ExtractConfig:
    cache_root: Path
    dataset: str
    sampling: SamplingConfig = SamplingConfig()
    batch_size: int = 8  # clips per target computation
    workers: int = 0  # decode processes; 0 decodes in this process
    clips_per_shard: int = 64
    compression: str | None = "lzf"
    shard_index: int = 0
    num_shards: int = 1
    retry_failed: bool = False


@dataclass
class ExtractSummary:
    videos: int = 0  # videos assigned to this process
    done: int = 0  # videos newly completed for every requested set
    already_done: int = 0
    failed: int = 0
    skipped: int = 0
    failed_earlier: int = 0  # failed or skipped in an earlier run, not retried
    bytes_written: int = 0
    seconds: float = 0.0
    failures: dict[str, int] = field(default_factory=dict)  # error class -> count
    sets: list[str] = field(default_factory=list)
    stages: dict[str, "StageTime"] = field(default_factory=dict)  # "decode", each target id, "write"


@dataclass
class StageTime:
    """Where a stage's time went. `busy`: seconds spent doing its work, summed over the processes
    that did it (decode workers and the writer thread included); `wall`: seconds the extraction loop
    spent in it or waiting for it. With decode workers, decoding overlaps computing, so decode's wall
    time is only the time the loop stalled for frames; shard writes always overlap it (a writer
    thread), so write's wall time is the time the loop waited for a shard to be written."""

    busy: float = 0.0
    wall: float = 0.0


DECODE_STAGE, WRITE_STAGE = "decode", "write"


def bounding_stage(summary: ExtractSummary) -> str | None:
    """The stage the extraction loop spent the most wall time in (or waiting for): what bounded the run."""
    timed = {name: stage.wall for name, stage in summary.stages.items() if stage.wall > 0}
    return max(timed, key=timed.get) if timed else None


def format_stages(summary: ExtractSummary, workers: int = 0) -> str:
    """One line: each stage's wall time (and the busy time of the stages that overlapped the loop)."""
    parts = []
    for name, stage in summary.stages.items():
        if name == DECODE_STAGE and workers > 0:
            parts.append(f"{name} {stage.wall:.1f}s waited, {stage.busy:.1f}s busy in {workers} worker(s)")
        elif name == WRITE_STAGE:
            parts.append(f"{name} {stage.wall:.1f}s waited, {stage.busy:.1f}s busy in the writer thread")
        else:
            parts.append(f"{name} {stage.wall:.1f}s")
    bound = bounding_stage(summary)
    return (f"stages ({summary.seconds:.1f}s wall): " + ", ".join(parts)
            + (f"; bounded by {bound}" if bound else ""))


def shard_of(key: str, num_shards: int) -> int:
    """Deterministic process assignment: the same key goes to the same shard on every machine."""
    return int.from_bytes(hashlib.sha1(key.encode()).digest()[:8], "big") % num_shards


def extract(items: Sequence[VideoItem], targets: Sequence[Target], config: ExtractConfig,
            on_progress: Callable[[int, int], None] | None = None,
            on_estimate: Callable[[str], None] | None = None) -> ExtractSummary:
    """Decode, compute and commit every (video, target) that is not done yet.

    `on_estimate(line)` receives, once the first batch is computed, the bytes per clip that batch
    takes in shards and what the clips still to do will take (from that batch alone: a few clips,
    so a rough figure; `mvmtargets estimate` samples more).
    """
    started = time.perf_counter()
    clip_cache = ClipCache(Path(config.cache_root) / config.dataset / config.sampling.frames_id)
    mine = [item for item in items if shard_of(item.key, config.num_shards) == config.shard_index]
    update_manifest(clip_cache.manifest_path, mine)
    stored = [t for t in _unique(targets) if t.spec.stored]
    check_codecs(stored, config.sampling)
    sets = {schema.FRAMES_SET: clip_cache.frames} | {t.spec.target_id: clip_cache.target_set(t.spec.target_id)
                                                      for t in stored}
    ledger = Ledger(clip_cache.ledger_path)
    _reconcile(ledger, sets)
    summary = ExtractSummary(videos=len(mine), sets=list(sets))
    summary.stages = {DECODE_STAGE: StageTime()} | {t.spec.target_id: StageTime() for t in stored} \
        | {WRITE_STAGE: StageTime()}
    work = _plan(mine, sets, ledger, config.retry_failed, summary)
    writer = _BufferedWriter(sets, stored, config, ledger, summary)
    if on_estimate is not None and work:
        writer.on_first_batch = lambda batch: on_estimate(_first_batch_estimate(writer, batch, len(work)))
    completed = summary.already_done + summary.skipped + summary.failed_earlier
    if on_progress:
        on_progress(completed, len(mine))
    try:
        batch: list[tuple[DecodedClip, set[str]]] = []
        missing_by_key = {item.key: missing for item, missing in work}
        decode = summary.stages[DECODE_STAGE]
        for item, outcome in _timed(_clips_in_order(work, sets[schema.FRAMES_SET], config, decode), decode):
            missing = missing_by_key[item.key]
            if isinstance(outcome, DecodeFailure):
                writer.record_failure(item.key, missing, outcome.error_class, outcome.message)
            else:
                batch.append((outcome, missing))
                if len(batch) >= config.batch_size:
                    writer.add_batch(batch)
                    batch = []
            completed += 1
            if on_progress:
                on_progress(completed, len(mine))
        writer.add_batch(batch)
        writer.flush()  # here, not only in `finally`: a full disk met by the last flush is handled below
    except OSError as error:
        if is_out_of_space(error):
            writer.discard()  # nothing more can be written: a rerun computes the buffered clips again
            raise_if_out_of_space(error, error.filename or clip_cache.root, None,
                                  "free some space and rerun the same command")
        raise
    finally:
        writer.flush()  # on Ctrl-C too: clips already computed are committed, not lost
        summary.seconds = time.perf_counter() - started
    return summary


def check_codecs(targets: Sequence[Target], sampling: SamplingConfig) -> None:
    """Refuse, before anything is decoded, a storage codec that cannot hold a target's clips at this
    T and S (store/codecs.py): one line naming the target."""
    for target in targets:
        spec = target.spec
        codec = codec_of_record({"params": spec.params})
        problem = codec.problem(spec.grid.value, spec.dtype, spec.stored) or \
            codec.shape_problem(spec.grid.value, spec.clip_shape(sampling.num_frames, sampling.size))
        if problem:
            raise InputError(f"target '{spec.target_id}': codec '{codec.name}' {problem}")


def _timed(stream: Iterator, stage: StageTime) -> Iterator:
    """Yield from `stream`, adding the time spent waiting for each element to `stage.wall`."""
    while True:
        started = time.perf_counter()
        try:
            element = next(stream)
        except StopIteration:
            stage.wall += time.perf_counter() - started
            return
        stage.wall += time.perf_counter() - started
        yield element


def _clips_in_order(work: list[tuple[VideoItem, set[str]]], frames_set: ShardSet, config: ExtractConfig,
                    stage: StageTime | None = None) -> Iterator[tuple[VideoItem, DecodedClip | DecodeFailure]]:
    """Clips whose frames are cached come from the frames shards, so a target added later is computed
    from exactly the stored frames (and nothing is decoded twice); the others are decoded.
    Reading and decoding time goes to `stage.busy`."""
    stage = stage or StageTime()
    cached = [item for item, missing in work if schema.FRAMES_SET not in missing]
    to_decode = [item for item, missing in work if schema.FRAMES_SET in missing]
    reads = _read_cached_clips(cached, frames_set)
    while True:
        started = time.perf_counter()
        element = next(reads, None)
        stage.busy += time.perf_counter() - started
        if element is None:
            break
        yield element

    def add_busy(seconds: float) -> None:
        stage.busy += seconds

    # a batch ahead: the workers decode the next batch while this one is computed and written
    yield from decode_in_order(to_decode, config.sampling, config.workers, on_busy=add_busy,
                               read_ahead=config.batch_size + 2 * config.workers)


def _read_cached_clips(items: list[VideoItem], frames_set: ShardSet) -> Iterator[tuple[VideoItem, DecodedClip]]:
    by_key = {item.key: item for item in items}
    for shard_name, keys in frames_set.keys_by_shard().items():
        rows = [(row, key) for row, key in enumerate(keys) if key in by_key]
        if not rows:
            continue
        path = frames_set.directory / shard_name
        with open_shard(path) as handle:
            for row, key in rows:
                source = json.loads(read(handle, schema.SOURCES, row, path, key))
                source.pop("key", None)
                yield by_key[key], DecodedClip(key=key, frames=read(handle, schema.DATA, row, path, key),
                                               frame_indices=read(handle, schema.FRAME_INDICES, row, path, key),
                                               timestamps=read(handle, schema.TIMESTAMPS, row, path, key),
                                               source=source)


def _unique(targets: Sequence[Target]) -> list[Target]:
    by_id = {}
    for target in targets:
        by_id.setdefault(target.spec.target_id, target)
    return list(by_id.values())


def _reconcile(ledger: Ledger, sets: dict[str, ShardSet]) -> None:
    """Shards are the truth: a clip committed just before a crash gets its missing 'done' line."""
    latest = ledger.latest()
    repairs = []
    for set_id, shard_set in sets.items():
        for shard_name, keys in shard_set.keys_by_shard().items():
            for key in keys:
                entry = latest.get((key, set_id))
                if entry is None or entry.status != "done":
                    repairs.append(LedgerEntry(key, set_id, "done", shard=shard_name, message="recovered after restart"))
    ledger.append(repairs)


def _plan(items: Sequence[VideoItem], sets: dict[str, ShardSet], ledger: Ledger, retry_failed: bool,
          summary: ExtractSummary) -> list[tuple[VideoItem, set[str]]]:
    """Which sets each video still needs; done and (unless retried) failed videos are left out."""
    committed = {set_id: shard_set.committed_keys() for set_id, shard_set in sets.items()}
    latest = ledger.latest()
    work = []
    for item in items:
        missing = {set_id for set_id in sets if item.key not in committed[set_id]}
        if not missing:
            summary.already_done += 1
            continue
        earlier = [latest.get((item.key, s)) for s in missing]
        if not retry_failed and any(e is not None and e.status in ("failed", "skipped") for e in earlier):
            summary.failed_earlier += 1  # listed by `info`, retried with --retry-failed
            continue
        work.append((item, missing))
    return work


class _BufferedWriter:
    """Computes targets for batches of decoded clips and commits them shard by shard: a full buffer
    is handed to the writer thread (mvm_targets/shard_writer.py) and written while the next fills.
    Only this (the main) thread updates the summary."""

    def __init__(self, sets: dict[str, ShardSet], targets: list[Target], config: ExtractConfig, ledger: Ledger,
                 summary: ExtractSummary):
        self.sets, self.targets, self.config, self.ledger, self.summary = sets, targets, config, ledger, summary
        self.buffers: dict[str, list[ClipRecord]] = {set_id: [] for set_id in sets}
        self.pending_done: dict[str, set[str]] = {}  # key -> sets still to be committed
        self.attrs = {set_id: shard_attrs(config, set_id, targets) for set_id in sets}
        self.on_first_batch: Callable[[dict[str, list[ClipRecord]]], None] | None = None
        self.writer = ShardWriter(sets, self.attrs, config.compression, ledger)

    def record_failure(self, key: str, set_ids: set[str], error_class: str, message: str) -> None:
        status = "skipped" if error_class in SKIP_CLASSES else "failed"
        self.ledger.append(LedgerEntry(key, s, status, error_class, message) for s in sorted(set_ids))
        if status == "skipped":
            self.summary.skipped += 1
        else:
            self.summary.failed += 1
            self.summary.failures[error_class] = self.summary.failures.get(error_class, 0) + 1

    def add_batch(self, batch: list[tuple[DecodedClip, set[str]]]) -> None:
        if not batch:
            return
        failed: dict[str, tuple[str, str]] = {}
        outputs: dict[str, dict[str, dict[str, np.ndarray]]] = {}
        for target in self.targets:
            set_id = target.spec.target_id
            clips = [clip for clip, missing in batch if set_id in missing]
            if clips:
                started = time.perf_counter()
                computed = compute_target(target, clips)
                stage = self.summary.stages[set_id]
                stage.busy += time.perf_counter() - started
                stage.wall = stage.busy  # computed in this loop: nothing overlaps it
                for key, result in computed.items():
                    if isinstance(result, tuple):
                        failed.setdefault(key, result)
                    else:
                        outputs.setdefault(key, {})[set_id] = result
        added: dict[str, list[ClipRecord]] = {}
        for clip, missing in batch:
            if clip.key in failed:
                self.record_failure(clip.key, missing, *failed[clip.key])
                continue
            for set_id in missing:
                record = clip_record(clip, set_id, outputs.get(clip.key, {}))
                self.buffers[set_id].append(record)
                added.setdefault(set_id, []).append(record)
            self.pending_done[clip.key] = set(missing)
        if self.on_first_batch is not None and added:
            report, self.on_first_batch = self.on_first_batch, None
            report(added)
        if len(self.buffers[schema.FRAMES_SET]) >= self.config.clips_per_shard or \
                max(len(b) for b in self.buffers.values()) >= self.config.clips_per_shard:
            self._collect()  # the loop blocks here only while the previous shard is still being written
            self._hand_over()

    def flush(self) -> None:
        """Commit everything buffered and wait until it is written (and the flush before it)."""
        self._collect()
        if any(self.buffers.values()):
            self._hand_over()
            self._collect()

    def discard(self) -> None:
        """Drop what is buffered (after a write failed: retrying it at exit would fail the same way),
        once the flush in flight has ended."""
        # The disk is full: the flush in flight most likely failed too, and the error being raised
        # already says so; what it did commit is consistent and stays.
        with contextlib.suppress(Exception):
            self._collect()
        self.buffers = {set_id: [] for set_id in self.buffers}
        self.pending_done = {}

    def _hand_over(self) -> None:
        """Give the buffered clips to the writer thread (whose previous flush has been collected)."""
        flush = Flush(records={set_id: records for set_id, records in self.buffers.items() if records},
                      clips=self.pending_done)
        emptied = {set_id: [] for set_id in self.buffers}
        # started before the buffers are emptied: a Ctrl-C in between leaves the clips in both, which
        # costs a commit that finds them committed, never a lost clip
        self.writer.start(flush)
        self.buffers, self.pending_done = emptied, {}

    def _collect(self) -> None:
        """Wait for the flush in flight and count it; raise its error, keeping what it did not commit
        buffered, as a failed commit in this thread would have."""
        flush = self.writer.wait()
        if flush is None:
            return
        write = self.summary.stages.setdefault(WRITE_STAGE, StageTime())
        write.busy += flush.busy
        write.wall += flush.waited
        self.summary.bytes_written += flush.bytes_written
        if flush.error is not None:
            for set_id, records in flush.records.items():
                self.buffers[set_id][:0] = records
            self.pending_done = flush.clips | self.pending_done
            raise flush.error
        self.summary.done += len(flush.clips)


def compute_target(target: Target, clips: list[DecodedClip]) -> dict[str, dict[str, np.ndarray] | tuple[str, str]]:
    """Run a target on a batch; if the batch fails, retry clip by clip to isolate the bad one."""
    try:
        outputs = target.compute(np.stack([c.frames for c in clips]))
        per_clip = {c.key: {name: array[i] for name, array in outputs.items()} for i, c in enumerate(clips)}
    except Exception:
        if len(clips) == 1:
            error = _first_error(target, clips[0])
            return {clips[0].key: error}
        merged: dict = {}
        for clip in clips:
            merged.update(compute_target(target, [clip]))
        return merged
    results: dict = {}
    for key, arrays in per_clip.items():
        bad = [n for n, a in arrays.items() if a.dtype.kind == "f" and not np.isfinite(a).all()]
        results[key] = ("NonFinite", f"{key}: {target.spec.target_id} produced NaN/Inf in {', '.join(bad)}") \
            if bad else arrays
    return results


def _first_error(target: Target, clip: DecodedClip) -> tuple[str, str]:
    try:
        target.compute(clip.frames[None])
    except Exception as error:
        first_line = (str(error).splitlines() or [""])[0][:200]
        return type(error).__name__, f"{clip.key}: {target.spec.target_id} failed: {first_line}"
    return "TargetError", f"{clip.key}: {target.spec.target_id} failed only inside a batch"


def clip_record(clip: DecodedClip, set_id: str, outputs: dict[str, dict[str, np.ndarray]]) -> ClipRecord:
    """What one clip stores in one set: its frames, or the target's `data` and extras (`outputs[set_id]`)."""
    arrays = {"data": clip.frames} if set_id == schema.FRAMES_SET else outputs[set_id]
    return ClipRecord(key=clip.key, data=arrays["data"], frame_indices=clip.frame_indices,
                      timestamps=clip.timestamps, source={**clip.source, "key": clip.key},
                      extras={k: v for k, v in arrays.items() if k != "data"})


def _first_batch_estimate(writer: "_BufferedWriter", records: dict[str, list[ClipRecord]], clips_to_do: int) -> str:
    """The estimate line from the first computed batch, with a warning when the disk looks too small."""
    import shutil

    from mvm_targets.estimate import format_estimate, human_bytes, measure_set

    sizes = [measure_set(set_id, records[set_id], writer.attrs[set_id], writer.config.compression)
             for set_id in writer.sets if records.get(set_id)]
    sample = max(len(r) for r in records.values())
    line = format_estimate(sizes, clips_to_do, writer.config.clips_per_shard,
                           f"from the first {sample} clip(s), for the {clips_to_do} to do")
    needed = sum(size.bytes_for(clips_to_do, writer.config.clips_per_shard) for size in sizes)
    folder = Path(writer.config.cache_root)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    if needed > free:
        line += f"; warning: only {human_bytes(free)} free on {writer.config.cache_root}"
    return line


def shard_attrs(config: ExtractConfig, set_id: str, targets: list[Target]) -> dict:
    sampling = config.sampling
    attrs = {
        "kind": "frames" if set_id == schema.FRAMES_SET else "target",
        "dataset": config.dataset,
        "code_version": schema.code_version(),
        "frames_id": sampling.frames_id,
        "sampling": json.dumps(sampling.describe(), sort_keys=True),
        "decoder": sampling.describe()["decoder"],
        "geometry": json.dumps({"size": sampling.size, "resize": "short side", "crop": "centre"}),
    }
    if set_id == schema.FRAMES_SET:
        return {**attrs, "target_spec": schema.frames_spec_json(sampling.num_frames, sampling.size),
                "target_name": schema.FRAMES_SET, "target_version": schema.SCHEMA_VERSION,
                "config_hash": sampling.config_hash(), "model_id": "", "weights_sha256": ""}
    spec = next(t.spec for t in targets if t.spec.target_id == set_id)
    return {**attrs, "target_spec": spec.to_json(sampling.num_frames, sampling.size), "target_name": spec.name,
            "target_version": spec.version, "config_hash": spec.config_hash(),
            "model_id": spec.model_id or "", "weights_sha256": spec.params.get("weights_sha256", ""),
            "teacher_weights": spec.params.get("weights", "")}  # "random" marks smoke-test teachers
