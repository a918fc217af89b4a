"""`ablate run`: launch the runs of a grid that are not done, locally (or through ablations.slurm).

One invocation:
  1. expands the grid and decides, per run, run or skip (done, failed, changed, owned elsewhere);
  2. makes the cache ready for every run (ablations.prepare: each target extracted once);
  3. claims each run just before launching it, so concurrent `ablate run`s share the grid instead of
     duplicating it, and runs up to --jobs trainings at once, each pinned to its own GPU slice;
  4. records every outcome in the run's status.json and prints a progress line with an ETA.
A failed run never stops the others. Rerunning the same command resumes: done runs are skipped,
interrupted ones are relaunched and the trainer continues from its own checkpoint.

Exit codes of `ablate run` (EXIT_*): 0 when every run is done or running in another process, 1 when
some run failed, 2 for bad input (grid, overrides, options, a failed check), 130 when interrupted.
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import yaml

from ablations.grid import Grid, RunSpec, describe
from mvm_targets.interrupts import raise_if_interrupted
from ablations.status import (CONFIG_FILE, FAILURE_FILE, FINAL_FILE, LOCK_FILE, LOG_FILE, RUN_FILE, RunStatus,
                              current_slurm_job, default_runs_dir, effective_state, format_duration, format_metric,
                              headline, now_iso, pid_alive, process_start_ticks, read_json, read_status,
                              running_elsewhere, this_host, write_json_atomic, write_status)

POLL_S = 0.2
TERMINATE_GRACE_S = 20.0  # after SIGTERM, before SIGKILL
CLAIM_MUTEX = ".claim"
ARCHIVE_DIR = ".archive"
EXIT_CONFIG, EXIT_NAN = 2, 3  # violet_core.train's exit codes
EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130  # `ablate run`'s

Say = Callable[[str], None]


def say_stdout(line: str) -> None:
    print(line, flush=True)


@dataclass(frozen=True)
class RunOptions:
    runs_dir: Path | None = None  # default runs/<grid name>
    jobs: int | None = None  # concurrent runs; default 1, or every GPU slot with --gpus-per-run
    gpus_per_run: int = 0  # 0: no pinning, the trainer picks its device; k: torchrun over k GPUs
    dry_run: bool = False
    retry_failed: bool = False
    rerun_changed: bool = False
    timeout_s: float | None = None  # per run, local launcher
    launcher: str = "local"  # local | slurm
    slurm: Any = None  # ablations.slurm.SlurmOptions


# ----------------------------------------------------------------------------------------------
# Deciding what to run


@dataclass(frozen=True)
class Decision:
    spec: RunSpec
    run_dir: Path
    action: str  # run | skip
    reason: str  # why, in words
    state: str  # effective state found on disk (pending for a new run)
    changed: tuple[str, ...] = ()  # for a done run: "grid file", "code version"

    @property
    def runs(self) -> bool:
        return self.action == "run"


def decide(spec: RunSpec, run_dir: Path, grid: Grid, code: str, options: RunOptions) -> Decision:
    """Run or skip one run, from what its directory holds."""
    def make(action: str, reason: str, state: str, changed: tuple[str, ...] = ()) -> Decision:
        return Decision(spec, run_dir, action, reason, state, changed)

    if not run_dir.exists():
        return make("run", "new", "pending")
    status = read_status(run_dir)
    state = effective_state(run_dir, status)
    if state == "done":
        changed = drift(run_dir, grid, code)
        if changed and options.rerun_changed:
            return make("run", f"rerun: {' and '.join(changed)} changed", state, changed)
        return make("skip", "done" + (f" ({' and '.join(changed)} changed)" if changed else ""), state, changed)
    if state == "failed":
        failure = status.failure if status else None
        if options.retry_failed:
            return make("run", f"retry after {failure or 'failure'}", state)
        return make("skip", f"failed ({failure}; --retry-failed reruns it)", state)
    holder = running_elsewhere(run_dir, status)
    if holder:
        return make("skip", f"running elsewhere ({holder})", "running")
    if state == "interrupted":
        return make("run", "interrupted, resumes from its checkpoint", state)
    return make("run", "pending", state)


def drift(run_dir: Path, grid: Grid, code: str) -> tuple[str, ...]:
    """What differs between a done run's record and now: the grid file's hash, the code version."""
    record = read_json(run_dir / RUN_FILE)
    final = read_json(run_dir / FINAL_FILE)
    changed = []
    if record.get("grid_hash") not in (None, grid.grid_hash):
        changed.append("grid file")
    made_by = final.get("code_version") or record.get("code_version")
    if made_by not in (None, code):
        changed.append("code version")
    return tuple(changed)


def plan_runs(grid: Grid, runs_dir: Path, code: str, options: RunOptions) -> list[Decision]:
    return [decide(spec, runs_dir / spec.run_id, grid, code, options) for spec in grid.runs]


def drift_warning(decisions: Sequence[Decision], rerun: bool) -> str | None:
    changed = [d for d in decisions if d.changed]
    if not changed:
        return None
    what = sorted({c for d in changed for c in d.changed})
    names = ", ".join(d.spec.alias for d in changed[:8]) + (f" (+{len(changed) - 8} more)" if len(changed) > 8 else "")
    action = "rerunning them (--rerun-changed)" if rerun else "keeping their results (--rerun-changed reruns them)"
    return (f"warning: {len(changed)} done run(s) were made with a different {' and '.join(what)}: {names}; "
            f"{action}")


# ----------------------------------------------------------------------------------------------
# Claiming a run directory


@dataclass
class Claim:
    """Ownership of one run directory by this process: the O_EXCL lock file `.lock`."""

    run_dir: Path

    def release(self) -> None:
        lock = self.run_dir / LOCK_FILE
        if read_json(lock).get("pid") == os.getpid():
            lock.unlink(missing_ok=True)


def claim_run(run_dir: Path) -> Claim | str:
    """Create `run_dir` if needed and take its lock; returns the Claim, or who holds the run.

    The lock file is created with O_EXCL and names its holder (pid, host, process start time,
    Slurm job). A lock whose holder is gone, and whose trainer is gone too, is stale and taken
    over. Checking staleness and replacing the lock happen under an flock on `.claim`, so two
    processes that both find the same stale lock cannot both take it over.
    """
    from mvm_targets.store.locking import exclusive_lock

    run_dir.mkdir(parents=True, exist_ok=True)
    lock = run_dir / LOCK_FILE
    with exclusive_lock(run_dir / CLAIM_MUTEX):
        holder = running_elsewhere(run_dir, read_status(run_dir))
        if holder:
            return holder
        lock.unlink(missing_ok=True)  # absent, or stale: its holder and trainer are gone
        record = {"pid": os.getpid(), "host": this_host(), "start_ticks": process_start_ticks(os.getpid()),
                  "job": current_slurm_job(), "since": now_iso()}
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return "another process (lock appeared while claiming)"
        with os.fdopen(fd, "w") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
    return Claim(run_dir)


# ----------------------------------------------------------------------------------------------
# The files of a run


def write_run_files(spec: RunSpec, run_dir: Path, grid: Grid, code: str) -> None:
    """run.json (who the run is) and config.yaml (what the trainer reads)."""
    record = {"run_id": spec.run_id, "alias": spec.alias, "grid": grid.name, "grid_path": grid.path,
              "grid_hash": grid.grid_hash, "factors": spec.factors, "baseline": grid.baseline, "labels": grid.labels,
              "code_version": code, "written": now_iso()}
    write_json_atomic(run_dir / RUN_FILE, record)
    tmp = run_dir / f".{CONFIG_FILE}.{os.getpid()}.tmp"
    tmp.write_text(yaml.safe_dump(spec.config, sort_keys=False))
    os.replace(tmp, run_dir / CONFIG_FILE)


def archive_outputs(run_dir: Path) -> Path:
    """Move a done run's results aside (for --rerun-changed) so the trainer starts afresh and
    nothing is lost: everything but the lock goes to <runs-dir>/.archive/<run_id>-<time>/."""
    target = run_dir.parent / ARCHIVE_DIR / f"{run_dir.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    target.mkdir(parents=True, exist_ok=False)
    for entry in run_dir.iterdir():
        if entry.name not in (LOCK_FILE, CLAIM_MUTEX):
            shutil.move(str(entry), str(target / entry.name))
    return target


def train_command(run_dir: Path, nproc: int = 0) -> list[str]:
    """The trainer's command line; nproc > 0 runs it under torchrun on that many local processes.

    `--standalone` lets torchrun pick a free rendezvous port, so packed runs never collide on 29500.
    """
    config = str(run_dir / CONFIG_FILE)
    if nproc > 0:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
                "-m", "violet_core.train", config, "--run-dir", str(run_dir)]
    return [sys.executable, "-m", "violet_core.train", config, "--run-dir", str(run_dir)]


# ----------------------------------------------------------------------------------------------
# Starting and finishing one attempt


@dataclass
class ActiveRun:
    spec: RunSpec
    run_dir: Path
    claim: Claim
    proc: subprocess.Popen
    status: RunStatus
    log_offset: int
    started: float  # monotonic
    slot: list[str] | None = None
    deadline: float | None = None
    timed_out: bool = False
    kill_at: float | None = None

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started


def start_run(spec: RunSpec, run_dir: Path, claim: Claim, nproc: int = 0, gpus: list[str] | None = None,
              extra_env: dict[str, str] | None = None, timeout_s: float | None = None,
              preexec: Callable[[], None] | None = None) -> ActiveRun:
    """Launch one attempt of a claimed run (its run.json and config.yaml already written)."""
    (run_dir / FAILURE_FILE).unlink(missing_ok=True)  # from an earlier attempt; it would misclassify this one
    previous = read_status(run_dir) or RunStatus()
    command = train_command(run_dir, nproc)
    env = dict(os.environ, PYTHONUNBUFFERED="1", **(extra_env or {}))
    if gpus is not None:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
    log_path = run_dir / LOG_FILE
    pinned = f" (CUDA_VISIBLE_DEVICES={','.join(gpus)})" if gpus is not None else ""
    with open(log_path, "a") as log:
        log.write(f"==> ablate: attempt {previous.attempts + 1} on {this_host()} at {now_iso()}{pinned}: "
                  f"{' '.join(command)}\n")
        offset = log.tell()
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                preexec_fn=preexec)
    status = RunStatus(state="running", failure=None, message="", exit_code=None, attempts=previous.attempts + 1,
                       pid=proc.pid, started=now_iso(), finished=None, host=this_host(),
                       job=current_slurm_job())
    write_status(run_dir, status)
    started = time.monotonic()
    return ActiveRun(spec, run_dir, claim, proc, status, offset, started, gpus,
                     deadline=started + timeout_s if timeout_s else None)


def classify(run_dir: Path, returncode: int, timed_out: bool, log_tail: str) -> tuple[str, str | None, str]:
    """(state, failure class, message) of a finished attempt."""
    failure_record = read_json(run_dir / FAILURE_FILE)
    if returncode == 0 and not timed_out:
        if (run_dir / FINAL_FILE).is_file():
            return "done", None, ""
        return "failed", "crash", "the trainer exited 0 without writing final.json"
    if timed_out:
        return "failed", "timeout", "stopped after the --timeout limit"
    if failure_record.get("class") == "nan" or returncode == EXIT_NAN:
        return "failed", "nan", str(failure_record.get("message") or _error_line(log_tail) or "non-finite loss")
    if returncode == EXIT_CONFIG:
        return "failed", "config", _error_line(log_tail) or "config or input error (exit 2)"
    signum = -returncode if returncode < 0 else (returncode - 128 if 128 < returncode < 160 else None)
    if signum:
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = f"signal {signum}"
        return "failed", "killed", f"killed by {name}" + (" (out of memory?)" if signum == signal.SIGKILL else "")
    if failure_record.get("class"):
        return "failed", str(failure_record["class"]), str(failure_record.get("message", ""))
    return "failed", "crash", _error_line(log_tail) or f"exit code {returncode}"


def _error_line(text: str) -> str:
    """The most telling line of a log: the last `error:`/exception line, else the last line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith("error:") or "Error" in line.split(":")[0] or "Exception" in line.split(":")[0]:
            return line[:300]
    return lines[-1][:300] if lines else ""


def finish_run(active: ActiveRun, returncode: int) -> RunStatus:
    """Record the outcome of an attempt and give the run directory back."""
    with open(active.run_dir / LOG_FILE, "rb") as log:
        log.seek(active.log_offset)
        tail = log.read()[-20000:].decode(errors="replace")
    state, failure, message = classify(active.run_dir, returncode, active.timed_out, tail)
    status = replace(active.status, state=state, failure=failure, message=message, exit_code=returncode,
                     finished=now_iso())
    write_status(active.run_dir, status)
    active.claim.release()
    return status


def interrupt_run(active: ActiveRun, reason: str) -> None:
    """Stop an attempt because the harness is stopping; the run goes back to pending, to resume later.

    Safe inside a signal handler: the process is stopped and watched by pid, never through
    Popen.wait, whose lock the interrupted main thread may be holding.
    """
    stop_process(active.proc.pid)
    write_status(active.run_dir, replace(active.status, state="pending", exit_code=active.proc.returncode,
                                         message=f"interrupted ({reason}); rerunning resumes it from its checkpoint"))
    active.claim.release()


def stop_process(pid: int, grace_s: float = TERMINATE_GRACE_S) -> None:
    """SIGTERM (torchrun passes it on to its workers), then SIGKILL if still alive after `grace_s`."""
    for signum, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        if not pid_alive(pid):
            return
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait_s
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)


def execute_run(spec: RunSpec, run_dir: Path, nproc: int = 0, timeout_s: float | None = None,
                preexec: Callable[[], None] | None = None,
                on_start: Callable[[ActiveRun], None] | None = None) -> RunStatus | str:
    """Claim, run and record one run, blocking (the Slurm job body); a str says who holds it instead."""
    claim = claim_run(run_dir)
    if isinstance(claim, str):
        return claim
    try:
        status = read_status(run_dir)
        if status is not None and status.state == "done" and (run_dir / FINAL_FILE).is_file():
            return status
        active = start_run(spec, run_dir, claim, nproc=nproc, timeout_s=timeout_s, preexec=preexec)
    except BaseException:
        claim.release()
        raise
    if on_start:
        on_start(active)
    returncode = active.proc.wait()
    return finish_run(active, returncode)


# ----------------------------------------------------------------------------------------------
# Progress


@dataclass
class Progress:
    """Counts over the whole grid, and an ETA from the durations of finished runs."""

    total: int
    done: int
    failed: int
    concurrency: int
    durations: list[float] = field(default_factory=list)

    def prefix(self, queued: int = 0, active: Sequence[float] = ()) -> str:
        left = self.total - self.done - self.failed
        return f"[{self.done}/{self.total} done, {self.failed} failed, {left} left{self._eta(queued, active)}]"

    def _eta(self, queued: int, active: Sequence[float]) -> str:
        if not queued and not active:
            return ""
        if not self.durations:
            return ", ETA ?"
        mean = sum(self.durations) / len(self.durations)
        work = queued * mean + sum(max(mean - elapsed, 0.0) for elapsed in active)
        return f", ETA {format_duration(work / max(1, self.concurrency))}"


# ----------------------------------------------------------------------------------------------
# GPUs


def visible_gpus() -> list[str]:
    """The GPUs this process may use: CUDA_VISIBLE_DEVICES when set, else every device torch sees."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [g.strip() for g in listed.split(",") if g.strip() and not g.strip().startswith("-")]
    try:
        import torch
    except ImportError:
        return []
    return [str(i) for i in range(torch.cuda.device_count())]


def gpu_slots(gpus: Sequence[str], per_run: int) -> list[list[str]]:
    """Disjoint slices of `per_run` GPUs; left-over GPUs (fewer than per_run) stay idle."""
    if per_run <= 0:
        raise ValueError(f"--gpus-per-run must be positive, got {per_run}")
    if per_run > len(gpus):
        raise ValueError(f"--gpus-per-run {per_run}: only {len(gpus)} GPU(s) visible "
                         f"({'CUDA_VISIBLE_DEVICES=' + ','.join(gpus) if gpus else 'none'})")
    return [list(gpus[i:i + per_run]) for i in range(0, len(gpus) - per_run + 1, per_run)]


# ----------------------------------------------------------------------------------------------
# The local pool


class _Terminated(Exception):
    """SIGTERM to the harness (e.g. a batch system stopping it): stop the runs cleanly, like Ctrl-C."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise _Terminated()


@dataclass
class PoolResult:
    done: list[RunSpec] = field(default_factory=list)
    failed: list[tuple[RunSpec, RunStatus]] = field(default_factory=list)
    elsewhere: list[tuple[RunSpec, str]] = field(default_factory=list)


class LocalPool:
    """Runs claimed runs as subprocesses, at most `jobs` at once, each on its own GPU slice."""

    def __init__(self, grid: Grid, code: str, options: RunOptions, progress: Progress, say: Say) -> None:
        self.grid, self.code, self.options, self.progress, self.say = grid, code, options, progress, say
        self.nproc = options.gpus_per_run
        if self.nproc > 0:
            slots = gpu_slots(visible_gpus(), self.nproc)
            jobs = min(options.jobs or len(slots), len(slots))
            self.slots: list[list[str] | None] = list(slots[:jobs])
        else:
            self.slots = [None] * max(1, options.jobs or 1)
        self.progress.concurrency = len(self.slots)
        self.extra_env = self._thread_env(len(self.slots))
        self.result = PoolResult()

    @staticmethod
    def _thread_env(jobs: int) -> dict[str, str]:
        """Concurrent runs would each start one thread per core (torch, data loading); share the cores out."""
        if jobs <= 1 or "OMP_NUM_THREADS" in os.environ:
            return {}
        return {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // jobs))}

    def run(self, decisions: Sequence[Decision]) -> PoolResult:
        queue = collections.deque(decisions)
        free = list(self.slots)
        active: list[ActiveRun] = []
        previous_handler = signal.signal(signal.SIGTERM, _raise_terminated)
        try:
            while queue or active:
                raise_if_interrupted()  # a Ctrl-C that something swallowed still stops the pool
                while queue and free:
                    started = self._start(queue.popleft(), free[0], len(queue), active)
                    if started is not None:
                        free.pop(0)
                        active.append(started)
                if active:
                    time.sleep(POLL_S)
                for run in list(active):
                    self._enforce_timeout(run)
                    returncode = run.proc.poll()
                    if returncode is None:
                        continue
                    active.remove(run)
                    free.append(run.slot)
                    self._finish(run, returncode, len(queue), active)
        except (KeyboardInterrupt, _Terminated) as stop:
            reason = "Ctrl-C" if isinstance(stop, KeyboardInterrupt) else "SIGTERM"
            for run in active:
                interrupt_run(run, reason)
            raise KeyboardInterrupt from None
        finally:
            signal.signal(signal.SIGTERM, previous_handler)
        return self.result

    def _start(self, decision: Decision, slot: list[str] | None, queued: int,
               active: Sequence[ActiveRun]) -> ActiveRun | None:
        spec, run_dir = decision.spec, decision.run_dir
        claim = claim_run(run_dir)
        if isinstance(claim, str):
            self.result.elsewhere.append((spec, claim))
            self.say(f"{self._prefix(queued, active)} {spec.alias} skipped: running elsewhere ({claim})")
            return None
        try:
            # decided before claiming; another harness may have finished or failed it since
            fresh = decide(spec, run_dir, self.grid, self.code, self.options)
            if not fresh.runs and fresh.state in ("done", "failed"):
                claim.release()
                if fresh.state == "done":
                    self.progress.done += 1
                else:
                    self.progress.failed += 1
                self.say(f"{self._prefix(queued, active)} {spec.alias} skipped: {fresh.reason} meanwhile")
                return None
            if fresh.state == "done":  # --rerun-changed
                moved = archive_outputs(run_dir)
                self.say(f"{spec.alias}: previous results moved to {moved}")
            write_run_files(spec, run_dir, self.grid, self.code)
            run = start_run(spec, run_dir, claim, nproc=self.nproc, gpus=slot, extra_env=self.extra_env,
                            timeout_s=self.options.timeout_s)
        except BaseException:
            claim.release()
            raise
        where = f" on GPU {','.join(slot)}" if slot else ""
        self.say(f"{self._prefix(queued, [*active, run])} {spec.alias} started{where} "
                 f"({decision.reason}, attempt {run.status.attempts}, {run_dir})")
        return run

    def _enforce_timeout(self, run: ActiveRun) -> None:
        now = time.monotonic()
        if run.deadline is not None and not run.timed_out and now > run.deadline and run.proc.poll() is None:
            run.timed_out = True
            run.kill_at = now + TERMINATE_GRACE_S
            run.proc.send_signal(signal.SIGTERM)
        elif run.kill_at is not None and now > run.kill_at and run.proc.poll() is None:
            run.proc.kill()

    def _finish(self, run: ActiveRun, returncode: int, queued: int, active: Sequence[ActiveRun]) -> None:
        status = finish_run(run, returncode)
        took = format_duration(status.duration_s)
        if status.state == "done":
            self.progress.done += 1
            if status.duration_s is not None:
                self.progress.durations.append(status.duration_s)
            self.result.done.append(run.spec)
            metric = format_metric(headline(read_json(run.run_dir / FINAL_FILE).get("metrics") or {}))
            self.say(f"{self._prefix(queued, active)} {run.spec.alias} done in {took}"
                     f"{f' ({metric})' if metric else ''}")
        else:
            self.progress.failed += 1
            self.result.failed.append((run.spec, status))
            self.say(f"{self._prefix(queued, active)} {run.spec.alias} FAILED ({status.failure}) after {took}: "
                     f"{status.message} [log: {run.run_dir / LOG_FILE}]")

    def _prefix(self, queued: int, active: Sequence[ActiveRun]) -> str:
        return self.progress.prefix(queued, [a.elapsed for a in active])


# ----------------------------------------------------------------------------------------------
# The grid


def code_version() -> str:
    from mvm_targets.store.schema import code_version as mvm_code_version

    return mvm_code_version()


def parse_sets(pairs: Sequence[str]) -> dict[str, Any]:
    """`--set key=value` pairs, values parsed as YAML (`mvm.targets=[hog]`, `mask.ratio=0.5`)."""
    parsed: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set '{pair}' is not KEY=VALUE")
        parsed[key.strip()] = yaml.safe_load(value)
    return parsed


def run_grid(grid: Grid, options: RunOptions, say: Say = say_stdout) -> int:
    """Bring every run of `grid` to done (or failed); returns the exit code for `ablate run`.

    EXIT_OK: every run is done, running in another process, or (Slurm launcher) submitted;
    EXIT_FAILED: some run failed. Bad input raises ValueError (EXIT_BAD_INPUT in the CLI) before
    anything is written; Ctrl-C raises KeyboardInterrupt (EXIT_INTERRUPTED).
    """
    if options.launcher not in ("local", "slurm"):
        raise ValueError(f"--launcher must be local or slurm, got '{options.launcher}'")
    if options.launcher == "slurm" and not options.dry_run:
        from ablations.slurm import require_submitit

        require_submitit()  # before any extraction: a missing extra should cost nothing
    runs_dir = Path(options.runs_dir) if options.runs_dir else default_runs_dir(grid.name)
    code = code_version()
    decisions = plan_runs(grid, runs_dir, code, options)
    if options.dry_run:
        _print_dry_run(grid, runs_dir, decisions, say)
        return 0
    warning = drift_warning(decisions, options.rerun_changed)
    if warning:
        say(warning)
    to_run = [d for d in decisions if d.runs]
    done = sum(d.state == "done" and not d.runs for d in decisions)
    failed = sum(d.state == "failed" and not d.runs for d in decisions)
    elsewhere = [d for d in decisions if not d.runs and d.state == "running"]
    say(f"grid {grid.name}: {len(decisions)} runs in {runs_dir}: {len(to_run)} to run, {done} done, "
        f"{failed} failed" + (f", {len(elsewhere)} running elsewhere" if elsewhere else ""))
    if not to_run:
        return EXIT_FAILED if failed else EXIT_OK
    from ablations.prepare import prepare_cache

    if options.launcher == "slurm":
        from ablations.slurm import submit_runs

        prepare_cache(grid, say)
        return submit_runs(grid, to_run, runs_dir, code, options, say)
    durations = [d for d in (_duration(x.run_dir) for x in decisions if x.state == "done") if d is not None]
    progress = Progress(total=len(decisions), done=done, failed=failed, concurrency=1, durations=durations)
    pool = LocalPool(grid, code, options, progress, say)  # checks --gpus-per-run before any extraction
    prepare_cache(grid, say)
    raise_if_interrupted()
    started = time.monotonic()
    result = pool.run(to_run)
    say(_final_line(grid, runs_dir, progress, result, time.monotonic() - started))
    # every other run is done or held by another process, which brings it to an end; one of those
    # may have failed in the meantime, and then the grid has a failed run
    held = [d.spec for d in elsewhere] + [spec for spec, _ in result.elsewhere]
    failed_meanwhile = [s for s in held if effective_state(runs_dir / s.run_id, read_status(runs_dir / s.run_id))
                        == "failed"]
    return EXIT_FAILED if progress.failed or failed_meanwhile else EXIT_OK


def _duration(run_dir: Path) -> float | None:
    status = read_status(run_dir)
    return status.duration_s if status else None


def _final_line(grid: Grid, runs_dir: Path, progress: Progress, result: PoolResult, seconds: float) -> str:
    parts = [f"grid {grid.name}: {progress.done}/{progress.total} done, {progress.failed} failed"]
    if result.failed:
        parts.append("failed now: " + ", ".join(f"{spec.alias} ({status.failure})" for spec, status in result.failed))
    if result.elsewhere:
        parts.append(f"{len(result.elsewhere)} running in another process")
    parts.append(f"took {format_duration(seconds)}; `ablate status {runs_dir}`, `ablate report {runs_dir} --out DIR`")
    return "; ".join(parts)


def _print_dry_run(grid: Grid, runs_dir: Path, decisions: Sequence[Decision], say: Say) -> None:
    from ablations.prepare import describe_job, plan_cache

    say(describe(grid))
    for job in plan_cache(grid):
        say(describe_job(job))
    say(f"runs directory: {runs_dir}")
    width = max(len(d.spec.alias) for d in decisions)
    for d in decisions:
        say(f"  {d.action:4}  {d.spec.run_id}  {d.spec.alias:<{width}}  {d.reason}")
    count = sum(d.runs for d in decisions)
    say(f"dry run: {count} would run, {len(decisions) - count} would be skipped; nothing was written")
    warning = drift_warning(decisions, False)
    if warning:
        say(warning)
