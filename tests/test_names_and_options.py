"""Names and options are checked before any work: one-line errors, nothing written outside the
intended folder, and Ctrl-C that always stops a command with exit 130.

Every case runs the real command line in a subprocess (as a user's shell would) and reads its
stderr, so a traceback or a multi-line message fails the test.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from mvm_targets.store.manifest import read_manifest
from tests.conftest import write_video

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1",
       "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)}
INTERRUPTED = "interrupted: committed work is kept"


def mvmtargets(cwd: Path, *args: object, prelude: str = "") -> subprocess.CompletedProcess:
    code = f"{prelude}\nfrom mvm_targets.cli import main\nmain()"
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=cwd, env=ENV, capture_output=True,
                          text=True, timeout=300)


def ablate(cwd: Path, *args: object, prelude: str = "") -> subprocess.CompletedProcess:
    code = f"{prelude}\nfrom ablations.cli import main\nmain()"
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=cwd, env=ENV, capture_output=True,
                          text=True, timeout=300)


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def assert_one_line_error(result: subprocess.CompletedProcess, *expected: str) -> str:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """<tmp>/work/data/{a,b}.mp4 plus captions tables; commands run in <tmp>/work/deep/er so that
    '../..' from there is still inside <tmp>, where the test can see whether anything landed."""
    work = tmp_path / "work"
    for name in ("a", "b"):
        write_video(work / "data" / f"{name}.mp4", num_frames=6, width=64, height=64)
    (work / "data" / "first.csv").write_text("path,caption\na.mp4,a red square\nb.mp4,a blue disc\n")
    (work / "data" / "second.csv").write_text("path,caption\nb.mp4,a blue disc\n")
    (work / "data" / "recaptioned.csv").write_text("path,caption\na.mp4,a green triangle\n")
    (work / "deep" / "er").mkdir(parents=True)
    return work


# ----------------------------------------------------------------------------------------------
# Dataset names


@pytest.mark.parametrize("name, reason", [
    ("../../escaped", "must be one folder name"), ("a/b", "must be one folder name"),
    ("a\\b", "must be one folder name"), ("..", "the current or the parent folder"),
    (".hidden", "must not start with '.'"), ("", "must not be empty"),
])
def test_extract_refuses_a_dataset_name_that_is_not_one_folder(workspace, name, reason):
    before = files_under(workspace.parent)
    result = mvmtargets(workspace / "deep" / "er", "extract", workspace / "data" / "first.csv", "-t", "hog",
                        "--out", "sec/cache2", "--dataset", name, "--frames", "2", "--size", "64")
    assert_one_line_error(result, "--dataset", reason)
    assert files_under(workspace.parent) == before


@pytest.mark.parametrize("command", ["verify", "info"])
def test_reading_commands_refuse_a_dataset_path(workspace, command):
    result = mvmtargets(workspace, command, "--cache", "cache", "--dataset", "../data")
    assert_one_line_error(result, "--dataset", "'../data' must be one folder name")


# ----------------------------------------------------------------------------------------------
# Extraction options: ranges checked before a teacher is built or a video decoded


@pytest.mark.parametrize("option, value, reason", [
    ("--workers", "-1", "must be an integer >= 0, got -1"),
    ("--batch-size", "0", "must be an integer >= 1, got 0"),
    ("--clips-per-shard", "0", "must be an integer >= 1, got 0"),
    ("--frames", "0", "must be an integer >= 1, got 0"),
    ("--size", "100", "must be a positive multiple of 32"),
    ("--size", "0", "must be a positive multiple of 32"),
    ("--compression", "zstd", "must be one of lzf, gzip, none, got 'zstd'"),
    ("--short-videos", "pad", "must be one of skip, repeat"),
])
def test_extract_option_ranges(workspace, option, value, reason):
    before = files_under(workspace)
    # tvf with pretrained weights would fail for missing weights: the option error must come first
    result = mvmtargets(workspace, "extract", workspace / "data" / "first.csv", "-t", "tvf", "--out", "cache",
                        "--frames", "2", "--size", "64", option, value)
    assert_one_line_error(result, f"{option} {reason}")
    assert files_under(workspace) == before


def test_smallest_valid_options_extract(workspace):
    result = mvmtargets(workspace, "extract", workspace / "data" / "first.csv", "-t", "hog", "--out", "cache",
                        "--frames", "1", "--size", "32", "--workers", "0", "--batch-size", "1",
                        "--clips-per-shard", "1", "--compression", "none")
    assert result.returncode == 0, result.stderr
    assert "done 2" in result.stdout and (workspace / "cache" / "data").is_dir()


# ----------------------------------------------------------------------------------------------
# Keys from lists and tables


def test_csv_entry_outside_its_folder_is_an_error_unless_root_is_given(workspace):
    outside = write_video(workspace / "elsewhere" / "c.mp4", num_frames=6, width=64, height=64)
    table = workspace / "data" / "mixed.csv"  # absolute paths, one of them outside the table's folder
    table.write_text(f"path,caption\n{workspace / 'data' / 'a.mp4'},a red square\n{outside},a disc\n")
    before = files_under(workspace)
    refused = mvmtargets(workspace, "extract", table, "-t", "hog", "--out", "cache", "--frames", "2", "--size", "64")
    assert_one_line_error(refused, f"{table}:3", "lies outside", "--root")
    assert files_under(workspace) == before
    done = mvmtargets(workspace, "extract", table, "-t", "hog", "--out", "cache", "--dataset", "mixed",
                      "--root", workspace, "--frames", "2", "--size", "64")
    assert done.returncode == 0, done.stderr
    # keys are relative to --root: the same on every machine, whatever the absolute paths
    assert set(read_manifest(workspace / "cache" / "mixed" / "manifest.jsonl")) == {"data/a", "elsewhere/c"}


def test_two_tables_in_one_folder_do_not_share_a_default_dataset(workspace):
    first = mvmtargets(workspace, "extract", workspace / "data" / "first.csv", "-t", "hog", "--out", "cache",
                       "--frames", "2", "--size", "64")
    assert first.returncode == 0, first.stderr
    manifest = workspace / "cache" / "data" / "manifest.jsonl"
    recorded = manifest.read_text()
    second = mvmtargets(workspace, "extract", workspace / "data" / "recaptioned.csv", "-t", "hog", "--out",
                        "cache", "--frames", "2", "--size", "64")
    assert_one_line_error(second, "--dataset defaults to 'data'", "e.g. 'b'", "--dataset NAME")
    assert manifest.read_text() == recorded
    # naming the dataset explicitly adds to it, but one key keeps one caption set
    conflict = mvmtargets(workspace, "extract", workspace / "data" / "recaptioned.csv", "-t", "hog", "--out",
                          "cache", "--dataset", "data", "--frames", "2", "--size", "64")
    assert_one_line_error(conflict, "key 'a' is recorded with other captions", "'a red square'",
                          "'a green triangle'")
    assert manifest.read_text() == recorded
    added = mvmtargets(workspace, "extract", workspace / "data" / "second.csv", "-t", "hog", "--out", "cache",
                       "--dataset", "data", "--frames", "2", "--size", "64")
    assert added.returncode == 0, added.stderr
    assert read_manifest(manifest)["a"]["captions"] == ["a red square"]


def test_inputs_from_two_folders_need_a_dataset_name(workspace):
    write_video(workspace / "other" / "c.mp4", num_frames=6, width=64, height=64)
    result = mvmtargets(workspace, "extract", workspace / "data", workspace / "other", "-t", "hog", "--out", "cache",
                        "--frames", "2", "--size", "64")
    assert_one_line_error(result, "--dataset", "2 folders")
    assert not (workspace / "cache").exists()


# ----------------------------------------------------------------------------------------------
# Grid and run names


def test_grid_name_must_be_one_folder(workspace):
    deep = workspace / "deep" / "er"
    grid = deep / "g.yaml"
    grid.write_text("name: ../../pwned\naxes: {mask.ratio: [0.1, 0.2]}\n")
    before = files_under(workspace)
    for command in (("run", grid, "--dry-run"), ("run", grid), ("check", grid)):
        assert_one_line_error(ablate(deep, *command), str(grid), "name: '../../pwned' must be one folder name")
    hidden = deep / ".hidden.yaml"  # no `name:`: the stem is the name
    hidden.write_text("axes: {mask.ratio: [0.1, 0.2]}\n")
    assert_one_line_error(ablate(deep, "run", hidden, "--dry-run"), "name: '.hidden' must not start with '.'")
    assert files_under(workspace) == before | {"deep/er/.hidden.yaml"}


def test_run_name_must_be_one_folder(workspace):
    config = workspace / "deep" / "er" / "run.yaml"
    config.write_text(yaml.safe_dump({"name": "../../outside", "out_dir": "runs"}))
    before = files_under(workspace)
    assert_one_line_error(ablate(config.parent, "train", config), "'name': '../../outside' must be one folder name")
    assert_one_line_error(ablate(config.parent, "train", config, "--set", "name=ok", "--set", "data.dataset=.."),
                          "'data.dataset': '..' is the current or the parent folder")
    assert files_under(workspace) == before


def test_ablate_run_documents_its_exit_codes():
    result = subprocess.run([sys.executable, "-m", "ablations.cli", "run", "--help"], env={**ENV, "COLUMNS": "200"},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    for code in ("0 every run is done or running in another process", "1 some run failed", "2 bad input",
                 "130 interrupted"):
        assert code in text, result.stdout


# ----------------------------------------------------------------------------------------------
# Ctrl-C


# During numba's first compile, LLVM calls back into Python through ctypes; a KeyboardInterrupt
# raised there is printed as "Exception ignored" and dropped. This prelude reproduces exactly that:
# the HOG target's compute makes a ctypes callback during which SIGINT arrives.
SWALLOWED_CTRL_C = textwrap.dedent("""
    import ctypes, os, signal
    from mvm_targets.targets import hog
    _callback = ctypes.CFUNCTYPE(None)(lambda: os.kill(os.getpid(), signal.SIGINT))
    _compute = hog.HogTarget.compute
    def compute(self, frames):
        _callback()  # the KeyboardInterrupt raised inside is dropped by ctypes
        return _compute(self, frames)
    hog.HogTarget.compute = compute
""")


def test_ctrl_c_swallowed_by_a_ctypes_callback_still_stops_extract(workspace):
    result = mvmtargets(workspace, "extract", workspace / "data" / "first.csv", "-t", "hog", "--out", "cache",
                        "--frames", "2", "--size", "64", "--batch-size", "1", prelude=SWALLOWED_CTRL_C)
    assert result.returncode == 130, (result.stdout, result.stderr)
    assert "Exception ignored" in result.stderr  # the swallowing did happen
    assert result.stderr.strip().splitlines()[-1].startswith(INTERRUPTED)
    assert "done " not in result.stdout  # stopped, not run to the end


def test_ctrl_c_swallowed_during_grid_extraction_stops_ablate_run(workspace):
    grid = workspace / "g.yaml"
    grid.write_text(yaml.safe_dump({
        "name": "g", "base_config": str(REPO / "violet_core" / "configs" / "tiny.yaml"),
        "base": {"data": {"cache": "cache", "dataset": "data", "source": "data", "num_frames": 2},
                 "downstream": {"tasks": []}},
        "cache": {"source": "data/first.csv", "num_frames": 2, "size": 64, "batch_size": 1},
        "axes": {"mvm.targets": [["hog"]]}}))
    result = ablate(workspace, "run", grid, prelude=SWALLOWED_CTRL_C)
    assert result.returncode == 130, (result.stdout, result.stderr)
    assert result.stderr.strip().splitlines()[-1].startswith(INTERRUPTED)
    assert not (workspace / "runs").exists()  # nothing trained after the Ctrl-C


def test_runs_held_by_another_process_are_not_a_failure(tmp_path):
    """Exit 0 when every run is done or running elsewhere; 1 as soon as one is failed."""
    from typer.testing import CliRunner

    from ablations.cli import app
    from ablations.grid import load_grid
    from ablations.launch.liveness import process_start_ticks, this_host
    from ablations.rundir import FINAL_FILE, LOCK_FILE, RunStatus, write_json_atomic, write_status

    grid = tmp_path / "held.yaml"
    grid.write_text(yaml.safe_dump({"name": "held", "base_config": str(REPO / "violet_core" / "configs" / "tiny.yaml"),
                                    "axes": {"mask.ratio": [0.2, 0.3]}}))
    done, held = (tmp_path / "runs" / spec.run_id for spec in load_grid(grid).runs)
    done.mkdir(parents=True)
    write_status(done, RunStatus(state="done", attempts=1))
    write_json_atomic(done / FINAL_FILE, {"metrics": {}})
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        held.mkdir()
        write_json_atomic(held / LOCK_FILE, {"pid": other.pid, "host": this_host(),
                                             "start_ticks": process_start_ticks(other.pid), "job": None})
        result = CliRunner().invoke(app, ["run", str(grid), "--runs-dir", str(tmp_path / "runs")])
        assert result.exit_code == 0, result.output
        assert "0 to run, 1 done, 0 failed, 1 running elsewhere" in result.stdout
        write_status(done, RunStatus(state="failed", failure="nan", attempts=1))
        result = CliRunner().invoke(app, ["run", str(grid), "--runs-dir", str(tmp_path / "runs")])
        assert result.exit_code == 1, result.output
    finally:
        other.kill()
        other.wait()
