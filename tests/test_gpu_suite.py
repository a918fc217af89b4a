"""benchmarks/gpu_suite.py: its batch search and synthetic batches, and a whole --smoke run on the CPU
with PyAV, DALL-E, OpenCV, numba, llvmlite and scikit-image made unimportable (the GPU machine lacks
them), worker processes included; the loader section alone imports none of them."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SUITE = REPO / "benchmarks" / "gpu_suite.py"


def load_suite():
    sys.path.insert(0, str(SUITE.parent))
    spec = importlib.util.spec_from_file_location("gpu_suite", SUITE)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_suite"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def suite():
    return load_suite()


@pytest.mark.parametrize("threshold, start, limit, granule, expected", [
    (37, 8, 512, 1, 37),   # doubling to 64 fails, bisection lands on the exact threshold
    (37, 8, 512, 4, 36),   # ... or on the multiple of the granule below it
    (100, 8, 48, 4, 48),   # everything up to the limit fits
    (5, 8, 512, 4, 0),     # not even the first batch
    (8, 8, 512, 4, 8),     # only the first batch
    (130, 8, 512, 8, 128),
])
def test_largest_batch_finds_the_threshold(suite, threshold, start, limit, granule, expected):
    calls = []

    def fits(batch: int) -> bool:
        calls.append(batch)
        return batch <= threshold

    best, probes = suite.largest_batch(fits, start, limit, granule)
    assert best == expected
    assert [p["batch"] for p in probes] == calls and len(set(calls)) == len(calls)  # no batch tried twice
    assert len(calls) <= 2 + 2 * math.ceil(math.log2(limit / start + 1))


def test_synthetic_batch_has_the_trainer_layout(suite):
    shape = suite.SHAPES["smoke"]
    infos = list(suite.cached_target_infos(shape.frames, shape.size).values())
    batch = suite.synthetic_batch(shape, 5, torch.device("cpu"), infos, seed=1)
    ids, keep = batch["text_ids"], batch["text_mask"]
    assert batch["video"].shape == (5, shape.frames, 3, shape.size, shape.size)
    assert ids.shape == keep.shape == (5, shape.text_len)
    for row, kept in zip(ids.tolist(), keep.sum(1).tolist()):
        assert row[0] == suite.CLS_ID and row[kept - 1] == suite.SEP_ID
        assert all(t == suite.PAD_ID for t in row[kept:]) and all(t >= suite.FIRST_WORD_ID for t in row[1:kept - 1])
    special = suite.special_mask(ids)
    assert special.sum().item() == 2 * 5 + (keep == 0).sum().item()
    for info in infos:
        assert batch["targets"][info.key].shape == (5, *info.clip_shape)


BLOCKER = """
import runpy, sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("av", "cv2", "dall_e", "numba", "llvmlite", "skimage"):
            raise ImportError(f"{name} is blocked in this test")
        return None
sys.meta_path.insert(0, Block())
sys.argv = [sys.argv[1]] + sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_smoke_run_writes_every_section(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    env.pop("OUT", None)
    result = subprocess.run([sys.executable, "-c", BLOCKER, str(SUITE), "--smoke", "--out", str(tmp_path)],
                            capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_suite.json").read_text())
    assert report["skipped"] == {}, report["skipped"]
    assert report["matmul"]["n"] == 128 and report["matmul"]["tflops"] > 0
    assert set(report["eager"]) == {"2", "4"}  # the fixed batch and the largest one (the smoke limit)
    for batch, row in report["eager"].items():
        assert row["batch"] == int(batch) and row["step_s"] > 0 and row["step_tflop"] > 0
        assert row["achieved_tflops"] == pytest.approx(row["step_tflop"] / row["step_s"])
    assert report["eager"]["2"]["step_tflop"] < report["eager"]["4"]["step_tflop"]
    assert report["search"]["largest_batch"] == 4 and report["search"]["probes"][0] == {"batch": 2, "fits": True}
    assert set(report["compiled"]) == {"2", "4"}
    for row in report["compiled"].values():
        assert row["compile_s"] >= 0 and row["step_s"] > 0 and row["speedup_over_eager"] > 0
    assert set(report["mvm"]) == {"batch", "none", "patch", "dense", "token"}
    assert all(report["mvm"][k]["step_s"] > 0 for k in ("none", "patch", "dense", "token"))
    assert report["profile"] and all(row["self_ms"] >= 0 for row in report["profile"])
    assert "largest batch that fits: 4" in result.stdout
    teachers = report["teachers"]
    assert (teachers["clips"], teachers["frames"], teachers["size"]) == (1, 2, 64)
    assert set(teachers["tvf"]) == {"eager", "compiled"}  # a transformer: no channels_last row
    for setting, row in teachers["tvf"].items():
        assert row["call_s"] > 0 and row["clips_per_s"] == pytest.approx(1 / row["call_s"])
        assert row["gflop_per_clip"] > 0 and row["compile"] == (setting == "compiled")
        assert row["achieved_tflops"] == pytest.approx(row["gflop_per_clip"] / 1e3 / row["call_s"])
    assert "teacher tvf" in result.stdout
    check_loader(report, result.stdout)


def check_loader(report: dict, stdout: str) -> None:
    """The smoke run's loader section, against the eager rows and the smoke shape (2 frames at 64 px, batch 2)."""
    loader = report["loader"]
    assert loader["batch"] == 2
    cache = loader["cache"]
    assert (cache["clips"], cache["frames"], cache["size"]) == (8, 2, 64)
    assert cache["feature_shape"] == [2, (64 // 32) ** 2, 1024] and cache["feature_dtype"] == "float16"
    assert cache["frames_raw_mb"] == pytest.approx(8 * 2 * 64 * 64 * 3 / 1e6)
    assert 0 < cache["frames_mb"] < cache["frames_raw_mb"]  # lzf compresses the drawn frames
    steps = {batch: batch_size / report["eager"][batch]["step_s"] for batch, batch_size in (("2", 2), ("4", 4))}
    assert {batch: row["clips_per_s"] for batch, row in loader["step"].items()} == pytest.approx(steps)
    assert set(loader["workers"]) == {"0", "1"}
    for workers, row in loader["workers"].items():
        assert row["workers"] == int(workers) and row["batches"] >= max(2, 4 * int(workers))
        assert row["clips_per_s"] == pytest.approx(row["batches"] * 2 / row["seconds"])
        assert row["ratio"] == pytest.approx({batch: row["clips_per_s"] / rate for batch, rate in steps.items()})
        assert f"loader  {workers} worker" in stdout
    one = loader["workers"]["1"]
    assert loader["best_workers"] == 1 and loader["meets_target"] == (min(one["ratio"].values()) >= 3)
    assert loader["verdict"] in stdout


IMPORTS = """
import runpy, sys
sys.argv = [sys.argv[1]] + sys.argv[2:]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
except SystemExit as done:
    assert not done.code, done.code
print("imported:", sorted({m.split(".")[0] for m in sys.modules} & {"av", "cv2", "numba", "llvmlite", "skimage"}))
"""


def test_loader_section_alone_imports_no_decoder_and_reports_rates_without_a_step(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    env.pop("OUT", None)
    result = subprocess.run([sys.executable, "-c", IMPORTS, str(SUITE), "--smoke", "--only", "loader",
                             "--out", str(tmp_path)], capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "imported: []" in result.stdout
    report = json.loads((tmp_path / "gpu_suite.json").read_text())
    assert report["skipped"] == {} and "eager" not in report
    loader = report["loader"]
    assert loader["step"] == {} and loader["meets_target"] is None
    assert all(row["clips_per_s"] > 0 and row["ratio"] == {} for row in loader["workers"].values())
    assert "the step was not measured in this run" in result.stdout


@pytest.mark.parametrize("best_ratios, met", [
    ({"8": 4.0, "64": 3.0}, True),   # 3x is enough
    ({"8": 4.0, "64": 2.9}, False),  # the largest batch decides
    ({"8": 3.5}, True),              # only the fixed batch measured
])
def test_loader_verdict_judges_the_best_worker_count(suite, best_ratios, met):
    steps = {batch: {"clips_per_s": 100.0} for batch in best_ratios}
    rows = {"0": {"workers": 0, "clips_per_s": 900.0, "ratio": {b: 9.0 for b in best_ratios}},  # no workers: not judged
            "4": {"workers": 4, "clips_per_s": 200.0, "ratio": {b: 1.0 for b in best_ratios}},
            "8": {"workers": 8, "clips_per_s": 300.0, "ratio": best_ratios}}
    verdict = suite.loader_verdict(rows, steps)
    assert verdict["best_workers"] == 8 and verdict["meets_target"] is met
    assert suite.loader_verdict({"0": rows["0"]}, steps)["meets_target"] is None
    assert suite.loader_verdict(rows, {})["meets_target"] is None


def test_bad_arguments_are_one_line_errors(suite, capsys):
    with pytest.raises(SystemExit) as exit_info:
        suite.parse_args(["--smoke", "--size", "100"])
    assert exit_info.value.code == 2
    assert "--size 100: must be a positive multiple of 32" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        suite.parse_args(["--teacher-size", "100"])
    assert "--teacher-size 100: must be a positive multiple of 32" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        suite.parse_args(["--smoke", "--batch", "8", "--loader-clips", "4"])
    assert "--loader-clips 4: fewer than one batch (--batch 8)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        suite.parse_args(["--smoke", "--loader-workers", "0", "-1"])
    assert "--loader-workers must be at least 0" in capsys.readouterr().err


def test_teacher_settings_measure_channels_last_only_where_convolutions_run(suite):
    bench = sys.modules["teacher_bench"]
    assert set(bench.settings(bench.TEACHERS["depth"])) == {"eager", "channels_last", "compiled"}
    assert bench.settings(bench.TEACHERS["flow:raft"])["eager"] == {"compile": False, "channels_last": False}
    assert set(bench.settings(bench.TEACHERS["sif"])) == {"eager", "compiled"}
    assert set(bench.TEACHERS) == {"sif", "mmf", "tvf", "vq", "depth", "flow:raft"}
