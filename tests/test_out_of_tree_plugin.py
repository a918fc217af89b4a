"""A target from another package, found through the `mvm_targets.targets` entry point, end to end.

tests/data/example_plugin is a one-module installable package. Instead of pip-installing it, the
test puts its folder on PYTHONPATH together with a `*.dist-info` folder holding the entry points
declared in its pyproject.toml: that is what an install leaves for `importlib.metadata` to read.
Every command runs in a fresh subprocess, so the registry discovers the plugin as it would for a user.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from mvm_targets.synth import build_synthetic_dataset

PLUGIN = Path(__file__).resolve().parent / "data" / "example_plugin"
BIN = Path(sys.executable).parent
FRAMES, SIZE = 4, 64


def installed_env(root: Path) -> dict[str, str]:
    """Environment in which the example plugin is importable and its entry points are declared."""
    project = tomllib.loads((PLUGIN / "pyproject.toml").read_text())["project"]
    dist = root / "site" / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n")
    lines = [f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in points.items())
             for group, points in project["entry-points"].items()]
    (dist / "entry_points.txt").write_text("\n".join(lines))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(PLUGIN), str(root / "site"), env.get("PYTHONPATH", "")])
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")  # tiny model: one thread is fastest on a busy machine
    return env


def run(command: list[str], env: dict[str, str], cwd: Path) -> str:
    result = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("plugin")
    build_synthetic_dataset(root / "data", clips=8, seed=1, num_frames=8, size=SIZE, fps=8)
    return root, installed_env(root)


def test_plugin_is_not_in_this_process_registry_without_its_entry_point():
    from mvm_targets.targets import list_targets

    assert "gradmag" not in list_targets()  # what follows is the entry point's doing, not a built-in


def test_list_extract_and_train_with_the_plugin_target(workspace):
    root, env = workspace
    listing = run([str(BIN / "mvmtargets"), "list", "--frames", "4", "--size", "64"], env, root)
    line = next(line for line in listing.splitlines() if line.startswith("gradmag:central"))
    assert "dense" in line and "(4, 64, 64)" in line and "l1" in line

    run([str(BIN / "mvmtargets"), "extract", str(root / "data" / "captions.csv"), "-t", "gradmag",
         "--cache", str(root / "cache"), "--dataset", "synthetic", "--frames", str(FRAMES), "--size", str(SIZE),
         "--workers", "0"], env, root)
    shards = sorted((root / "cache").rglob("gradmag-central-*/**/*.h5"))
    assert shards, sorted(str(p.relative_to(root)) for p in (root / "cache").rglob("*"))
    with h5py.File(shards[0], "r") as handle:
        spec = json.loads(handle.attrs["target_spec"])
        data = handle["data"][:]
    assert spec["name"] == "gradmag" and spec["flip"] == "exact" and spec["crop"] == "border"
    assert data.dtype == np.float16 and data.shape[1:] == (FRAMES, SIZE, SIZE) and np.isfinite(data).all()
    assert data.max() > 0.01  # moving shapes have edges

    config = {
        "name": "gradmag_run", "seed": 0, "out_dir": str(root / "runs"),
        "data": {"cache": str(root / "cache"), "dataset": "synthetic", "source": str(root / "data"),
                 "num_frames": FRAMES, "size": SIZE, "max_text_len": 20, "hflip_prob": 0.5, "vocab_size": 300},
        "model": {"video_backbone": "tiny", "hidden": 32, "layers": 1, "heads": 2, "intermediate": 64},
        "mvm": {"targets": ["gradmag"]},
        "pretrain": {"optim": {"steps": 2, "batch_size": 4, "lr": 1e-3}, "log_every": 1, "checkpoint_every": 0},
        "downstream": {"tasks": [], "optim": {"steps": 1, "batch_size": 4}},
    }
    (root / "gradmag.yaml").write_text(yaml.safe_dump(config))
    run([str(BIN / "ablate"), "train", str(root / "gradmag.yaml")], env, root)
    metrics = [json.loads(line) for line in (root / "runs" / "gradmag_run" / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in metrics if m["phase"] == "pretrain"]
    assert [m["step"] for m in steps] == [1, 2]
    assert all(np.isfinite(m["mvm_gradmag"]) and m["mvm_gradmag"] > 0 for m in steps), steps


def test_the_plugin_values_and_its_flip_declaration(workspace):
    """The plugin's formula against numpy's own gradient, and its mirror against a recomputation."""
    root, env = workspace
    script = """
import numpy as np
from mvm_targets.targets import build_target
from mvm_targets.targets.spec import augmentation_for
rng = np.random.default_rng(0)
frames = rng.integers(0, 256, (1, 2, 32, 32, 3), dtype=np.uint8)
target = build_target("gradmag")
data = target.compute(frames)["data"][0].astype(np.float64)
grey = frames[0].astype(np.float32) / 255 @ np.array([0.299, 0.587, 0.114], np.float32)
gy, gx = np.gradient(grey.astype(np.float64), axis=(1, 2))
inner = (slice(None), slice(1, -1), slice(1, -1))  # np.gradient's edges are one-sided, the plugin's halved
assert np.allclose(data[inner], np.hypot(gx, gy)[inner], atol=2e-3), "values"
mirrored = target.compute(np.ascontiguousarray(frames[:, :, :, ::-1]))["data"][0]
rule = augmentation_for({"name": "gradmag", "variant": "central"})
assert np.array_equal(rule.mirror(target.compute(frames)["data"][0], {})[0], mirrored), "mirror"
print("ok")
"""
    assert run([sys.executable, "-c", script], env, root).strip() == "ok"
