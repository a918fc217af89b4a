"""`torchrun --nproc-per-node 2 ... extract`: the processes split the videos by key hash ($RANK of
$WORLD_SIZE), each commits shards of its own keys only, and together they store every clip once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import h5py

from mvm_targets.extract import shard_of
from mvm_targets.store import schema
from mvm_targets.store.reader import CacheReader
from mvm_targets.store.verify import verify_cache
from mvm_targets.video.inputs import discover_inputs
from tests.conftest import write_video

REPO = Path(__file__).resolve().parents[1]


def test_two_torchrun_processes_split_the_videos_by_key_hash(tmp_path):
    folder = tmp_path / "videos"
    for i in range(8):
        write_video(folder / f"v{i}.mp4", num_frames=8, width=64, height=64)
    keys = [item.key for item in discover_inputs([folder])]
    assert {shard_of(k, 2) for k in keys} == {0, 1}  # both processes have work
    cache = tmp_path / "cache"
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "mvm_targets.cli", "extract", str(folder), "-t", "hog", "--cache", str(cache), "--dataset", "toy",
         "--frames", "4", "--size", "64", "--clips-per-shard", "2", "--batch-size", "2"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "share 0/2" in done.stdout and "share 1/2" in done.stdout
    report = verify_cache(cache)
    assert report.ok, report.problems
    assert report.clips == 2 * len(keys)  # frames and hog, each clip exactly once
    assert sorted(CacheReader(cache, "toy", targets=["hog"]).keys) == sorted(keys)
    shards = sorted(cache.rglob("shard-*.h5"))
    assert shards
    for shard in shards:  # a shard holds the keys of one process only
        with h5py.File(shard, "r") as handle:
            owners = {shard_of(k.decode(), 2) for k in handle[schema.KEYS][()]}
        assert len(owners) == 1, shard
