"""Shard writes overlap compute: commits run in a writer thread, and an error, a Ctrl-C or a slow disk
there leaves the store as consistent as a synchronous commit did.

Overlap is shown by ordering, never by timing: a commit that can only finish once the next batch's
compute has started finishes only if the two run at once.
"""

from __future__ import annotations

import errno
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from mvm_targets.errors import one_line
from mvm_targets.extract import ExtractConfig, bounding_stage, extract, format_stages
from mvm_targets.interrupts import MESSAGE as INTERRUPTED
from mvm_targets.store import schema
from mvm_targets.store.layout import open_clip_cache
from mvm_targets.store.ledger import Ledger
from mvm_targets.store.reader import CacheReader
from mvm_targets.store.shard_set import ShardSet
from mvm_targets.store.verify import verify_cache
from mvm_targets.targets import build_target
from mvm_targets.targets.hog import HogTarget
from mvm_targets.video.decode import SamplingConfig, decode_clip
from mvm_targets.video.inputs import discover_inputs

SAMPLING = SamplingConfig(num_frames=4, size=64)
REPO = Path(__file__).resolve().parents[1]
GATE_SECONDS = 60  # only reached when the overlap is missing; the test then fails instead of hanging


def run(folder, cache, clips_per_shard=1, batch_size=1):
    config = ExtractConfig(cache_root=cache, dataset="toy", sampling=SAMPLING, batch_size=batch_size,
                           clips_per_shard=clips_per_shard)
    return extract(discover_inputs([folder]), [build_target("hog")], config)


def keys_of(folder) -> list[str]:
    return [item.key for item in discover_inputs([folder])]


def committed(cache, which: str) -> set[str]:
    clip_cache = open_clip_cache(cache, "toy")
    shard_set = clip_cache.frames if which == schema.FRAMES_SET else clip_cache.target_sets()[0]
    return ShardSet(shard_set.directory).committed_keys()


def assert_complete_and_exact(folder, cache):
    """Every clip stored once, holding its own decode and the HOG of those frames, computed here."""
    report = verify_cache(cache)
    assert report.ok, report.problems
    items = discover_inputs([folder])
    reader = CacheReader(cache, "toy", targets=["hog"])
    assert reader.keys == sorted(item.key for item in items)
    assert report.clips == 2 * len(items)  # frames + hog, each clip exactly once
    hog = build_target("hog")
    for item in items:
        frames = decode_clip(item.key, item.path, SAMPLING).frames
        np.testing.assert_array_equal(reader[item.key]["frames"], frames)
        np.testing.assert_array_equal(reader[item.key]["hog"], hog.compute(frames[None])["data"][0])


def test_the_next_batch_is_computed_while_the_previous_shard_is_written(small_videos, tmp_path, monkeypatch):
    events: list[tuple[str, str, float]] = []  # (what, thread, perf_counter): list.append is atomic
    second_compute = threading.Event()
    overlapped: list[bool] = []
    real_compute, real_commit = HogTarget.compute, ShardSet.commit

    def compute(self, frames):
        computes = sum(1 for what, _, _ in events if what == "compute")
        events.append(("compute", threading.current_thread().name, time.perf_counter()))
        if computes == 1:
            second_compute.set()
        return real_compute(self, frames)

    def commit(self, records, *args, **kwargs):
        events.append(("commit start", threading.current_thread().name, time.perf_counter()))
        if not overlapped:  # the first shard cannot finish until the second clip is being computed
            overlapped.append(second_compute.wait(GATE_SECONDS))
        result = real_commit(self, records, *args, **kwargs)
        events.append(("commit end", threading.current_thread().name, time.perf_counter()))
        return result

    monkeypatch.setattr(HogTarget, "compute", compute)
    monkeypatch.setattr(ShardSet, "commit", commit)
    summary = run(small_videos, tmp_path / "cache")
    monkeypatch.undo()
    assert overlapped == [True], "the second clip's compute did not start while the first shard was written"
    first_end = next(t for what, _, t in events if what == "commit end")
    second_start = [t for what, _, t in events if what == "compute"][1]
    assert second_start < first_end
    main = threading.main_thread().name
    assert {thread for what, thread, _ in events if what == "compute"} == {main}
    assert main not in {thread for what, thread, _ in events if what.startswith("commit")}
    assert summary.done == 5 and summary.failed == 0
    assert summary.stages["write"].busy > 0
    report = verify_cache(tmp_path / "cache")
    assert report.ok and report.clips == 10, report.problems


@pytest.mark.parametrize("slow", ["write", "compute"])
def test_the_summary_names_the_stage_that_bounded_the_run(small_videos, tmp_path, monkeypatch, slow):
    """A stage made 100 times slower than the others (0.3 s a call against milliseconds) bounds the run."""
    build_target("hog").compute(np.zeros((1, 4, 64, 64, 3), np.uint8))  # compile the kernels before timing
    real_compute, real_commit = HogTarget.compute, ShardSet.commit

    def compute(self, frames):
        if slow == "compute":
            time.sleep(0.3)
        return real_compute(self, frames)

    def commit(self, *args, **kwargs):
        if slow == "write":
            time.sleep(0.3)
        return real_commit(self, *args, **kwargs)

    monkeypatch.setattr(HogTarget, "compute", compute)
    monkeypatch.setattr(ShardSet, "commit", commit)
    summary = run(small_videos, tmp_path / "cache")
    hog_id = build_target("hog").spec.target_id
    assert bounding_stage(summary) == ("write" if slow == "write" else hog_id)
    write = summary.stages["write"]
    assert write.busy > 2.9 if slow == "write" else write.busy < 2.9  # 5 frames + 5 hog commits of 0.3 s
    assert sum(stage.wall for stage in summary.stages.values()) <= summary.seconds + 1e-6
    line = format_stages(summary)
    assert f"write {write.wall:.1f}s waited, {write.busy:.1f}s busy in the writer thread" in line
    assert line.endswith(f"; bounded by {bounding_stage(summary)}")


@pytest.mark.parametrize("failing", ["second", "last"])
def test_an_error_in_the_writer_thread_is_the_extracts_error_and_the_store_stays_consistent(
        small_videos, tmp_path, monkeypatch, failing):
    """The hog ledger lines of one clip cannot be written (EIO): its shard is withdrawn in the writer
    thread, the extract raises that very error in the main thread (at the next hand-over, or at the
    end), and the cache verifies; a rerun completes it."""
    keys = keys_of(small_videos)
    victim = keys[1] if failing == "second" else keys[-1]
    cache = tmp_path / "cache"
    raised: list[OSError] = []
    real_append = Ledger.append

    def append(self, entries):
        entries = list(entries)
        if any(e.key == victim and e.status == "done" and e.set_id != schema.FRAMES_SET for e in entries):
            raised.append(OSError(errno.EIO, "Input/output error", str(self.path)))
            raise raised[-1]
        return real_append(self, entries)

    monkeypatch.setattr(Ledger, "append", append)
    with pytest.raises(OSError) as caught:
        run(small_videos, cache)
    monkeypatch.undo()
    assert caught.value in raised and caught.value.errno == errno.EIO
    ledger_path = open_clip_cache(cache, "toy").ledger_path
    assert one_line(caught.value) == f"{ledger_path}: input/output error"  # what `mvmtargets` prints
    assert victim not in committed(cache, "hog")  # its shard was withdrawn
    if failing == "second":  # surfaced when the third clip was handed over: the last two were never decoded
        assert committed(cache, schema.FRAMES_SET) == set(keys[:3])
    else:
        assert committed(cache, schema.FRAMES_SET) == set(keys)
    report = verify_cache(cache)
    assert report.ok, report.problems  # shards and ledger agree both ways
    assert not list(cache.rglob("*.tmp"))
    again = run(small_videos, cache)
    assert again.failed == 0 and again.done + again.already_done == len(keys)
    assert_complete_and_exact(small_videos, cache)


def test_ctrl_c_during_compute_with_a_write_in_flight_commits_everything_computed(small_videos, tmp_path,
                                                                                   monkeypatch):
    """Shards of two clips: clips 1-2 are being written and clip 3 is buffered when Ctrl-C lands in
    clip 4's compute. The shard in flight finishes, clip 3 is committed, nothing else is; a rerun
    computes clips 4-5 only."""
    keys = keys_of(small_videos)
    write_started, interrupting = threading.Event(), threading.Event()
    gate: list[bool] = []
    computes: list[int] = []
    real_compute, real_commit = HogTarget.compute, ShardSet.commit

    def compute(self, frames):
        computes.append(len(frames))
        if len(computes) == 4:
            assert write_started.wait(GATE_SECONDS), "the first shard never started"
            interrupting.set()
            raise KeyboardInterrupt
        return real_compute(self, frames)

    def commit(self, *args, **kwargs):
        if not gate:  # the first shard is held in flight until the Ctrl-C has been raised
            write_started.set()
            gate.append(interrupting.wait(GATE_SECONDS))
        return real_commit(self, *args, **kwargs)

    monkeypatch.setattr(HogTarget, "compute", compute)
    monkeypatch.setattr(ShardSet, "commit", commit)
    cache = tmp_path / "cache"
    with pytest.raises(KeyboardInterrupt):
        run(small_videos, cache, clips_per_shard=2)
    monkeypatch.undo()
    assert gate == [True]
    assert committed(cache, schema.FRAMES_SET) == committed(cache, "hog") == set(keys[:3])
    report = verify_cache(cache)
    assert report.ok, report.problems
    again = run(small_videos, cache, clips_per_shard=2)
    assert (again.done, again.already_done, again.failed) == (2, 3, 0)
    assert_complete_and_exact(small_videos, cache)


# Each clip's compute takes 0.2 s, so the run is surely under way when the first shard appears.
SLOW_EXTRACT = textwrap.dedent("""
    import time
    from mvm_targets.targets.hog import HogTarget
    _compute = HogTarget.compute
    def compute(self, frames):
        time.sleep(0.2)
        return _compute(self, frames)
    HogTarget.compute = compute
    from mvm_targets.cli import main
    main()
""")


def test_a_real_ctrl_c_in_the_cli_exits_130_with_a_consistent_cache(small_videos, tmp_path):
    cache = tmp_path / "cache"
    args = [sys.executable, "-c", SLOW_EXTRACT, "extract", str(small_videos), "-t", "hog", "--out", str(cache),
            "--dataset", "toy", "--frames", "4", "--size", "64", "--clips-per-shard", "1", "--batch-size", "1"]
    process = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not any(cache.rglob("frames/shard-*.h5")) and process.poll() is None:
        time.sleep(0.01)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1] == INTERRUPTED and "Traceback" not in stderr
    frames, hog = committed(cache, schema.FRAMES_SET), committed(cache, "hog")
    assert frames and frames == hog and len(frames) < 5, (frames, hog)  # stopped mid-run, nothing half-committed
    report = verify_cache(cache)
    assert report.ok, report.problems
    again = run(small_videos, cache)
    assert (again.done, again.already_done) == (5 - len(frames), len(frames))
    assert_complete_and_exact(small_videos, cache)
