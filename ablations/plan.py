"""What `ablate run` should do with each run of a grid: run it, or skip it and why.

A run is skipped when it is done, failed (unless --retry-failed), or owned by a live process
elsewhere; a done run made with another grid file or code version is kept and reported, or rerun
with --rerun-changed. Deciding reads run directories only; it never writes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ablations.grid import Grid, RunSpec
from ablations.rundir import FINAL_FILE, RUN_FILE, effective_state, read_json, read_status, running_elsewhere


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
    slurm: Any = None  # ablations.launch.slurm.SlurmOptions


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
