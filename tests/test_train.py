"""End-to-end trainer tests on a small synthetic cache: every target trains, resume continues the
exact loss curve, torchrun runs two gloo processes, and the CLI reports bad configs in one line.

Teacher targets (depth, flow:raft, vq, sif, tvf, mmf) are cached by stand-ins that carry the real
teacher's TargetSpec (name, grid, shape, dtype) but fill it with seeded noise: the trainer only
sees the spec and the arrays, and the teachers themselves are tested in their own files.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from mvm_targets.extract import ExtractConfig, extract
from mvm_targets.synth import build_synthetic_dataset
from mvm_targets.targets.registry import build_target
from mvm_targets.targets.spec import TargetSpec
from mvm_targets.video.decode import SamplingConfig
from mvm_targets.video.inputs import discover_inputs
from violet_core import train as train_module
from violet_core.run_dir import RunDir

REPO = Path(__file__).resolve().parents[1]
FRAMES, SIZE = 4, 64
COMPUTED = ("hog", "hog:maskfeat", "flow:dis")
STAND_INS = ("depth", "flow:raft", "vq", "sif", "tvf", "mmf")
ALL_TARGETS = ("pixel",) + COMPUTED + STAND_INS


class NoiseTarget:
    """A teacher's spec with seeded noise as data: exercises the trainer without the network."""

    def __init__(self, spec: TargetSpec) -> None:
        self.spec = spec

    def compute(self, frames: np.ndarray) -> dict[str, np.ndarray]:
        batch, frames_count, size = frames.shape[0], frames.shape[1], frames.shape[2]
        rng = np.random.default_rng(int(frames.sum()) % 2**32)
        shape = (batch, *self.spec.clip_shape(frames_count, size))
        if self.spec.loss == "ce":
            data = rng.integers(0, 8192, shape).astype(self.spec.dtype)
        else:
            data = rng.standard_normal(shape).astype(self.spec.dtype)
        out = {"data": data}
        if self.spec.frames_needed == 2:
            out["max_magnitude"] = np.abs(data).reshape(batch, shape[1], -1).max(-1).astype(np.float32)
        return out


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("train")
    build_synthetic_dataset(root / "data", clips=16, seed=3, num_frames=8, size=SIZE, fps=8)
    items = discover_inputs([root / "data" / "captions.csv"])
    targets = [build_target(ref) for ref in COMPUTED]
    targets += [NoiseTarget(build_target(ref, weights="random").spec) for ref in STAND_INS]
    config = ExtractConfig(cache_root=root / "cache", dataset="synthetic", batch_size=8,
                           sampling=SamplingConfig(num_frames=FRAMES, size=SIZE))
    extract(items, targets, config)
    return root


def write_config(workspace: Path, name: str, **sections) -> Path:
    config = {
        "name": name, "seed": 0, "out_dir": str(workspace / "runs"),
        "data": {"cache": str(workspace / "cache"), "dataset": "synthetic", "source": str(workspace / "data"),
                 "num_frames": FRAMES, "size": SIZE, "max_text_len": 20, "hflip_prob": 0.5, "vocab_size": 300,
                 "approximate_flips": True},  # keeps the mirror paths of every target exercised
        "model": {"video_backbone": "tiny", "hidden": 32, "layers": 1, "heads": 2, "intermediate": 64},
        "pretrain": {"optim": {"steps": 2, "batch_size": 4, "lr": 1e-3}, "log_every": 1, "checkpoint_every": 0},
        "downstream": {"tasks": [], "optim": {"steps": 1, "batch_size": 4}},
    }
    for section, values in sections.items():
        config[section] = {**config.get(section, {}), **values} if isinstance(values, dict) else values
    path = workspace / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def read_metrics(run: Path, phase: str = "pretrain") -> list[dict]:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [line for line in lines if line["phase"] == phase]


@pytest.mark.parametrize("target", ALL_TARGETS)
def test_two_training_steps_for_each_target(workspace, target, one_torch_thread):
    config = write_config(workspace, f"t_{target.replace(':', '_')}", mvm={"targets": [target]})
    record = train_module.train(config)
    run = Path(record["name"]) if Path(record["name"]).is_absolute() else workspace / "runs" / record["name"]
    steps = read_metrics(run)
    key = "mvm_" + target.replace(":", "_")
    assert [s["step"] for s in steps] == [1, 2]
    assert all(np.isfinite(s[key]) and s[key] > 0 for s in steps), steps
    assert {"mlm", "vtm", "loss"} <= set(steps[0])
    final = json.loads((run / "final.json").read_text())
    assert final["targets"][0]["ref"] == target
    assert final["software"]["torch"] == torch.__version__ and final["software"]["numpy"] == np.__version__
    assert (run / "checkpoints" / "pretrained.pt").exists()


def test_several_targets_get_separate_heads_and_losses(workspace, one_torch_thread):
    config = write_config(workspace, "multi", mvm={"targets": ["sif", "tvf", "flow:dis"]})
    train_module.train(config)
    step = read_metrics(workspace / "runs" / "multi")[0]
    assert {"mvm_sif", "mvm_tvf", "mvm_flow_dis"} <= set(step)
    weights = torch.load(workspace / "runs" / "multi" / "checkpoints" / "pretrained.pt", weights_only=True)
    sif = [k for k in weights if k.startswith("mvm.heads.sif.")]
    tvf = [k for k in weights if k.startswith("mvm.heads.tvf.")]
    assert sif and tvf and not torch.equal(weights[sif[-1]], weights[tvf[-1]])


def test_downstream_tasks_report_metrics_and_chance(workspace, one_torch_thread):
    config = write_config(workspace, "tasks", downstream={"tasks": ["retrieval", "qa_mc", "qa_oe"],
                                                          "eval_split": "test"})
    final = train_module.train(config)
    metrics, chance = final["metrics"], final["chance"]
    for name in ("retrieval/R@1", "retrieval/R@5", "retrieval/R@10", "retrieval/AveR", "retrieval/MdR",
                 "qa_mc/acc", "qa_oe/acc"):
        assert name in metrics and np.isfinite(metrics[name])
    n_video = metrics["retrieval/n_video"]
    assert chance["retrieval/R@1"] == pytest.approx(100.0 / n_video)
    assert chance["qa_mc/acc"] == pytest.approx(20.0)  # five options


def test_frozen_backbone_pretrains_everything_but_the_video_swin(workspace, one_torch_thread):
    config = write_config(workspace, "frozen", mvm={"targets": ["pixel"]},
                          pretrain={"optim": {"steps": 2, "batch_size": 4, "lr": 1e-2, "backbone_lr_mult": 0.0}})
    torch.manual_seed(0)
    train_module.train(config)
    weights = torch.load(workspace / "runs" / "frozen" / "checkpoints" / "pretrained.pt", weights_only=True)
    reference = train_module.Run(train_module.load_config(config), workspace / "runs" / "frozen_init").model.state_dict()
    swin = [k for k in weights if k.startswith("video.swin.")]
    others = [k for k in weights if k.startswith(("video.proj.", "bert.encoder."))]
    assert swin and others
    assert all(torch.equal(weights[k], reference[k]) for k in swin)  # same seed: the init, untouched
    assert not all(torch.equal(weights[k], reference[k]) for k in others)


class _Crash(RuntimeError):
    pass


def test_resume_reproduces_the_uninterrupted_loss_curve(workspace, monkeypatch, one_torch_thread):
    sections = dict(mvm={"targets": ["hog"]},
                    pretrain={"optim": {"steps": 6, "batch_size": 4, "lr": 1e-3}, "log_every": 1,
                              "checkpoint_every": 3})
    whole = write_config(workspace, "whole", **sections)
    train_module.train(whole)
    expected = read_metrics(workspace / "runs" / "whole")

    resumed = write_config(workspace, "resumed", **sections)
    original_log = RunDir.log

    def crash_after_step_four(self, record):
        original_log(self, record)
        if record.get("phase") == "pretrain" and record.get("step") == 4:
            raise _Crash("simulated kill after step 4")

    monkeypatch.setattr(RunDir, "log", crash_after_step_four)
    with pytest.raises(_Crash):
        train_module.train(resumed)
    run = workspace / "runs" / "resumed"
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=False)["step"] == 3
    assert not (run / "final.json").exists()
    monkeypatch.setattr(RunDir, "log", original_log)
    train_module.train(resumed)
    got = read_metrics(run)
    assert [s["step"] for s in got] == [1, 2, 3, 4, 5, 6]  # step 4 logged once, not twice
    for mine, reference in zip(got, expected):
        for key in ("loss", "mlm", "vtm", "mvm_hog", "lr"):
            assert mine[key] == pytest.approx(reference[key], rel=1e-5, abs=1e-6), (mine["step"], key)


@pytest.mark.parametrize("backbone_lr_mult", [1.0, 0.0], ids=["trained", "frozen"])
def test_torchrun_two_cpu_processes_with_gloo(workspace, backbone_lr_mult):
    name = f"ddp_{'frozen' if backbone_lr_mult == 0 else 'trained'}"
    # CPU and gloo even on a CUDA host: the config says cpu, and no GPU is visible to the workers
    config = write_config(workspace, name, device="cpu", mvm={"targets": ["hog"]},
                          pretrain={"optim": {"steps": 2, "batch_size": 4, "lr": 1e-3,
                                              "backbone_lr_mult": backbone_lr_mult}})
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "violet_core.train", str(config)], capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    final = json.loads((workspace / "runs" / name / "final.json").read_text())
    assert final["world_size"] == 2 and final["device"] == "cpu"
    steps = read_metrics(workspace / "runs" / name)
    assert [s["step"] for s in steps] == [1, 2]
    assert steps[-1]["samples"] == 2 * 4 * 2  # two steps x 4 clips x 2 processes


def test_bad_config_is_one_line_error(workspace, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("mvm:\n  target: [hog]\n")
    result = subprocess.run([sys.executable, "-m", "ablations.cli", "train", str(bad)],
                            capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "bad.yaml" in result.stderr and "unknown key 'mvm.target'" in result.stderr


def test_missing_cached_target_is_one_line_error(workspace):
    config = write_config(workspace, "missing", data={"dataset": "synthetic"}, mvm={"targets": ["depth:dpt-hybrid"]})
    result = subprocess.run([sys.executable, "-m", "violet_core.train", str(config)],
                            capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 2
    assert "no cached target 'depth:dpt-hybrid'" in result.stderr
    assert "Traceback" not in result.stderr


def test_retrieval_reads_a_benchmark_file_through_its_adapter(workspace, one_torch_thread):
    captions = {}
    for line in (workspace / "data" / "captions.csv").read_text().splitlines()[1:]:
        path, caption = line.split(",", 1)
        captions[Path(path).stem] = caption.rsplit(",", 1)[0].strip('"')
    entries = [{"video_id": stem, "caption": caption} for stem, caption in sorted(captions.items())[:6]]
    benchmark = workspace / "msrvtt_test.json"
    benchmark.write_text(json.dumps(entries))
    files = {"retrieval_train": f"msrvtt_retrieval:{benchmark}", "retrieval_eval": f"msrvtt_retrieval:{benchmark}"}
    config = write_config(workspace, "bench_files", downstream={"tasks": ["retrieval"], "files": files,
                                                                "key_format": "videos/{video_id}"})
    final = train_module.train(config)
    assert final["metrics"]["retrieval/n_video"] == 6 and final["metrics"]["retrieval/n_text"] == 6
