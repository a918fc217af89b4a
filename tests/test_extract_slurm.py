"""`extract --launcher slurm`: a job array of key-hash shares through submitit's local executor;
a preempted share is requeued, resumes from the ledger, and nothing is lost or stored twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mvm_targets.extract import shard_of
from mvm_targets.store import schema
from mvm_targets.store.layout import ClipCache
from mvm_targets.store.ledger import Ledger
from mvm_targets.store.reader import CacheReader
from mvm_targets.store.summary import summarize_cache
from mvm_targets.store.verify import verify_cache
from mvm_targets.video.decode import SamplingConfig
from mvm_targets.video.inputs import discover_inputs
from tests.conftest import write_video

REPO = Path(__file__).resolve().parents[1]


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def extract_child_of_share(cache: Path, index: int) -> int | None:
    """The pid of the array task running share `index` (the parent of its `extract` child)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        tokens = [a.decode(errors="replace") for a in argv]
        if str(cache) in tokens and "--shard-index" in tokens and tokens[tokens.index("--shard-index") + 1] == str(index):
            return int(stat.rsplit(")", 1)[1].split()[1])  # field 4: the parent's pid
    return None


def done_keys(cache: Path, set_prefix: str) -> set[str]:
    ledger_path = ClipCache(cache / "toy" / SamplingConfig(num_frames=4, size=64).frames_id).ledger_path
    if not ledger_path.exists():
        return set()
    return {key for (key, set_id), entry in Ledger(ledger_path).latest().items()
            if set_id.startswith(set_prefix) and entry.status == "done"}


def results(folder: Path) -> list:
    """The outcome of every finished array task in submitit's folder."""
    from submitit.core.utils import pickle_load

    return [pickle_load(path) for path in sorted(folder.glob("*_result.pkl"))]


def test_slurm_array_shares_resume_after_preemption_without_loss_or_duplicates(tmp_path):
    pytest.importorskip("submitit")
    folder = tmp_path / "videos"
    for i in range(12):
        write_video(folder / f"v{i:02d}.mp4", num_frames=8, width=64, height=64)
    keys = [item.key for item in discover_inputs([folder])]
    share0 = {k for k in keys if shard_of(k, 2) == 0}
    assert 2 <= len(share0) <= 10
    cache, logs = tmp_path / "cache", tmp_path / "submitit"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}
    output = tmp_path / "submit.log"  # a file, not a pipe: the local tasks inherit it and outlive the submitter
    with output.open("w") as sink:
        submitted = subprocess.run(
            [sys.executable, "-m", "mvm_targets.cli", "extract", str(folder), "-t", "hog", "--cache", str(cache),
             "--dataset", "toy", "--frames", "4", "--size", "64", "--clips-per-shard", "1", "--batch-size", "1",
             "--launcher", "slurm", "--array", "2", "--slurm-cluster", "local", "--slurm-time", "10",
             "--slurm-folder", str(logs)], cwd=REPO, stdout=sink, stderr=subprocess.STDOUT, timeout=60, env=env)
    assert submitted.returncode == 0, output.read_text()
    assert "submitted 2 share(s)" in output.read_text()

    # preempt share 0 once it has committed some of its clips but not all
    wait_for(lambda: done_keys(cache, schema.FRAMES_SET) & share0, 90, "share 0 to commit a clip")
    task = extract_child_of_share(cache, 0)
    committed_at_preemption = len(done_keys(cache, schema.FRAMES_SET) & share0)
    assert task is not None and committed_at_preemption < len(share0), "the preemption should land mid-share"
    os.kill(task, signal.SIGUSR2)

    wait_for(lambda: len(results(logs)) == 2, 120, "both array tasks to finish")
    outcomes = sorted((result for state, result in results(logs)), key=lambda outcome: outcome["share"])
    assert outcomes == [{"share": 0, "attempts": 2}, {"share": 1, "attempts": 1}]
    report = verify_cache(cache)
    assert report.ok, report.problems
    assert report.clips == 2 * len(keys)  # frames and hog, each clip exactly once
    reader = CacheReader(cache, "toy", targets=["hog"])
    assert sorted(reader.keys) == sorted(keys)
    assert done_keys(cache, schema.FRAMES_SET) == set(keys) == done_keys(cache, "hog")
    (summary,) = summarize_cache(cache, "toy")  # `info` reads the union of the shares
    assert sorted(s.clips for s in summary.sets) == [len(keys), len(keys)]


def test_cli_slurm_launcher_needs_an_array_size(tmp_path):
    write_video(tmp_path / "videos" / "a.mp4", num_frames=8)
    done = subprocess.run([sys.executable, "-m", "mvm_targets.cli", "extract", str(tmp_path / "videos"), "-t", "hog",
                           "--cache", str(tmp_path / "cache"), "--launcher", "slurm"],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "--launcher slurm needs --array N" in done.stderr
    assert not (tmp_path / "cache").exists()
