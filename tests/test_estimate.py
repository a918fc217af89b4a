"""`mvmtargets estimate` sizes the cache before anything is written; extract prints the same line,
its device and where its time went."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from mvm_targets.estimate import SetSize, human_bytes, sample_evenly

REPO = Path(__file__).resolve().parents[1]
UNITS = {"B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12}


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from mvm_targets.cli import main; main()", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def parse_bytes(text: str) -> float:
    number, unit = text.split()
    return float(number) * UNITS[unit]


def test_sample_spreads_over_the_inputs_and_sizes_count_whole_shards():
    assert sample_evenly(list(range(10)), 4) == [0, 3, 6, 9]
    assert sample_evenly(list(range(3)), 8) == [0, 1, 2]
    assert sample_evenly(list(range(5)), 1) == [0]
    law = SetSize("hog", per_clip=100.0, per_shard=1000.0)
    assert law.bytes_for(10, 4) == 3 * 1000 + 10 * 100  # shards of 4, 4 and 2 clips
    assert law.bytes_per_clip(4) == 350.0
    assert human_bytes(2.4e6) == "2.40 MB" and human_bytes(512) == "512 B"


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("estimate") / "synthetic"
    done = cli("synth", str(out), "--clips", "12", "--frames", "8", "--size", "64")
    assert done.returncode == 0, done.stderr
    return out


def test_estimate_agrees_with_the_bytes_extract_writes(synthetic, tmp_path):
    common = ["-t", "hog", "--frames", "4", "--size", "64", "--clips-per-shard", "4"]
    estimated = cli("estimate", str(synthetic), *common, "--sample", "4")
    assert estimated.returncode == 0, estimated.stderr
    assert not (synthetic / "cache").exists() and not any(tmp_path.iterdir())  # nothing written
    total = re.search(r"total: (\S+ \S+) per clip, (\S+ \S+) for 12 clips", estimated.stdout)
    assert total, estimated.stdout
    assert re.search(r"^\s+frames\s+\S+ \S+ per clip", estimated.stdout, re.M)
    assert re.search(r"^\s+hog-\S+\s+\S+ \S+ per clip", estimated.stdout, re.M)

    cache = tmp_path / "cache"
    extracted = cli("extract", str(synthetic), *common, "--cache", str(cache), "--dataset", "toy", "--batch-size", "4")
    assert extracted.returncode == 0, extracted.stderr
    written = sum(p.stat().st_size for p in cache.rglob("shard-*.h5"))
    assert written > 0 and abs(parse_bytes(total.group(2)) - written) <= 0.10 * written, (total.group(2), written)

    lines = extracted.stdout.splitlines()
    assert re.search(r"; device: cpu$", lines[0]), lines[0]  # --device auto, and this machine has no CUDA
    first_batch = next(line for line in lines if line.startswith("estimate (from the first 4 clip(s), for the 12"))
    in_all = parse_bytes(re.search(r"; (\S+ \S+) in all$", first_batch).group(1))
    assert abs(in_all - written) <= 0.25 * written  # four clips only: a rougher figure
    assert re.search(r"^done 12, already done 0, failed 0", extracted.stdout, re.M)
    stages = next(line for line in lines if line.startswith("stages ("))
    seconds = {name: float(value) for name, value in re.findall(r"(decode|hog-[\w-]+|write) (\d+\.\d)s", stages)}
    assert set(seconds) == {"decode", "write"} | {n for n in seconds if n.startswith("hog-")} and len(seconds) == 3
    bound = re.search(r"; bounded by (\S+)$", stages).group(1)
    assert seconds[bound] == max(seconds.values())


def test_extract_with_decode_workers_reports_waited_and_busy_decode_time(synthetic, tmp_path):
    from mvm_targets.extract import ExtractConfig, extract, format_stages
    from mvm_targets.targets import build_target
    from mvm_targets.video.decode import SamplingConfig
    from mvm_targets.video.inputs import discover_inputs

    config = ExtractConfig(cache_root=tmp_path / "cache", dataset="toy", sampling=SamplingConfig(num_frames=4, size=64),
                           batch_size=4, workers=1, clips_per_shard=4)
    summary = extract(discover_inputs([synthetic])[:6], [build_target("hog")], config)
    decode = summary.stages["decode"]
    assert summary.done == 6 and decode.busy > 0 and decode.wall > 0
    total_wall = sum(stage.wall for stage in summary.stages.values())
    assert total_wall <= summary.seconds + 1e-6  # the loop's stages never add up to more than the run
    line = format_stages(summary, workers=1)
    assert re.search(r"decode \d+\.\ds waited, \d+\.\ds busy in 1 worker\(s\)", line), line


def test_estimate_refuses_bad_options_in_one_line(synthetic):
    done = cli("estimate", str(synthetic), "-t", "hog", "--size", "50")
    assert done.returncode != 0 and "--size must be a positive multiple of" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_the_start_estimate_warns_when_the_disk_is_too_small(synthetic, tmp_path, monkeypatch):
    import shutil
    import types

    from mvm_targets.extract import ExtractConfig, extract
    from mvm_targets.targets import build_target
    from mvm_targets.video.decode import SamplingConfig
    from mvm_targets.video.inputs import discover_inputs

    monkeypatch.setattr(shutil, "disk_usage", lambda path: types.SimpleNamespace(free=1000))
    lines: list[str] = []
    config = ExtractConfig(cache_root=tmp_path / "cache", dataset="toy", sampling=SamplingConfig(num_frames=4, size=64),
                           batch_size=2, clips_per_shard=4)
    extract(discover_inputs([synthetic])[:4], [build_target("hog")], config, on_estimate=lines.append)
    assert len(lines) == 1 and lines[0].startswith("estimate (from the first 2 clip(s), for the 4 to do)")
    assert lines[0].endswith(f"; warning: only 1.00 KB free on {tmp_path / 'cache'}")
