"""`ablate run / status / report` end to end on a tiny synthetic set, plus the runner's parts.

The integration tests train for real: 16 synthetic clips at 64 px, the tiny preset with 3
pretraining and 2 finetuning steps (a run takes a few seconds, mostly imports). Each scenario
works in its own folder, because the runner resolves cache/, data/ and runs/ from the working
directory exactly like a user's shell would.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from ablations.grid import load_grid
from ablations.launch.local import LocalPool, gpu_slots, visible_gpus
from ablations.launch.process import classify, train_command
from ablations.plan import Decision, RunOptions
from ablations.progress import Progress
from ablations.rundir import LOCK_FILE, RunStatus, claim_run, read_status, write_status
from mvm_targets.provenance import CODE_VERSION_ENV

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "violet_core" / "configs" / "tiny.yaml"
# One thread per trainer: on a shared 2-core machine torch's default (one per core) is many times slower.
# The code version is pinned for every process of these tests: it is the git commit plus a dirty
# flag, and a commit made while the module runs would otherwise change it between two `ablate run`s.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", CODE_VERSION_ENV: "0.0.0+pinned-by-tests",
       "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)}

BASE = {
    "data": {"size": 64, "source": "data/synthetic", "cache": "cache"},
    "pretrain": {"optim": {"steps": 3, "batch_size": 4}, "log_every": 1, "checkpoint_every": 1},
    "downstream": {"tasks": ["retrieval"], "optim": {"steps": 2, "batch_size": 4}},
}
CACHE = {"source": "data/synthetic/captions.csv", "synth": {"clips": 16, "seed": 0, "frames": 8, "size": 64},
         "num_frames": 4, "size": 64}


def write_grid(folder: Path, name: str, axes: dict, seeds: list[int], baseline: dict | None = None,
               cache: dict | None = CACHE, **extra) -> Path:
    grid = {"name": name, "base_config": str(TINY), "base": BASE, "axes": axes, "seeds": seeds, **extra}
    if cache is not None:
        grid["cache"] = cache
    if baseline:
        grid["baseline"] = baseline
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(grid, sort_keys=False))
    return path


def ablate(cwd: Path, *args: object, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ablations.cli", *map(str, args)], cwd=cwd, env=env or ENV,
                          capture_output=True, text=True, timeout=timeout)


def start_ablate(cwd: Path, log: Path, *args: object) -> subprocess.Popen:
    """`ablate` in its own process group (so the test can SIGKILL it with its trainers), output to `log`."""
    with open(log, "w") as handle:
        return subprocess.Popen([sys.executable, "-m", "ablations.cli", *map(str, args)], cwd=cwd, env=ENV,
                                stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)


def snapshot(root: Path) -> dict[str, int]:
    """Every file under `root` with its mtime: equal snapshots mean nothing was written."""
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in sorted(root.rglob("*")) if p.is_file()}


def statuses(runs_dir: Path) -> dict[str, dict]:
    return {d.name: json.loads((d / "status.json").read_text())
            for d in sorted(runs_dir.iterdir()) if (d / "status.json").is_file()}


def attempts_in_log(run_dir: Path) -> int:
    """0 for a run directory claimed but not yet started (a kill can land between the two)."""
    log = run_dir / "train.log"
    return log.read_text().count("==> ablate: attempt") if log.exists() else 0


def wait_for(condition, timeout: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"ablate exited ({proc.returncode}) before {what}:\n{log.read_text() if log else ''}")
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}:\n{log.read_text() if log else ''}")


# ----------------------------------------------------------------------------------------------
# Scenario 1: a grid SIGKILLed in the middle, then rerun


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """Run a 4-run grid with 2 jobs, SIGKILL the whole process group once one run is done and a
    fresh one is running, snapshot everything, then rerun the same command to completion."""
    work = tmp_path_factory.mktemp("interrupted")
    grid = write_grid(work, "mini", {"mvm.targets": [["pixel"], ["hog"]]}, [0, 1],
                      baseline={"mvm.targets": ["pixel"]}, labels={"mvm.targets": "target"})
    runs = work / "runs" / "mini"
    first_log = work / "first.log"
    proc = start_ablate(work, first_log, "run", grid, "--jobs", "2")

    def one_done_one_fresh() -> bool:
        if not runs.is_dir():
            return False
        states = list(statuses(runs).values())
        fresh = [s for s in states if s["state"] == "running" and
                 time.time() - _timestamp(s["started"]) < 3]  # just started: far from finishing
        return any(s["state"] == "done" for s in states) and bool(fresh)

    wait_for(one_done_one_fresh, 150, "one run done and another running", proc, first_log)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = {"status": statuses(runs), "cache": snapshot(work / "cache"),
              "final": {d.name: (d / "final.json").stat().st_mtime_ns for d in runs.iterdir()
                        if (d / "final.json").is_file()},
              "logs": {d.name: attempts_in_log(d) for d in runs.iterdir()}}
    second = ablate(work, "run", grid, "--jobs", "2")
    return SimpleNamespace(work=work, grid=grid, runs=runs, first=first_log.read_text(), second=second,
                           before=before)


def _timestamp(iso: str) -> float:
    from ablations.rundir import parse_time

    return parse_time(iso) or 0.0


def test_interrupted_grid_resumes_without_rerunning_finished_runs(interrupted):
    second, before, runs = interrupted.second, interrupted.before, interrupted.runs
    assert second.returncode == 0, second.stdout + second.stderr
    done_before = {k for k, s in before["status"].items() if s["state"] == "done"}
    killed = {k for k, s in before["status"].items() if s["state"] == "running"}
    assert done_before and killed
    after = statuses(runs)
    assert len(after) == 4 and all(s["state"] == "done" for s in after.values()), after
    for run_id in done_before:  # finished runs are never rerun
        assert after[run_id] == before["status"][run_id]
        assert (runs / run_id / "final.json").stat().st_mtime_ns == before["final"][run_id]
        assert attempts_in_log(runs / run_id) == 1
    for run_id in killed:  # the interrupted run is run again and finishes
        assert after[run_id]["attempts"] == before["status"][run_id]["attempts"] + 1 == 2
        assert attempts_in_log(runs / run_id) == 2
        assert after[run_id]["exit_code"] == 0 and (runs / run_id / "final.json").is_file()
        assert not (runs / run_id / LOCK_FILE).exists()
    assert "interrupted, resumes from its checkpoint" in second.stdout
    # progress lines: counts over the whole grid, ETA from finished runs, headline metric
    assert "[4/4 done, 0 failed, 0 left]" in second.stdout
    assert "ETA " in interrupted.first and "retrieval/R@1=" in interrupted.first


def test_every_run_directory_is_complete(interrupted):
    for run_dir in interrupted.runs.iterdir():
        record = json.loads((run_dir / "run.json").read_text())
        assert record["run_id"] == run_dir.name and record["grid"] == "mini"
        assert set(record) >= {"alias", "grid_hash", "factors", "baseline", "code_version"}
        assert record["baseline"] == {"mvm.targets": ["pixel"]}
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        assert config["mvm"]["targets"] == record["factors"]["mvm.targets"]
        assert config["data"]["size"] == 64 and config["pretrain"]["optim"]["steps"] == 3
        status = read_status(run_dir)
        assert status is not None and status.host and status.started and status.finished and status.pid
        assert "done:" in (run_dir / "train.log").read_text()  # the trainer's own summary line


def test_cache_is_extracted_once(interrupted):
    assert "synthesised the dataset, extracted 16 clips" in interrupted.first
    assert "hog-paper-" in interrupted.first  # one extraction for both pixel (frames) and hog
    assert "up to date, nothing extracted" in interrupted.second.stdout
    assert snapshot(interrupted.work / "cache") == interrupted.before["cache"]


def test_rerunning_a_finished_grid_does_nothing(interrupted):
    before = snapshot(interrupted.work)
    result = ablate(interrupted.work, "run", interrupted.grid)
    assert result.returncode == 0, result.stderr
    assert "0 to run, 4 done" in result.stdout
    assert snapshot(interrupted.work) == before


def test_dry_run_touches_nothing(interrupted, tmp_path):
    before = snapshot(interrupted.work)
    result = ablate(interrupted.work, "run", interrupted.grid, "--dry-run", "--retry-failed")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("  skip  ") == 4 and "target=hog,seed=1" in result.stdout
    fresh = ablate(interrupted.work, "run", interrupted.grid, "--dry-run", "--runs-dir", "elsewhere")
    assert fresh.stdout.count("  run   ") == 4 and "nothing was written" in fresh.stdout
    overridden = ablate(interrupted.work, "run", interrupted.grid, "--dry-run", "--set", "pretrain.optim.steps=4")
    assert overridden.stdout.count("  run   ") == 4  # another config, so other run ids: nothing is done yet
    assert snapshot(interrupted.work) == before and not (interrupted.work / "elsewhere").exists()
    # a brand-new grid: no dataset synthesised, no cache, no runs directory
    grid = write_grid(tmp_path, "new", {"mvm.targets": [["hog"]]}, [0])
    result = ablate(tmp_path, "run", grid, "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "would synthesise 16 clips" in result.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new.yaml"]


def test_changed_grid_file_is_reported_not_rerun(interrupted):
    """Same run ids (labels do not enter them), different grid file: say so, keep the results."""
    edited = interrupted.work / "edited.yaml"
    spec = yaml.safe_load(interrupted.grid.read_text())
    edited.write_text(yaml.safe_dump({**spec, "labels": {"mvm.targets": "mvm"}}, sort_keys=False))
    before = snapshot(interrupted.runs)
    result = ablate(interrupted.work, "run", edited, "--runs-dir", interrupted.runs)
    assert result.returncode == 0, result.stderr
    warning = [line for line in result.stdout.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and "4 done run(s) were made with a different grid file" in warning[0]
    assert "mvm=hog,seed=0" in warning[0] and "--rerun-changed" in warning[0]
    assert "0 to run, 4 done" in result.stdout and snapshot(interrupted.runs) == before
    dry = ablate(interrupted.work, "run", edited, "--runs-dir", interrupted.runs, "--dry-run", "--rerun-changed")
    assert dry.stdout.count("rerun: grid file changed") == 4
    # another code version as well (pinned, so a commit during the test cannot be the cause)
    newer = ablate(interrupted.work, "run", edited, "--runs-dir", interrupted.runs, "--dry-run",
                   env={**ENV, CODE_VERSION_ENV: "0.0.0+another"})
    assert "4 done run(s) were made with a different code version and grid file" in newer.stdout
    assert snapshot(interrupted.runs) == before


def test_status_lists_the_runs(interrupted):
    result = ablate(interrupted.work, "status", interrupted.runs)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[1].split()[:3] == ["alias", "run", "id"]
    rows = [line for line in lines if "target=" in line]
    assert len(rows) == 4 and all(" done " in row and "retrieval/R@1=" in row for row in rows)
    assert lines[-1] == "4 done"
    by_grid = ablate(interrupted.work, "status", interrupted.grid)
    assert "grid mini" in by_grid.stdout and by_grid.stdout.count(" done ") == 4


def test_report_writes_its_files(interrupted):
    result = ablate(interrupted.work, "report", interrupted.runs, "--out", "rep", "--baseline", "mvm.targets=[pixel]")
    assert result.returncode == 0, result.stderr
    written = [interrupted.work / line for line in result.stdout.split()]
    assert any(p.name == "summary.csv" for p in written) and all(p.is_file() for p in written)


# ----------------------------------------------------------------------------------------------
# Scenario 2: a run that produces NaN, next to one that does not; two `ablate run` at once


@pytest.fixture(scope="module")
def failing(tmp_path_factory):
    """Two concurrent `ablate run` over a 2-run grid whose lr=1e30 run diverges."""
    work = tmp_path_factory.mktemp("failing")
    grid = write_grid(work, "lr", {"pretrain.optim.lr": [5.0e-4, 1.0e+30]}, [0], labels={"pretrain.optim.lr": "lr"})
    runs = work / "runs" / "lr"
    log_a, log_b = work / "a.log", work / "b.log"
    first = start_ablate(work, log_a, "run", grid)
    wait_for(lambda: runs.is_dir() and any(s["state"] == "running" for s in statuses(runs).values()),
             120, "the first harness to start a run", first, log_a)
    second = start_ablate(work, log_b, "run", grid)
    codes = (first.wait(timeout=240), second.wait(timeout=240))
    return SimpleNamespace(work=work, grid=grid, runs=runs, codes=codes, a=log_a.read_text(), b=log_b.read_text(),
                           ids={spec.alias: spec.run_id for spec in load_grid(grid).runs})


def test_nan_run_is_recorded_as_failed_and_others_finish(failing):
    ok, nan = failing.runs / failing.ids["lr=0.0005,seed=0"], failing.runs / failing.ids["lr=1e+30,seed=0"]
    assert read_status(ok).state == "done"
    status = read_status(nan)
    assert (status.state, status.failure, status.exit_code) == ("failed", "nan", 3)
    assert "non-finite" in status.message
    assert "FAILED (nan)" in failing.a + failing.b
    # the harness that ran the NaN run exits 1; the other one, whose last run was held by it, exits 0
    # if that run was still running when it finished (every run done or running elsewhere) and 1 if
    # it had failed by then: both orders happen
    assert failing.codes[1] == 1 and failing.codes[0] in (0, 1)


def test_concurrent_harnesses_never_run_the_same_run(failing):
    for run_dir in failing.runs.iterdir():
        assert read_status(run_dir).attempts == 1 and attempts_in_log(run_dir) == 1
    assert "running elsewhere" in failing.b


def test_retry_failed_reruns_only_the_failed_run(failing):
    ok, nan = failing.runs / failing.ids["lr=0.0005,seed=0"], failing.runs / failing.ids["lr=1e+30,seed=0"]
    untouched = snapshot(ok)
    plain = ablate(failing.work, "run", failing.grid)
    assert plain.returncode == 1 and "0 to run, 1 done, 1 failed" in plain.stdout
    result = ablate(failing.work, "run", failing.grid, "--retry-failed")
    assert result.returncode == 1
    assert "retry after nan" in result.stdout
    status = read_status(nan)
    assert (status.state, status.failure, status.attempts) == ("failed", "nan", 2)
    assert attempts_in_log(nan) == 2
    assert snapshot(ok) == untouched
    table = ablate(failing.work, "status", failing.runs).stdout
    assert any(" failed " in line and " nan " in line for line in table.splitlines())
    assert "1 done, 1 failed" in table


def test_timeout_is_a_failure_class(failing):
    result = ablate(failing.work, "run", failing.grid, "--runs-dir", "runs/timeout", "--timeout", "0.5",
                    "--jobs", "2")
    assert result.returncode == 1
    for run_dir in (failing.work / "runs" / "timeout").iterdir():
        status = read_status(run_dir)
        assert (status.state, status.failure) == ("failed", "timeout")


def test_rerun_changed_archives_and_reruns_done_runs(failing):
    ok = failing.runs / failing.ids["lr=0.0005,seed=0"]
    old_final = (ok / "final.json").read_text()
    edited = failing.work / "edited.yaml"
    spec = yaml.safe_load(failing.grid.read_text())
    edited.write_text(yaml.safe_dump({**spec, "labels": {"pretrain.optim.lr": "learning_rate"}}, sort_keys=False))
    result = ablate(failing.work, "run", edited, "--runs-dir", failing.runs, "--rerun-changed")
    assert result.returncode == 1  # the NaN run is still failed (not retried)
    assert "learning_rate=0.0005,seed=0 done" in result.stdout
    archived = list((failing.runs / ".archive").iterdir())
    assert len(archived) == 1 and (archived[0] / "final.json").read_text() == old_final
    assert read_status(ok).state == "done" and json.loads((ok / "run.json").read_text())["grid_path"] == str(edited)


def test_sigterm_stops_runs_cleanly(failing):
    """SIGTERM to the harness alone (a batch system stopping it): its trainers are stopped too and
    their runs go back to pending, free for the next `ablate run`."""
    runs = failing.work / "runs" / "term"
    log = failing.work / "term.log"
    proc = start_ablate(failing.work, log, "run", failing.grid, "--runs-dir", runs)
    running = wait_for(lambda: runs.is_dir() and [(d, s) for d, s in statuses(runs).items() if s["state"] == "running"],
                       120, "a run to start", proc, log)
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=60) == 130, log.read_text()
    run_id, status = running[0]
    after = read_status(runs / run_id)
    assert after.state == "pending" and "interrupted (SIGTERM)" in after.message
    assert not (runs / run_id / LOCK_FILE).exists()
    from ablations.launch.liveness import pid_alive

    assert not pid_alive(status["pid"])
    assert "interrupted" in log.read_text()


# ----------------------------------------------------------------------------------------------
# One-line errors


@pytest.mark.parametrize("case", ["bad_grid", "missing_source", "unknown_target", "no_submitit"])
def test_errors_are_one_line(case, tmp_path):
    env = ENV
    args: list[object] = []
    if case == "bad_grid":
        grid = write_grid(tmp_path, "bad", {"mvm.targets": [[]]}, [0], colour="blue")
        expected = "unknown top-level key 'colour'"
    elif case == "missing_source":
        grid = write_grid(tmp_path, "nosrc", {"mvm.targets": [["hog"]]}, [0], cache={"source": "absent/captions.csv"})
        expected = "source absent/captions.csv does not exist"
    elif case == "unknown_target":
        grid = write_grid(tmp_path, "unknown", {"mvm.targets": [["nosuch"]]}, [0])
        expected = "unknown target 'nosuch'"
    else:
        blocker = tmp_path / "blocked"
        (blocker / "submitit").mkdir(parents=True)
        (blocker / "submitit" / "__init__.py").write_text("raise ImportError('submitit is not installed')\n")
        env = {**ENV, "PYTHONPATH": os.pathsep.join([str(blocker), ENV["PYTHONPATH"]])}
        grid = write_grid(tmp_path, "slurm", {"mvm.targets": [[]]}, [0])
        args = ["--launcher", "slurm"]
        expected = "pip install 'mvm-targets[slurm]'"
    result = ablate(tmp_path, "run", grid, *args, env=env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], result.stderr
    if case != "no_submitit":
        assert str(grid) in lines[0]
    assert not (tmp_path / "runs").exists() and not (tmp_path / "cache").exists()


# ----------------------------------------------------------------------------------------------
# Claims, failure classes, GPU packing


def test_claims_are_exclusive_and_stale_locks_are_taken_over(tmp_path):
    run_dir = tmp_path / "run"
    claim = claim_run(run_dir)
    assert not isinstance(claim, str)
    other = _claim_in_subprocess(run_dir)
    assert other.startswith("harness pid") and str(os.getpid()) in other
    claim.release()
    assert not (run_dir / LOCK_FILE).exists()
    # a harness that died holding the lock: its lock is stale and taken over
    assert _claim_in_subprocess(run_dir, exit_holding=True) == "claimed"
    assert json.loads((run_dir / LOCK_FILE).read_text())["pid"] != os.getpid()
    claim = claim_run(run_dir)
    assert not isinstance(claim, str) and json.loads((run_dir / LOCK_FILE).read_text())["pid"] == os.getpid()
    claim.release()
    # the harness is gone but its trainer still runs: the run is not free
    trainer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "violet_core.train"])
    try:
        write_status(run_dir, RunStatus(state="running", pid=trainer.pid, host=None, attempts=1))
        assert "trainer pid" in _claim_in_subprocess(run_dir)
    finally:
        trainer.kill()
        trainer.wait()
    assert _claim_in_subprocess(run_dir) == "claimed"


def _claim_in_subprocess(run_dir: Path, exit_holding: bool = False) -> str:
    code = textwrap.dedent(f"""
        import os, sys
        from pathlib import Path
        from ablations.rundir import claim_run
        claim = claim_run(Path({str(run_dir)!r}))
        if isinstance(claim, str):
            print(claim)
        else:
            print("claimed", flush=True)
            if not {exit_holding}:
                claim.release()
            os._exit(0)
    """)
    return subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True,
                          check=True).stdout.strip()


def test_slurm_records_decide_who_owns_a_run(tmp_path, monkeypatch):
    """A run queued in Slurm is not free; the requeued job itself may take over its own lock."""
    from ablations.rundir import running_elsewhere

    monkeypatch.setattr("ablations.launch.liveness.slurm_job_alive", lambda job: None)  # no squeue here: cannot tell
    for key in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"):
        monkeypatch.delenv(key, raising=False)
    write_status(tmp_path, RunStatus(state="pending", job="123_4"))
    assert running_elsewhere(tmp_path, read_status(tmp_path)) == "queued as Slurm job 123_4"
    monkeypatch.setattr("ablations.launch.liveness.slurm_job_alive", lambda job: False)  # Slurm forgot it: free
    assert running_elsewhere(tmp_path, read_status(tmp_path)) is None
    # a lock left on another node by job 123_4, seen from the requeued 123_4 and from elsewhere
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": 1, "host": "node17", "job": "123_4"}))
    monkeypatch.setattr("ablations.launch.liveness.slurm_job_alive", lambda job: True)
    assert running_elsewhere(tmp_path, read_status(tmp_path)) == "harness Slurm job 123_4"
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "123")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "4")
    assert running_elsewhere(tmp_path, read_status(tmp_path)) is None
    assert not isinstance(claim_run(tmp_path), str)


def test_failure_classes(tmp_path):
    assert classify(tmp_path, 0, False, "")[:2] == ("failed", "crash")  # exit 0 without final.json
    (tmp_path / "final.json").write_text("{}")
    assert classify(tmp_path, 0, False, "") == ("done", None, "")
    (tmp_path / "final.json").unlink()
    assert classify(tmp_path, 2, False, "...\nerror: data.size: 65 is not a multiple of 32\n") == \
        ("failed", "config", "error: data.size: 65 is not a multiple of 32")
    assert classify(tmp_path, -9, False, "")[1] == "killed"
    assert classify(tmp_path, 1, True, "")[1] == "timeout"
    assert classify(tmp_path, 1, False, "Traceback\nRuntimeError: boom\n") == ("failed", "crash", "RuntimeError: boom")
    # under torchrun a NaN exits 1, not 3: the trainer's failure.json tells
    (tmp_path / "failure.json").write_text(json.dumps({"class": "nan", "message": "step 2: non-finite loss"}))
    assert classify(tmp_path, 1, False, "") == ("failed", "nan", "step 2: non-finite loss")


def test_gpu_slots_and_commands(monkeypatch, tmp_path):
    assert gpu_slots(["0", "1", "2", "3"], 2) == [["0", "1"], ["2", "3"]]
    assert gpu_slots(["0", "1", "2"], 2) == [["0", "1"]]
    with pytest.raises(ValueError, match="only 2 GPU"):
        gpu_slots(["0", "1"], 3)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6")
    assert visible_gpus() == ["4", "5", "6"]
    command = train_command(tmp_path, nproc=2)
    assert command[:6] == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m"]
    assert command[6:] == ["violet_core.train", str(tmp_path / "config.yaml"), "--run-dir", str(tmp_path)]
    assert train_command(tmp_path)[1:3] == ["-m", "violet_core.train"]


def test_runs_are_packed_onto_disjoint_gpu_slices(monkeypatch, tmp_path):
    """4 GPUs, 2 per run: at most two runs at once, never sharing a GPU (a stand-in trainer records it)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    record = tmp_path / "seen.jsonl"
    fake = textwrap.dedent(f"""
        import json, os, sys, time
        run_dir = sys.argv[-1]
        start = time.time(); time.sleep(0.6)
        with open({str(record)!r}, "a") as out:
            seen = {{"gpus": os.environ["CUDA_VISIBLE_DEVICES"], "start": start, "end": time.time()}}
            out.write(json.dumps(seen) + "\\n")
        open(os.path.join(run_dir, "final.json"), "w").write('{{"metrics": {{"retrieval/R@1": 1.0}}}}')
    """)
    monkeypatch.setattr("ablations.launch.process.train_command", lambda run_dir, nproc=0: [sys.executable, "-c", fake,
                                                                                     str(run_dir)])
    grid = load_grid(write_grid(tmp_path, "pack", {"mask.ratio": [0.1, 0.2, 0.3, 0.4, 0.5]}, [0]))
    options = RunOptions(gpus_per_run=2)
    progress = Progress(total=5, done=0, failed=0, concurrency=1)
    lines: list[str] = []
    pool = LocalPool(grid, "test", options, progress, lines.append)
    decisions = [Decision(spec, tmp_path / "runs" / spec.run_id, "run", "new", "pending") for spec in grid.runs]
    result = pool.run(decisions)
    assert len(result.done) == 5 and progress.done == 5
    seen = [json.loads(line) for line in record.read_text().splitlines()]
    assert {s["gpus"] for s in seen} == {"0,1", "2,3"}
    for a in seen:
        overlapping = [b for b in seen if b is not a and b["start"] < a["end"] and a["start"] < b["end"]]
        assert len(overlapping) <= 1 and all(b["gpus"] != a["gpus"] for b in overlapping)
    assert any("on GPU 0,1" in line for line in lines) and any("on GPU 2,3" in line for line in lines)


def test_existing_synthetic_source_built_with_other_arguments_is_refused(tmp_path, monkeypatch):
    from ablations.prepare import prepare_cache
    from ablations.prepare_plan import PrepareError
    from mvm_targets.synth import build_synthetic_dataset

    monkeypatch.chdir(tmp_path)
    build_synthetic_dataset(tmp_path / "data" / "synthetic", clips=4, seed=0, num_frames=8, size=64)
    grid = load_grid(write_grid(tmp_path, "stale", {"mvm.targets": [["hog"]]}, [0]))
    with pytest.raises(PrepareError, match=r"data/synthetic was synthesised with other arguments "
                                           r"\(clips: 4 there, 16 asked\); delete it"):
        prepare_cache(grid, lambda line: None)
    assert not (tmp_path / "cache").exists()  # nothing extracted from the wrong data


# ----------------------------------------------------------------------------------------------
# Slurm through submitit's local executor (submitit is in the dev extra, so CI runs this)


def test_slurm_job_is_requeued_and_resumes(tmp_path, monkeypatch):
    pytest.importorskip("submitit")
    from ablations.prepare import prepare_cache
    from ablations.launch.slurm import SlurmOptions, submit
    from ablations.plan import plan_runs

    monkeypatch.chdir(tmp_path)
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.setenv(key, "1")
    grid = load_grid(write_grid(tmp_path, "slurm", {"mvm.targets": [["hog"]]}, [0]))
    prepare_cache(grid, lambda line: None)
    options = RunOptions(launcher="slurm", slurm=SlurmOptions(cluster="local", time_min=10))
    runs_dir = tmp_path / "runs" / "slurm"
    decisions = plan_runs(grid, runs_dir, "test", options)
    jobs, busy = submit(grid, decisions, runs_dir, "test", options, lambda line: None)
    assert busy == 0 and len(jobs) == 1
    run_dir = runs_dir / grid.runs[0].run_id
    # preempt the task once its trainer is running: submitit calls RunJob.checkpoint and requeues
    wait_for(lambda: (read_status(run_dir) or RunStatus()).state == "running", 120, "the job to start its trainer")
    task_pid = json.loads((run_dir / LOCK_FILE).read_text())["pid"]
    os.kill(task_pid, signal.SIGUSR2)
    outcome = jobs[0].result()
    assert outcome["state"] == "done", outcome
    status = read_status(run_dir)
    assert status.state == "done" and status.attempts == 2 and attempts_in_log(run_dir) == 2
    assert (run_dir / "final.json").is_file()
