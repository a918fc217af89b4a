"""`mvmtargets extract --launcher slurm --array N`: one Slurm array task per key-hash share.

Task i runs the very `extract` command that was typed, as a child process, with
`--shard-index i --num-shards N --launcher local` appended (the last occurrence of an option wins),
so each task handles only the videos whose key hashes to share i and commits only their shards.
A task resumes from the cache's ledger and shards like any rerun of `extract`. On preemption or
time-out Slurm sends the warning signal; submitit calls `ExtractShare.checkpoint`, which interrupts
the child (it commits the clips it has computed, as on Ctrl-C) and requeues the same task.

submitit is the optional extra `mvm-targets[slurm]`; nothing imports it until a submission.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from mvm_targets.errors import MvmTargetsError

try:  # the class must exist at import time (tasks unpickle it by reference), submitit or not
    from submitit.helpers import Checkpointable as _Checkpointable
except ImportError:  # pragma: no cover - exercised only without the extra
    _Checkpointable = object  # type: ignore[misc, assignment]

INSTALL_HINT = "--launcher slurm needs submitit, which is not installed: pip install 'mvm-targets[slurm]'"
STOP_GRACE_S = 60.0  # time the interrupted child gets to commit what it has computed


@dataclass(frozen=True)
class SlurmExtractOptions:
    partition: str | None = None
    time_min: int = 24 * 60  # per attempt; a requeue after time-out starts a new one
    gpus_per_task: int = 0
    cpus_per_task: int | None = None
    mem_gb: int | None = None
    array_parallelism: int = 256  # at most this many shares at once
    signal_delay_s: int = 120  # the preemption/time-out warning: time to commit the last clips
    max_num_timeout: int = 10  # requeues after time-outs; preemptions are not counted
    cluster: str | None = "slurm"  # submitit cluster; "local" runs the tasks as local processes
    params: dict[str, Any] = field(default_factory=dict)  # further AutoExecutor parameters


class ExtractShare(_Checkpointable):  # type: ignore[misc, valid-type]
    """The body of one array task: `extract` for one share, to completion or requeued trying."""

    def __init__(self, argv: Sequence[str], cwd: str, num_shares: int) -> None:
        self.argv, self.cwd, self.num_shares = list(argv), cwd, num_shares
        self.attempts = 0
        self._child: subprocess.Popen | None = None

    def command(self, index: int) -> list[str]:
        return [sys.executable, "-m", "mvm_targets.cli", *self.argv, "--launcher", "local",
                "--shard-index", str(index), "--num-shards", str(self.num_shares)]

    def __call__(self, index: int) -> dict[str, Any]:
        self.attempts += 1  # pickled with the requeued call, so the next attempt counts on
        os.chdir(self.cwd)  # relative inputs and cache folders are relative to the submit directory
        child = self._child = subprocess.Popen(self.command(index), preexec_fn=_ignore_job_signal)
        # poll, not wait(): wait() holds the Popen's lock while blocked, and `checkpoint`, which runs
        # in a signal handler on this same thread, must be able to reap the child meanwhile
        while (returncode := child.poll()) is None:
            time.sleep(0.2)
        self._child = None
        if returncode != 0:
            raise RuntimeError(f"share {index}/{self.num_shares}: extract exited with status {returncode} "
                               f"(attempt {self.attempts}); its output is in this task's log")
        return {"share": index, "attempts": self.attempts}

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """Preempted or timing out: stop the child the way Ctrl-C does (it commits the clips it has
        computed), then requeue the same call; the requeued task skips what is committed."""
        child, self._child = self._child, None
        if child is not None and child.returncode is None:
            child.send_signal(signal.SIGINT)
            if not _reaped(child.pid, STOP_GRACE_S):
                child.kill()  # what it had not committed is computed again after the requeue
                _reaped(child.pid, None)
        return super().checkpoint(*args, **kwargs)

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_child"}  # a live Popen does not pickle

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._child = None


def _reaped(pid: int, timeout: float | None) -> bool:
    """Wait for child `pid` to exit (reaping it with os.waitpid: the interrupted Popen call may hold
    the Popen's own lock); True once it has exited, False if `timeout` seconds pass first."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return True  # reaped already
        if done:
            return True
        if deadline is not None and time.monotonic() > deadline:
            return False
        time.sleep(0.1)


def _ignore_job_signal() -> None:
    """In the child: the warning signal (USR2) is for the task, which interrupts the child itself with
    SIGINT; that one must reach the child even where the task's launcher ignores it (children inherit it)."""
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def submit_extract_array(argv: Sequence[str], num_shares: int, folder: Path,
                         options: SlurmExtractOptions = SlurmExtractOptions(), cwd: Path | None = None) -> list[Any]:
    """Submit `extract argv...` as a job array of `num_shares` tasks; returns submitit's jobs.

    `argv` is the command line after the program name (starting with "extract"); `folder` holds
    submitit's pickles and each task's log.
    """
    try:
        import submitit
    except ImportError:
        raise MvmTargetsError(INSTALL_HINT) from None
    if num_shares < 1:
        raise MvmTargetsError(f"--array must be at least 1, got {num_shares}")
    executor = submitit.AutoExecutor(folder=str(folder), cluster=options.cluster,
                                     slurm_max_num_timeout=options.max_num_timeout)
    parameters: dict[str, Any] = {"name": "mvmtargets-extract", "timeout_min": options.time_min,
                                  "nodes": 1, "tasks_per_node": 1, "gpus_per_node": options.gpus_per_task,
                                  "slurm_array_parallelism": options.array_parallelism,
                                  "slurm_signal_delay_s": options.signal_delay_s}
    if options.cpus_per_task:
        parameters["cpus_per_task"] = options.cpus_per_task
    if options.mem_gb:
        parameters["mem_gb"] = options.mem_gb
    if options.partition:
        parameters["slurm_partition"] = options.partition
    parameters.update(options.params)
    try:
        executor.update_parameters(**parameters)
    except (AssertionError, ValueError, TypeError) as error:
        raise MvmTargetsError(f"Slurm parameters: {str(error).splitlines()[0]}") from None
    job = ExtractShare(argv, str(cwd or Path.cwd()), num_shares)
    return executor.map_array(job, range(num_shares))
