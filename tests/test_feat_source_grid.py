"""A grid over `mvm.source` with a teacher-feature target runs end to end through `ablate run` and
`ablate report`: the same `feat` teacher (timm's tiny test ViT, random weights) read from the cache in
one run and computed in the training step in the other.

The oracle is what each run recorded, read from its files: both runs trained the same target id (the
online target is the teacher that would have filled the cache), one from each source, and the report's
protocol card names the source per run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mvm_targets.provenance import CODE_VERSION_ENV

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "violet_core" / "configs" / "tiny.yaml"
MODEL = "test_vit.r160_in1k"  # timm's own tiny test ViT (6 blocks of width 64, patch 16)
FEAT = {"model": MODEL, "input_size": 64, "layers": "-1,-2"}
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", CODE_VERSION_ENV: "0.0.0+pinned-by-tests",
       "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)}


def ablate(cwd: Path, *args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ablations.cli", *map(str, args)], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_cached_and_online_feat_runs_through_ablate_run_and_report(tmp_path):
    grid = {
        "name": "source", "base_config": str(TINY),
        "base": {"data": {"size": 64, "source": "data/synthetic", "cache": "cache", "dataset": "synthetic"},
                 "mvm": {"targets": ["feat:timm"], "options": {"feat": FEAT}, "online": {"weights": "random"}},
                 "pretrain": {"optim": {"steps": 2, "batch_size": 2}, "log_every": 1, "checkpoint_every": 0},
                 "downstream": {"tasks": ["retrieval"], "optim": {"steps": 1, "batch_size": 2}, "eval_batch_size": 4}},
        "cache": {"source": "data/synthetic/captions.csv", "synth": {"clips": 10, "seed": 0, "frames": 6, "size": 64},
                  "num_frames": 4, "size": 64, "weights": "random"},
        "axes": {"mvm.source": ["cached", "online"]},
        "seeds": [0],
        "baseline": {"mvm.source": "cached"},
    }
    path = tmp_path / "source.yaml"
    path.write_text(yaml.safe_dump(grid, sort_keys=False))
    done = ablate(tmp_path, "run", path, "--runs-dir", "runs")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    recorded = {}
    for run_dir in (tmp_path / "runs").iterdir():
        if (run_dir / "final.json").is_file():
            final = json.loads((run_dir / "final.json").read_text())
            (target,) = final["targets"]
            recorded[json.loads((run_dir / "run.json").read_text())["factors"]["mvm.source"]] = target
    assert sorted(recorded) == ["cached", "online"]
    assert recorded["cached"]["source"] == "cached" and recorded["online"]["source"] == "online"
    assert recorded["cached"]["target_id"] == recorded["online"]["target_id"]
    assert recorded["online"]["target_id"].startswith("feat-timm-")

    report = ablate(tmp_path, "report", "runs", "--out", "rep")
    assert report.returncode == 0, report.stderr[-3000:]
    text = (tmp_path / "rep" / "report.md").read_text()
    assert "online" in text.split("## How to read the tables")[0]  # the protocol card names the source
