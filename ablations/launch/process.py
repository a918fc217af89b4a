"""One attempt of one run as a child process: start it, classify how it ended, record the outcome.

Shared by the local pool (ablations.launch.local) and the Slurm job body (ablations.launch.slurm).
The trainer's exit codes: 0 done (with final.json), 2 config or input error, 3 non-finite loss.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from ablations.grid import RunSpec
from ablations.launch.liveness import current_slurm_job, pid_alive, this_host
from ablations.rundir import (CONFIG_FILE, FAILURE_FILE, FINAL_FILE, LOG_FILE, Claim, RunStatus, claim_run, now_iso,
                              read_json, read_status, write_status)

TERMINATE_GRACE_S = 20.0  # after SIGTERM, before SIGKILL
EXIT_CONFIG, EXIT_NAN = 2, 3  # violet_core.train's exit codes


def train_command(run_dir: Path, nproc: int = 0) -> list[str]:
    """The trainer's command line; nproc > 0 runs it under torchrun on that many local processes.

    `--standalone` lets torchrun pick a free rendezvous port, so packed runs never collide on 29500.
    """
    config = str(run_dir / CONFIG_FILE)
    if nproc > 0:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
                "-m", "violet_core.train", config, "--run-dir", str(run_dir)]
    return [sys.executable, "-m", "violet_core.train", config, "--run-dir", str(run_dir)]


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
