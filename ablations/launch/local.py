"""The local launcher: claimed runs as subprocesses, at most --jobs at once, each pinned to its own
slice of the visible GPUs; a failed run never stops the others, Ctrl-C or SIGTERM stops them all
cleanly (their runs go back to pending and resume on the next `ablate run`)."""

from __future__ import annotations

import collections
import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ablations.grid import Grid, RunSpec
from ablations.launch.process import TERMINATE_GRACE_S, ActiveRun, finish_run, interrupt_run, start_run
from ablations.metrics import format_metric, headline
from ablations.plan import Decision, RunOptions, decide
from ablations.progress import Progress, format_duration
from ablations.rundir import (FINAL_FILE, LOG_FILE, RunStatus, archive_outputs, claim_run, read_json,
                              write_run_files)
from mvm_targets.interrupts import raise_if_interrupted

POLL_S = 0.2

Say = Callable[[str], None]


def say_stdout(line: str) -> None:
    print(line, flush=True)


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
