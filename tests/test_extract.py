"""End to end: extract -> shards -> verify -> reader; bad inputs, crashes and concurrent writers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import h5py
import numpy as np
import pytest

from mvm_targets.extract import ExtractConfig, extract, shard_of
from mvm_targets.store import schema
from mvm_targets.store.layout import open_clip_cache
from mvm_targets.store.ledger import Ledger
from mvm_targets.store.reader import CacheReader
from mvm_targets.store.verify import verify_cache
from mvm_targets.targets import build_target
from mvm_targets.video.decode import SamplingConfig
from mvm_targets.video.inputs import discover_inputs
from tests.conftest import write_video

SAMPLING = SamplingConfig(num_frames=4, size=64)
REPO = Path(__file__).resolve().parents[1]


def run(folder: Path, cache: Path, refs=("pixel", "hog", "flow:dis"), **overrides):
    config = ExtractConfig(cache_root=cache, dataset="toy", sampling=SAMPLING, batch_size=2,
                           clips_per_shard=2, **overrides)
    return extract(discover_inputs([folder]), [build_target(r) for r in refs], config)


def cli(*args: str) -> list[str]:
    return [sys.executable, "-c", "from mvm_targets.cli import main; main()", *args]


def test_extract_writes_every_target_and_a_rerun_skips_done_work(small_videos, tmp_path):
    cache = tmp_path / "cache"
    summary = run(small_videos, cache)
    assert (summary.done, summary.failed, summary.videos) == (5, 0, 5)
    assert verify_cache(cache).ok
    reader = CacheReader(cache, "toy", targets=["pixel", "hog", "flow"])
    assert len(reader) == 5
    clip = reader["a/clip1"]
    assert clip["frames"].shape == (4, 64, 64, 3) and clip["pixel"].shape == (4, 3, 64, 64)
    assert clip["hog"].shape == (4, 64, 64) and clip["hog"].dtype == np.float16
    assert clip["flow"].shape == (3, 2, 64, 64) and clip["flow/max_magnitude"].shape == (3,)
    attrs = reader.attrs("hog")
    assert attrs["target_spec"]["name"] == "hog" and attrs["frames_id"] == SAMPLING.frames_id
    assert attrs["decoder"].startswith("pyav") and attrs["code_version"]
    shards = sorted(p for p in cache.rglob("shard-*.h5"))
    again = run(small_videos, cache)
    assert (again.done, again.already_done) == (0, 5)
    assert sorted(p for p in cache.rglob("shard-*.h5")) == shards


def test_adding_a_target_later_creates_a_new_set_and_never_rewrites_old_shards(small_videos, tmp_path):
    cache = tmp_path / "cache"
    run(small_videos, cache, refs=("hog",))
    before = {p: p.stat().st_mtime_ns for p in cache.rglob("shard-*.h5")}
    summary = run(small_videos, cache, refs=("hog", "hog:maskfeat"))
    assert summary.done == 5
    assert {p: p.stat().st_mtime_ns for p in before} == before
    clip_cache = open_clip_cache(cache, "toy")
    assert sorted(s.set_id.split("-")[1] for s in clip_cache.target_sets()) == ["maskfeat", "paper"]
    assert verify_cache(cache).ok


def test_a_target_added_later_is_computed_from_the_cached_frames_not_a_new_decode(small_videos, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    run(small_videos, cache, refs=("hog",))
    import mvm_targets.extract as extract_module

    def no_decoding(items, *args, **kwargs):
        assert not items, "cached clips must not be decoded again"
        return iter(())

    monkeypatch.setattr(extract_module, "decode_in_order", no_decoding)
    summary = run(small_videos, cache, refs=("hog", "hog:maskfeat"))
    assert summary.done == 5 and summary.failed == 0
    reader = CacheReader(cache, "toy", targets=["hog:maskfeat"])
    clip = reader["a/clip1"]
    expected = build_target("hog:maskfeat").compute(clip["frames"][None])["data"][0]
    np.testing.assert_array_equal(clip["hog:maskfeat"], expected)
    assert verify_cache(cache).ok


def write_audio_only(path: Path) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 16000
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_bad_input_folder_is_fully_accounted_for(tmp_path):
    folder = tmp_path / "mixed"
    for i in range(2):
        write_video(folder / f"good{i}.mp4", num_frames=10)
    (folder / "empty.mp4").write_bytes(b"")
    (folder / "text.mp4").write_text("not a video\n" * 50)
    whole = write_video(tmp_path / "whole.mp4", num_frames=30).read_bytes()
    (folder / "truncated.mp4").write_bytes(whole[: len(whole) // 3])
    write_audio_only(folder / "audio_only.mp4")
    write_video(folder / "one_frame.mp4", num_frames=1)
    write_video(folder / "short.mp4", num_frames=2)
    write_video(folder / "huge.mp4", num_frames=4, width=3840, height=2160, codec="mpeg4")
    summary = run(folder, tmp_path / "cache", refs=("hog",))
    latest = Ledger(open_clip_cache(tmp_path / "cache", "toy").ledger_path).latest()
    status = {key: (e.status, e.error_class) for (key, set_id), e in latest.items() if set_id == "frames"}
    assert status["good0"] == status["good1"] == status["huge"] == ("done", "")
    assert status["empty"] == ("failed", "EmptyFile")
    assert status["text"] == ("failed", "OpenError")
    assert status["audio_only"] == ("failed", "NoVideoStream")
    assert status["truncated"][0] == "failed" and status["truncated"][1] in ("OpenError", "DecodeError")
    assert status["one_frame"] == status["short"] == ("skipped", "TooShort")
    for key, (state, _) in status.items():
        if state != "done":
            message = latest[(key, "frames")].message
            assert key in message and "\n" not in message and len(message) < 300
    assert (summary.done, summary.failed, summary.skipped) == (3, 4, 2)
    assert verify_cache(tmp_path / "cache").ok
    rerun = run(folder, tmp_path / "cache", refs=("hog",))
    assert (rerun.done, rerun.already_done, rerun.failed_earlier) == (0, 3, 6)
    retried = run(folder, tmp_path / "cache", refs=("hog",), retry_failed=True)
    assert (retried.done, retried.failed, retried.skipped) == (0, 4, 2)


@pytest.mark.parametrize("kill_when", ["shard_being_written", "three_shards_committed"])
def test_sigkill_mid_extract_then_rerun_completes_without_loss_or_duplicates(tmp_path, kill_when):
    folder = tmp_path / "many"
    for i in range(10):
        write_video(folder / f"v{i:02d}.mp4", num_frames=8 + i)
    args = cli("extract", str(folder), "-t", "hog", "--out", str(tmp_path / "cache"), "--dataset", "toy",
               "--frames", "4", "--size", "64", "--clips-per-shard", "1", "--batch-size", "1")
    clip_dir = tmp_path / "cache" / "toy" / SAMPLING.frames_id

    def ready() -> bool:
        if kill_when == "shard_being_written":
            return any(clip_dir.glob("*/.shard-*.tmp"))
        return len(list(clip_dir.glob("frames/shard-*.h5"))) >= 3

    process = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and not ready():
        time.sleep(0.001)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert len(list(clip_dir.glob("frames/shard-*.h5"))) < 10, "the kill should land mid-run"
    subprocess.run(args, cwd=REPO, check=True, capture_output=True)
    report = verify_cache(tmp_path / "cache")
    assert report.ok, report.problems
    reader = CacheReader(tmp_path / "cache", "toy", targets=["hog"])
    assert reader.keys == [f"v{i:02d}" for i in range(10)]
    reference = tmp_path / "reference"
    run(folder, reference, refs=("hog",))
    expected = CacheReader(reference, "toy", targets=["hog"])
    for key in reader.keys:
        np.testing.assert_array_equal(reader[key]["hog"], expected[key]["hog"])
        np.testing.assert_array_equal(reader[key]["frames"], expected[key]["frames"])


def test_two_processes_writing_one_cache_never_corrupt_or_duplicate(tmp_path):
    folder = tmp_path / "many"
    for i in range(8):
        write_video(folder / f"v{i}.mp4", num_frames=10)
    args = cli("extract", str(folder), "-t", "hog", "--out", str(tmp_path / "cache"), "--dataset", "toy",
               "--frames", "4", "--size", "64", "--clips-per-shard", "2", "--batch-size", "1")
    processes = [subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    for process in processes:
        _, error = process.communicate(timeout=120)
        assert process.returncode == 0, error.decode()
    report = verify_cache(tmp_path / "cache")
    assert report.ok, report.problems
    assert report.clips == 16  # 8 frames clips + 8 hog clips, each exactly once


def test_shares_split_keys_deterministically_and_disjointly(small_videos, tmp_path):
    keys = [item.key for item in discover_inputs([small_videos])]
    assert [shard_of(k, 3) for k in keys] == [shard_of(k, 3) for k in keys]
    cache = tmp_path / "cache"
    for index in range(2):
        run(small_videos, cache, refs=("hog",), shard_index=index, num_shards=2)
    reader = CacheReader(cache, "toy", targets=["hog"])
    assert sorted(reader.keys) == sorted(keys)
    assert verify_cache(cache).ok


def test_verify_reports_nan_values_and_lost_shards(small_videos, tmp_path):
    cache = tmp_path / "cache"
    run(small_videos, cache, refs=("hog",))
    hog_set = next(s for s in open_clip_cache(cache, "toy").target_sets())
    first, second = hog_set.shards()[:2]
    with h5py.File(first, "r+") as handle:
        handle[schema.DATA][0, 0, 0, 0] = np.nan
    second.unlink()
    problems = verify_cache(cache).problems
    assert any("NaN/Inf" in p for p in problems)
    assert any("ledger says" in p and "no shard holds it" in p for p in problems)
    result = subprocess.run(cli("verify", "--cache", str(cache)), cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 1 and "problem:" in result.stderr


def test_cli_unknown_target_is_a_one_line_error_listing_known_targets(small_videos, tmp_path):
    result = subprocess.run(cli("extract", str(small_videos), "-t", "hogg", "--out", str(tmp_path / "c")),
                            cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "unknown target 'hogg'; known targets: pixel, hog, depth, flow, vq, sif, tvf, mmf" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_extract_info_and_show(small_videos, tmp_path):
    cache = str(tmp_path / "cache")
    done = subprocess.run(cli("extract", str(small_videos), "-t", "hog", "-t", "flow", "--out", cache,
                              "--frames", "4", "--size", "64", "--workers", "2"), cwd=REPO, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    assert "done 5, already done 0, failed 0" in done.stdout
    info = subprocess.run(cli("info", "--cache", cache), cwd=REPO, capture_output=True, text=True)
    assert "5 clips" in info.stdout and "flow-dis-" in info.stdout
    png = tmp_path / "show.png"
    shown = subprocess.run(cli("show", "a/clip1", "--target", "flow", "--cache", cache, "--out", str(png)),
                           cwd=REPO, capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    from PIL import Image
    image = np.asarray(Image.open(png))
    assert image.shape[0] > 64 * 2 and image.shape[1] >= 64 * 4


def test_real_sample_video_end_to_end(shared_video, tmp_path):
    config = ExtractConfig(cache_root=tmp_path / "cache", dataset="real", sampling=SamplingConfig())
    targets = [build_target(r) for r in ("hog", "hog:maskfeat", "flow")]
    summary = extract(discover_inputs([shared_video.parent]), targets, config)
    assert summary.failed == 0 and summary.done >= 1
    assert verify_cache(tmp_path / "cache").ok
    reader = CacheReader(tmp_path / "cache", "real", targets=["hog", "hog:maskfeat", "flow"])
    clip = reader[reader.keys[0]]
    assert clip["hog"].shape == (4, 224, 224) and clip["hog:maskfeat"].shape == (4, 49, 432)
    assert clip["flow"].shape == (3, 2, 224, 224) and np.isfinite(clip["flow"].astype(np.float32)).all()


def test_cli_target_options_reach_the_target_and_its_id(small_videos, tmp_path):
    cache = str(tmp_path / "cache")
    done = subprocess.run(cli("extract", str(small_videos), "-t", "flow", "-o", "flow.preset=ultrafast", "--out",
                              cache, "--frames", "2", "--size", "64"), cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    [flow_set] = open_clip_cache(tmp_path / "cache", "videos").target_sets()
    assert flow_set.set_id == build_target("flow", preset="ultrafast").spec.target_id
    assert flow_set.set_id != build_target("flow").spec.target_id
    bad = subprocess.run(cli("extract", str(small_videos), "-t", "flow", "-o", "flow.colour=red", "--out", cache),
                         cwd=REPO, capture_output=True, text=True)
    assert bad.returncode == 2 and "does not accept option(s) ['colour']" in bad.stderr
    assert "Traceback" not in bad.stderr
