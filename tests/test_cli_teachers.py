"""The command line with teacher targets: random-weight smoke runs, `all`, weights listing, DALL-E conversion."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import h5py

from mvm_targets.store.layout import open_clip_cache

REPO = Path(__file__).resolve().parents[1]


def cli(*args: str, env_weights: Path | None = None) -> subprocess.CompletedProcess:
    import os

    env = {**os.environ, "MVM_WEIGHTS": str(env_weights)} if env_weights else None
    return subprocess.run([sys.executable, "-c", "from mvm_targets.cli import main; main()", *args], cwd=REPO,
                          capture_output=True, text=True, env=env)


def test_random_teachers_are_marked_in_every_shard(small_videos, tmp_path):
    cache = tmp_path / "cache"
    done = cli("extract", str(small_videos), "-t", "tvf", "-o", "tvf.arch=tiny", "-t", "sif:timm",
               "-o", "sif.model=resnet18", "--weights", "random", "--out", str(cache), "--frames", "2", "--size", "64")
    assert done.returncode == 0, done.stderr
    assert "done 5" in done.stdout
    sets = open_clip_cache(cache, "videos").target_sets()
    assert sorted(s.set_id.split("-")[0] for s in sets) == ["sif", "tvf"]
    for shard_set in sets:
        with h5py.File(shard_set.shards()[0]) as handle:
            assert handle.attrs["teacher_weights"] == "random"
            assert handle.attrs["model_id"].startswith("random:")
    verified = cli("verify", "--cache", str(cache))
    assert verified.returncode == 0, verified.stderr


def test_all_skips_teachers_without_weights_and_says_why(small_videos, tmp_path):
    done = cli("extract", str(small_videos), "-t", "all", "--out", str(tmp_path / "cache"), "--frames", "2",
               "--size", "64", env_weights=tmp_path / "empty_weights")
    assert done.returncode == 0, done.stderr
    for name in ("depth", "vq", "sif", "tvf", "mmf"):
        assert f"skipping {name}" in done.stderr
    assert "download it from" in done.stderr
    ids = {s.set_id.split("-")[0] for s in open_clip_cache(tmp_path / "cache", "videos").target_sets()}
    assert {"hog", "flow"} <= ids and not ids & {"depth", "vq", "sif", "tvf", "mmf"}  # teachers skipped


def test_weights_lists_every_teacher_with_source_and_presence(tmp_path):
    (tmp_path / "torchvision").mkdir()
    (tmp_path / "torchvision" / "raft_large_C_T_SKHT_V2-ff5fadd5.pth").write_bytes(b"x")
    listed = cli("weights", "--weights-dir", str(tmp_path))
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    raft = next(i for i, line in enumerate(lines) if "raft_large_C_T_SKHT_V2-ff5fadd5.pth" in line)
    assert "present" in lines[raft] and "https://download.pytorch.org" in lines[raft + 1]
    for used_by in ("depth:dpt-large", "vq ", "sif:swin-b-in22k", "tvf:k600", "mmf:vit-b32"):
        assert used_by in listed.stdout
    assert listed.stdout.count("missing") >= 5


def test_convert_dalle_refuses_without_consent(tmp_path):
    pkl = tmp_path / "encoder.pkl"
    pkl.write_bytes(b"not really a pickle")
    refused = cli("convert-dalle", str(pkl))
    assert refused.returncode == 2 and "--allow-pickle" in refused.stderr and "Traceback" not in refused.stderr
