"""TensorBoard logging: a tiny run's event files, read back with TensorBoard's own reader, hold the
losses and the downstream metrics that metrics.jsonl holds; a resumed phase duplicates no step."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

tensorboard = pytest.importorskip(
    "tensorboard", reason="tensorboard is not installed (pip install 'mvm-targets[tensorboard]')")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from mvm_targets.extract import ExtractConfig, extract  # noqa: E402
from mvm_targets.synth import build_synthetic_dataset  # noqa: E402
from mvm_targets.targets.registry import build_target  # noqa: E402
from mvm_targets.video.decode import SamplingConfig  # noqa: E402
from violet_core.tracking import TensorBoardTracker  # noqa: E402


def read_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    accumulator = EventAccumulator(str(folder), size_guidance={"scalars": 0})  # 0: keep every event
    accumulator.Reload()
    return {tag: [(event.step, event.value) for event in accumulator.Scalars(tag)]
            for tag in accumulator.Tags()["scalars"]}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """14 synthetic clips with frames cached at 64 px, 6 pretraining steps, 2 per downstream task."""
    root = tmp_path_factory.mktemp("tensorboard_run")
    build_synthetic_dataset(root / "data", clips=14, seed=0, num_frames=8, size=64, object_scale=2.0)
    extract_config = ExtractConfig(cache_root=root / "cache", dataset="synthetic", batch_size=8,
                                   sampling=SamplingConfig(num_frames=4, size=64))
    from mvm_targets.video.inputs import discover_inputs

    extract(discover_inputs([root / "data" / "captions.csv"]), [build_target("pixel")], extract_config)
    config = {
        "name": "tb", "seed": 0, "device": "cpu", "out_dir": str(root / "runs"),
        "data": {"cache": str(root / "cache"), "dataset": "synthetic", "source": str(root / "data"),
                 "num_frames": 4, "size": 32, "max_text_len": 32, "vocab_size": 200},
        "model": {"video_backbone": "tiny", "hidden": 32, "layers": 1, "heads": 2, "intermediate": 64},
        "mvm": {"targets": ["pixel"]},
        "pretrain": {"optim": {"steps": 6, "batch_size": 4, "lr": 1e-3}, "log_every": 2, "checkpoint_every": 0},
        "downstream": {"tasks": ["retrieval", "qa_mc"], "eval_batch_size": 8,
                       "optim": {"steps": 2, "batch_size": 4, "lr": 1e-3}},
    }
    (root / "tb.yaml").write_text(yaml.safe_dump(config))
    from violet_core.train import train

    train(root / "tb.yaml", root / "runs" / "tb")
    return root / "runs" / "tb"


def test_losses_and_downstream_metrics_are_in_tensorboard(tiny_run: Path) -> None:
    lines = [json.loads(line) for line in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    pretrain = read_scalars(tiny_run / "tensorboard" / "pretrain")
    logged = [line for line in lines if line["phase"] == "pretrain"]
    assert [step for step, _ in pretrain["train/loss"]] == [line["step"] for line in logged] == [2, 4, 6]
    measured = [key for key in logged[0] if key not in ("phase", "step")]
    assert {"loss", "lr", "step_s", "mlm", "vtm", "mvm_pixel"} <= set(measured)  # the total and each term
    for key in measured:
        # TensorBoard stores float32: compare at its precision
        assert pretrain[f"train/{key}"] == [(line["step"], pytest.approx(line[key], rel=1e-6, abs=1e-12))
                                            for line in logged], key
    # clips/s from the clips per step and the seconds per step
    assert [value for _, value in pretrain["train/clips_per_s"]] == pytest.approx(
        [line["samples"] / line["step"] / line["step_s"] for line in logged], rel=1e-5)

    downstream = json.loads((tiny_run / "downstream.json").read_text())["metrics"]
    seen = {}
    for task in ("retrieval", "qa_mc"):
        scalars = read_scalars(tiny_run / "tensorboard" / task)
        assert [step for step, _ in scalars["train/loss"]] == [2]  # its finetuning loss
        seen.update({tag.removeprefix("eval/"): values for tag, values in scalars.items() if tag.startswith("eval/")})
    assert downstream and set(downstream) <= set(seen)
    for name, value in downstream.items():
        assert seen[name] == [(2, pytest.approx(value, rel=1e-6))], name


def test_a_resumed_phase_duplicates_no_step(tmp_path: Path) -> None:
    """A first process logs steps 2..10 and is killed; the rerun resumes from the step-4 checkpoint and
    logs 6..10 again with other values. TensorBoard then shows each step once, the rerun's after 4."""
    first = TensorBoardTracker(tmp_path)
    for step in (2, 4, 6, 8, 10):
        first.log({"phase": "pretrain", "step": step, "loss": float(step)})
    first.close()
    second = TensorBoardTracker(tmp_path)  # a new process: new event file in the same folder
    for step in (6, 8, 10):
        second.log({"phase": "pretrain", "step": step, "loss": 100.0 + step})
    second.close()
    assert read_scalars(tmp_path / "pretrain")["train/loss"] == [(2, 2.0), (4, 4.0), (6, 106.0), (8, 108.0),
                                                                 (10, 110.0)]


def test_non_finite_values_are_left_out(tmp_path: Path) -> None:
    tracker = TensorBoardTracker(tmp_path)
    tracker.log({"phase": "pretrain", "step": 1, "loss": 1.5, "loss_mvm": math.nan, "note": "text"})
    tracker.close()
    assert read_scalars(tmp_path / "pretrain") == {"train/loss": [(1, 1.5)]}


def test_progress_bar_only_on_a_terminal(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from violet_core.tracking import ProgressTracker, open_trackers

    quiet = open_trackers(tmp_path, {"pretrain": 10})  # pytest's stderr is not a terminal
    assert not any(isinstance(t, ProgressTracker) for t in quiet.trackers)
    quiet.close()
    shown = open_trackers(tmp_path, {"pretrain": 10}, progress=True)
    for step in (5, 10):
        # 8 clips per step at 0.02 s per step: 400 clips/s; at step 5, 5 steps left: 0.1 s
        shown.log({"phase": "pretrain", "step": step, "loss": 2.0 / step, "samples": 8 * step, "step_s": 0.02})
    shown.close()
    err = capsys.readouterr().err
    assert "pretrain" in err and "10/10" in err and "loss 0.2" in err and "400.0 clips/s" in err, err
