"""Every command's typical bad inputs end in exactly one line on stderr, naming the file or option
and the reason, with the right exit code, no traceback, and nothing already on disk changed.

Each case runs the real command line in a subprocess, as a user's shell would.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import write_video

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "violet_core" / "configs" / "tiny.yaml"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
    p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)}
ENV.pop("MVM_DEBUG", None)
ENTRY = {"mvmtargets": "from mvm_targets.cli import main; main()",
         "ablate": "from ablations.cli import main; main()",
         "train": "import sys; from violet_core.train import main; sys.exit(main())"}


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A folder holding what users typically point commands at, right or wrong."""
    work = tmp_path_factory.mktemp("bad_inputs")
    write_video(work / "videos" / "a.mp4", num_frames=6, width=64, height=64)
    (work / "no_path_column.csv").write_text("name,caption\na,a red square\n")
    (work / "a_file").write_text("not a folder\n")
    (work / "empty_cache").mkdir()
    (work / "empty_runs").mkdir()
    (work / "broken.yaml").write_text("name: x\ndata: {cache: [unclosed\n")
    run = work / "runs" / "earlier"  # an earlier run's folder: no command below may change it
    (run / "checkpoints").mkdir(parents=True)
    (run / "metrics.jsonl").write_text('{"phase": "pretrain", "step": 1, "loss": 1.0}\n')
    (run / "checkpoints" / "last.pt").write_bytes(b"earlier checkpoint")
    grid = {"name": "g", "base_config": str(TINY), "axes": {"mvm.targets": [[]]}, "seeds": [0],
            "cache": {"source": str(work / "videos"), "num_frames": 4, "size": 64}}
    (work / "grid_key_typo.yaml").write_text(yaml.safe_dump({**grid, "seedz": [0]}))
    (work / "grid_axis_typo.yaml").write_text(yaml.safe_dump({**grid, "axes": {"mask.ratoi": [0.1, 0.2]}}))
    (work / "grid_no_base.yaml").write_text(yaml.safe_dump({**grid, "base_config": "nowhere/base.yaml"}))
    (work / "grid_broken.yaml").write_text("name: g\naxes: {mvm.targets: [[]]\n")
    return work


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def run(work: Path, tool: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", ENTRY[tool], *args], cwd=work, env=ENV, capture_output=True,
                          text=True, timeout=300)


# (tool, arguments, texts the one line must hold, exit code)
CASES = {
    "verify: missing cache": ("mvmtargets", ["verify", "no_cache"], ["no_cache", "no such cache folder"], 2),
    "verify: missing cache (--cache)": ("mvmtargets", ["verify", "--cache", "no_cache"], ["no_cache"], 2),
    "verify: cache is a file": ("mvmtargets", ["verify", "a_file"], ["a_file", "not a folder"], 2),
    "verify: two different caches": ("mvmtargets", ["verify", "empty_cache", "--cache", "no_cache"],
                                     ["given twice"], 2),
    "info: missing cache": ("mvmtargets", ["info", "no_cache"], ["no_cache", "no such cache folder"], 2),
    "show: missing cache": ("mvmtargets", ["show", "no_cache", "videos/a", "-t", "hog"], ["no_cache"], 2),
    "show: unknown picture format": ("mvmtargets", ["show", "empty_cache", "videos/a", "-t", "hog", "--out", "x.xyz"],
                                     ["x.xyz", "extension"], 2),
    "show: output inside a file": ("mvmtargets", ["show", "empty_cache", "videos/a", "-t", "hog", "--out",
                                                  "a_file/x.png"], ["a_file", "is a file"], 2),
    "show: bad --flow-scale": ("mvmtargets", ["show", "empty_cache", "videos/a", "-t", "flow", "--dataset", "d",
                                              "--flow-scale", "0"], ["--flow-scale"], 2),
    "extract: missing inputs folder": ("mvmtargets", ["extract", "no_videos", "-t", "pixel", "--cache", "out"],
                                       ["no_videos"], 2),
    "extract: --frames 0": ("mvmtargets", ["extract", "videos", "-t", "pixel", "--frames", "0"], ["--frames"], 2),
    "extract: --size 7": ("mvmtargets", ["extract", "videos", "-t", "pixel", "--size", "7"], ["--size", "32"], 2),
    "extract: --frames not a number": ("mvmtargets", ["extract", "videos", "-t", "pixel", "--frames", "x"],
                                       ["--frames"], 2),
    "extract: cache is a file": ("mvmtargets", ["extract", "videos", "-t", "pixel", "--out", "a_file"],
                                 ["a_file", "is a file"], 2),
    "extract: table without a path column": ("mvmtargets", ["extract", "no_path_column.csv", "-t", "pixel"],
                                             ["no_path_column.csv", "path column"], 2),
    "extract: unknown target": ("mvmtargets", ["extract", "videos", "-t", "nosuchtarget"], ["nosuchtarget"], 2),
    "extract: unknown option": ("mvmtargets", ["extract", "videos", "-t", "pixel", "--bogus"], ["--bogus"], 2),
    "train: missing cache": ("ablate", ["train", str(TINY), "--run-dir", "runs/new", "--set", "data.cache=no_cache"],
                             ["no_cache", "no cached clips", "mvmtargets extract"], 2),
    "train: invalid YAML": ("ablate", ["train", "broken.yaml"], ["broken.yaml", "not valid YAML"], 2),
    "train: missing config": ("ablate", ["train", "no_config.yaml"], ["no_config.yaml"], 2),
    "train: mask.ratio out of range": ("ablate", ["train", str(TINY), "--set", "mask.ratio=2"], ["mask.ratio"], 2),
    "violet_core.train: invalid YAML": ("train", ["broken.yaml"], ["broken.yaml", "not valid YAML"], 2),
    "violet_core.train: unknown option": ("train", [str(TINY), "--bogus"], ["--bogus"], 2),
    "run: grid key typo": ("ablate", ["run", "grid_key_typo.yaml", "--runs-dir", "runs"], ["seedz"], 2),
    "run: grid axis typo": ("ablate", ["run", "grid_axis_typo.yaml", "--runs-dir", "runs"], ["ratoi"], 2),
    "run: invalid grid YAML": ("ablate", ["run", "grid_broken.yaml", "--runs-dir", "runs"],
                               ["grid_broken.yaml", "not valid YAML"], 2),
    "run: --jobs 0": ("ablate", ["run", "grid_key_typo.yaml", "--jobs", "0"],
                      ["ablate run: --jobs must be at least 1, got 0"], 2),
    "run: --jobs not a number": ("ablate", ["run", "grid_key_typo.yaml", "-j", "two"],
                                 ["ablate run: --jobs must be a whole number, got 'two'"], 2),
    "run: --gpus-per-run -1": ("ablate", ["run", "grid_key_typo.yaml", "--gpus-per-run", "-1"],
                               ["--gpus-per-run must be at least 0, got -1"], 2),
    "run: --timeout 0": ("ablate", ["run", "grid_key_typo.yaml", "--timeout", "0"],
                         ["--timeout must be more than 0, got 0"], 2),
    "run: --timeout nan": ("ablate", ["run", "grid_key_typo.yaml", "--timeout", "nan"],
                           ["--timeout must be a finite number"], 2),
    "run: --slurm-parallelism 0": ("ablate", ["run", "grid_key_typo.yaml", "--slurm-parallelism", "0"],
                                   ["--slurm-parallelism must be at least 1, got 0"], 2),
    "status: --interval 0": ("ablate", ["status", "empty_runs", "--interval", "0"],
                             ["ablate status: --interval must be more than 0, got 0"], 2),
    "report: --bootstrap -1": ("ablate", ["report", "empty_runs", "--bootstrap", "-1"],
                               ["ablate report: --bootstrap must be at least 0, got -1"], 2),
    "check: missing base_config": ("ablate", ["check", "grid_no_base.yaml"], ["base.yaml"], 2),
    "report: empty folder": ("ablate", ["report", "empty_runs", "--out", "report"], ["empty_runs"], 2),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line(work: Path, case: str) -> None:
    tool, args, expected, code = CASES[case]
    before = snapshot(work)
    result = run(work, tool, *args)
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for text in expected:
        assert text in lines[0], (text, lines[0])
    assert result.returncode == code, (result.returncode, result.stderr)
    after = snapshot(work)
    assert {name: after.get(name) for name in before} == before, "a file that was there changed or went"


def folders(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_dir()} if root.exists() else set()


@pytest.mark.parametrize("runs_root", ["runs", "fresh_runs/nested"])
def test_train_with_a_missing_cache_leaves_no_run_folder(work: Path, runs_root: str) -> None:
    """Under an existing runs root (beside an earlier run) or one that does not exist yet."""
    before = folders(work)
    result = run(work, "ablate", "train", str(TINY), "--set", f"out_dir={runs_root}", "--set", "data.cache=no_cache")
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0 and len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and str(Path("no_cache") / "demo") in lines[0], lines[0]
    assert folders(work) == before


def test_train_failing_in_its_set_up_takes_back_only_the_folders_it_made(work: Path) -> None:
    """A cache whose frames folder holds nothing passes the cache check, then the trainer's set-up
    fails after it wrote the run folder: that folder (and its new parents) go, an earlier one stays."""
    hollow = work / "hollow_cache" / "demo" / "frames-t4-s64-0"
    hollow.mkdir(parents=True, exist_ok=True)
    earlier = snapshot(work / "runs" / "earlier")
    for run_dir in ("new_runs/deeper/tiny", "runs/earlier"):
        before = folders(work)
        result = run(work, "ablate", "train", str(TINY), "--run-dir", run_dir, "--set", "data.cache=hollow_cache")
        lines = result.stderr.strip().splitlines()
        assert result.returncode != 0 and len(lines) == 1 and lines[0].startswith("error: "), result.stderr
        assert folders(work) == before, run_dir
    after = snapshot(work / "runs" / "earlier")
    assert {name: after.get(name) for name in earlier} == earlier  # the earlier run's files are all there


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions: a read-only folder stays writable")
def test_read_only_cache_folder(work: Path) -> None:
    folder = work / "read_only"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        result = run(work, "mvmtargets", "extract", "videos", "-t", "pixel", "--cache", "read_only")
    finally:
        folder.chmod(0o755)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "read_only" in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_unexpected_error_points_at_its_traceback(work: Path) -> None:
    """A bug (here: an exception no command expects) is one line naming a file with the full traceback;
    --debug prints the traceback instead."""
    crash = ("import sys, mvm_targets.store.summary as s\n"
             "def boom(*a, **k): raise KeyError('planted')\n"
             "s.summarize_cache = boom\n"
             "from mvm_targets.cli import main; main()")
    result = subprocess.run([sys.executable, "-c", crash, "info", "empty_cache"], cwd=work, env=ENV,
                            capture_output=True, text=True, timeout=300)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    assert "unexpected KeyError" in lines[0] and "planted" in lines[0]
    log = Path(lines[0].rsplit("full traceback in ", 1)[1].rstrip(")"))
    try:
        assert "Traceback" in log.read_text() and "boom" in log.read_text()
    finally:
        log.unlink()
    debug = subprocess.run([sys.executable, "-c", crash, "info", "empty_cache", "--debug"], cwd=work, env=ENV,
                           capture_output=True, text=True, timeout=300)
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "boom" in debug.stderr


def test_version(work: Path) -> None:
    from importlib.metadata import version

    for tool in ("mvmtargets", "ablate"):
        result = run(work, tool, "--version")
        assert result.returncode == 0 and result.stdout.strip() == f"{tool} {version('mvm-targets')}", result
