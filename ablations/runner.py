"""`ablate run`: bring every run of a grid to done, locally (ablations.launch.local) or on Slurm
(ablations.launch.slurm).

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

import time
from collections.abc import Sequence
from pathlib import Path

from ablations.grid import Grid, describe
from ablations.launch.local import LocalPool, PoolResult, Say, say_stdout
from ablations.plan import Decision, RunOptions, drift_warning, plan_runs
from ablations.progress import Progress, format_duration
from ablations.rundir import default_runs_dir, effective_state, read_status
from mvm_targets.interrupts import raise_if_interrupted
from mvm_targets.provenance import code_version

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130  # `ablate run`'s


def run_grid(grid: Grid, options: RunOptions, say: Say = say_stdout) -> int:
    """Bring every run of `grid` to done (or failed); returns the exit code for `ablate run`.

    EXIT_OK: every run is done, running in another process, or (Slurm launcher) submitted;
    EXIT_FAILED: some run failed. Bad input raises ValueError (EXIT_BAD_INPUT in the CLI) before
    anything is written; Ctrl-C raises KeyboardInterrupt (EXIT_INTERRUPTED).
    """
    if options.launcher not in ("local", "slurm"):
        raise ValueError(f"--launcher must be local or slurm, got '{options.launcher}'")
    if options.launcher == "slurm" and not options.dry_run:
        from ablations.launch.slurm import require_submitit

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
        from ablations.launch.slurm import submit_runs

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
    from ablations.prepare_plan import describe_job, plan_cache

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
