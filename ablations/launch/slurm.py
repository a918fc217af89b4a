"""`ablate run --launcher slurm`: the same runs, submitted as one Slurm job array through submitit.

Each array task runs one run: it claims the run directory on its node, starts the very command the
local launcher starts (`torchrun --standalone --nproc-per-node k` for k GPUs, or the plain trainer),
and records the outcome in status.json. On preemption or time-out Slurm signals the job; submitit
calls `RunJob.checkpoint`, which marks the run pending and requeues the same call. The trainer
resumes from its own checkpoint, so a requeue simply reruns the command.

submitit is the optional extra `mvm-targets[slurm]`; nothing here imports it until a submission.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

from ablations.grid import Grid, RunSpec
from ablations.launch.process import execute_run, interrupt_run
from ablations.rundir import RunStatus, archive_outputs, claim_run, read_status, write_run_files, write_status

try:  # the class must exist at import time (jobs unpickle it by reference), submitit or not
    from submitit.helpers import Checkpointable as _Checkpointable
except ImportError:  # pragma: no cover - exercised only without the extra
    _Checkpointable = object  # type: ignore[misc, assignment]

INSTALL_HINT = "--launcher slurm needs submitit, which is not installed: pip install 'mvm-targets[slurm]'"


class SlurmUnavailable(RuntimeError):
    """submitit is missing; the message says how to install it."""


@dataclass(frozen=True)
class SlurmOptions:
    partition: str | None = None
    time_min: int = 24 * 60  # per attempt; a requeue after time-out starts a new one
    cpus_per_run: int | None = None
    mem_gb: int | None = None
    array_parallelism: int = 64  # at most this many runs of the grid at once
    signal_delay_s: int = 120  # the preemption/time-out warning, time for a last checkpoint
    max_num_timeout: int = 10  # requeues after time-outs; preemptions are not counted
    params: dict[str, Any] = field(default_factory=dict)  # further AutoExecutor parameters (slurm_account=...)
    cluster: str | None = "slurm"  # submitit cluster; "local" runs the jobs as local processes (tests)


def require_submitit() -> Any:
    try:
        import submitit
    except ImportError:
        raise SlurmUnavailable(INSTALL_HINT) from None
    return submitit


class RunJob(_Checkpointable):  # type: ignore[misc, valid-type]
    """The body of one array task: run one run to completion, or get requeued trying."""

    def __init__(self, spec: RunSpec, run_dir: str, cwd: str, nproc: int) -> None:
        self.spec, self.run_dir, self.cwd, self.nproc = spec, run_dir, cwd, nproc
        self._active: Any = None

    def __call__(self) -> dict[str, Any]:
        os.chdir(self.cwd)  # the config's relative paths (cache, data) are relative to the submit directory
        outcome = execute_run(self.spec, Path(self.run_dir), nproc=self.nproc, preexec=_ignore_job_signal,
                              on_start=self._remember)
        if isinstance(outcome, str):
            return {"run_id": self.spec.run_id, "state": "skipped", "message": f"running elsewhere ({outcome})"}
        return {"run_id": self.spec.run_id, **outcome.to_dict()}

    def _remember(self, active: Any) -> None:
        self._active = active

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """Preempted or timing out: stop the trainer, mark the run pending and requeue the same call.

        The trainer checkpoints on its own schedule, so stopping it now loses nothing a requeue
        would not lose anyway; stopping it here, rather than leaving it to Slurm, guarantees that
        the requeued task never finds the previous attempt still writing to the run directory.
        """
        active, self._active = self._active, None
        if active is not None:
            interrupt_run(active, "preempted or timed out, requeued")
        return super().checkpoint(*args, **kwargs)

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_active"}  # a live Popen does not pickle

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._active = None


def _ignore_job_signal() -> None:
    """In the trainer: submitit's warning signal (USR2) is for the job, not a reason to die now."""
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)


def make_executor(folder: Path, grid: Grid, nproc: int, options: SlurmOptions) -> Any:
    submitit = require_submitit()
    executor = submitit.AutoExecutor(folder=str(folder), cluster=options.cluster,
                                     slurm_max_num_timeout=options.max_num_timeout)
    parameters: dict[str, Any] = {"name": f"ablate-{grid.name}", "timeout_min": options.time_min,
                                  "nodes": 1, "tasks_per_node": 1, "gpus_per_node": nproc,
                                  "slurm_array_parallelism": options.array_parallelism,
                                  "slurm_signal_delay_s": options.signal_delay_s}
    if options.cpus_per_run:
        parameters["cpus_per_task"] = options.cpus_per_run
    if options.mem_gb:
        parameters["mem_gb"] = options.mem_gb
    if options.partition:
        parameters["slurm_partition"] = options.partition
    parameters.update(options.params)
    try:
        executor.update_parameters(**parameters)
    except (AssertionError, ValueError, TypeError) as error:
        raise ValueError(f"Slurm parameters: {str(error).splitlines()[0]}") from None
    return executor


def submit_runs(grid: Grid, decisions: Sequence[Any], runs_dir: Path, code: str, options: Any, say: Any) -> int:
    """`ablate run --launcher slurm`: submit, report the array, return 0 (1 if some run was busy elsewhere)."""
    jobs, busy = submit(grid, decisions, runs_dir, code, options, say)
    if jobs:
        nproc = options.gpus_per_run
        say(f"submitted {len(jobs)} run(s) of grid {grid.name} as job array {str(jobs[0].job_id).split('_')[0]} "
            f"({nproc or 'no'} GPU(s) per run); follow with `ablate status {runs_dir}`")
    return 1 if busy or not jobs else 0


def submit(grid: Grid, decisions: Sequence[Any], runs_dir: Path, code: str, options: Any,
           say: Any) -> tuple[list[Any], int]:
    """Write each run's files, mark it pending, and submit the lot as one job array.

    Returns the submitit jobs and how many runs were skipped because another process owns them.
    """
    slurm: SlurmOptions = options.slurm or SlurmOptions()
    nproc = options.gpus_per_run
    executor = make_executor(runs_dir / ".submitit", grid, nproc, slurm)
    ready: list[tuple[RunSpec, Path]] = []
    busy = 0
    for decision in decisions:
        claim = claim_run(decision.run_dir)
        if isinstance(claim, str):
            say(f"{decision.spec.alias} skipped: running elsewhere ({claim})")
            busy += 1
            continue
        try:
            if decision.state == "done":  # --rerun-changed: the job must not find the old results
                say(f"{decision.spec.alias}: previous results moved to {archive_outputs(decision.run_dir)}")
            write_run_files(decision.spec, decision.run_dir, grid, code)
            previous = read_status(decision.run_dir) or RunStatus()
            write_status(decision.run_dir, replace(previous, state="pending", failure=None, finished=None,
                                                   message="submitted to Slurm"))
        finally:
            claim.release()
        ready.append((decision.spec, decision.run_dir.resolve()))
    if not ready:
        return [], busy
    cwd = os.getcwd()
    with executor.batch():
        jobs = [executor.submit(RunJob(spec, str(run_dir), cwd, nproc)) for spec, run_dir in ready]
    if getattr(executor, "cluster", slurm.cluster) == "slurm":
        # lets a later `ablate run` see, through squeue, that these runs are queued and not free
        for job, (spec, run_dir) in zip(jobs, ready):
            status = read_status(run_dir)
            if status is not None and status.state == "pending":
                write_status(run_dir, replace(status, job=str(job.job_id), message=f"queued as Slurm job {job.job_id}"))
    return jobs, busy
