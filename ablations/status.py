"""`ablate status`: one row per run (alias, run id, state, failure, duration, headline metric), and
with --watch also its step out of its total and an ETA. Reads run directories only.

The files and states shown are those of ablations.rundir; the headline metric is ablations.metrics'.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ablations.metrics import format_metric, headline
from ablations.progress import format_duration, step_progress
from ablations.rundir import (FAILURE_FILE, FINAL_FILE, LOG_FILE, RUN_FILE, default_runs_dir, effective_state,
                              find_run_dirs, read_json, read_status)

FINISHED = ("done", "failed")  # states a run leaves only when someone reruns it
STATE_ORDER = ("done", "failed", "running", "interrupted", "pending", "not started")


@dataclass(frozen=True)
class StatusRow:
    alias: str
    run_id: str
    state: str
    failure: str
    duration: str
    metric: str
    grid: str
    path: str
    steps: str = "-"  # "120/400" from metrics.jsonl, "-" before the trainer wrote its config
    eta: str = "-"  # time left for a running run, at its rate so far
    message: str = ""  # why a failed run failed
    eta_s: float | None = None
    duration_s: float | None = None


def status_row(run_dir: Path, alias: str | None = None, run_id: str | None = None) -> StatusRow:
    run = read_json(run_dir / RUN_FILE)
    status = read_status(run_dir)
    if not run_dir.exists():
        state = "not started"
    elif status is None and (run_dir / FINAL_FILE).is_file():
        state = "done"  # made by `ablate train` alone, as the report reads it
    elif status is None and (run_dir / FAILURE_FILE).is_file():
        state = "failed"
    else:
        state = effective_state(run_dir, status)
    final = read_json(run_dir / FINAL_FILE) if state == "done" else {}
    failure = read_json(run_dir / FAILURE_FILE) if state == "failed" and status is None else {}
    duration_s = status.duration_s if status else None
    steps = step_progress(run_dir) if run_dir.exists() else None
    eta_s = steps.eta_s(duration_s) if steps is not None and state == "running" else None
    return StatusRow(alias=alias or run.get("alias", run_dir.name), run_id=run_id or run.get("run_id", run_dir.name),
                     state=state,
                     failure=(status.failure or "") if status and state == "failed" else str(failure.get("class", "")),
                     duration=format_duration(duration_s) if status else "-",
                     metric=format_metric(headline(final.get("metrics") or {})), grid=str(run.get("grid") or ""),
                     path=str(run_dir), steps=f"{steps.step}/{steps.total}" if steps and steps.total else "-",
                     eta=format_duration(eta_s), eta_s=eta_s, duration_s=duration_s,
                     message=(status.message if status else str(failure.get("message", ""))) if state == "failed"
                     else "")


def collect_rows(target: Path, runs_dir: Path | None = None,
                 overrides: dict[str, Any] | None = None) -> tuple[str, list[StatusRow]]:
    """Rows for a grid YAML (every run of the grid, started or not) or a runs directory."""
    target = Path(target)
    if target.is_file():
        from ablations.grid import load_grid

        grid = load_grid(target, overrides)
        root = Path(runs_dir) if runs_dir else default_runs_dir(grid.name)
        rows = [status_row(root / spec.run_id, spec.alias, spec.run_id) for spec in grid.runs]
        return f"grid {grid.name}: {root}", rows
    rows = sorted((status_row(path) for path in find_run_dirs(target)), key=lambda r: (r.grid, r.alias))
    return str(target), rows


def format_table(rows: Iterable[StatusRow], progress: bool = False) -> str:
    """The rows as aligned columns; `progress` adds the step count and the ETA."""
    rows = list(rows)
    show_grid = len({r.grid for r in rows}) > 1
    header = (["grid"] if show_grid else []) + ["alias", "run id", "state", "failure", "duration"] \
        + (["steps", "ETA"] if progress else []) + ["metric"]
    body = [([r.grid] if show_grid else []) + [r.alias, r.run_id, r.state, r.failure or "-", r.duration]
            + ([r.steps, r.eta] if progress else []) + [r.metric or "-"] for r in rows]
    table = [header] + body
    widths = [max(len(str(line[i])) for line in table) for i in range(len(header))]
    return "\n".join("  ".join(str(cell).ljust(width) for cell, width in zip(line, widths)).rstrip() for line in table)


def summarize_states(rows: Iterable[StatusRow]) -> str:
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.state] = counts.get(row.state, 0) + 1
    return ", ".join(f"{counts[s]} {s}" for s in STATE_ORDER if s in counts)


def failure_lines(rows: Iterable[StatusRow]) -> list[str]:
    """One line per failed run: its class, its message and where its log is."""
    return [f"{r.alias} FAILED ({r.failure or '?'}): {r.message or 'no message'} [log: {Path(r.path) / LOG_FILE}]"
            for r in rows if r.state == "failed"]


def all_finished(rows: Iterable[StatusRow]) -> bool:
    rows = list(rows)
    return bool(rows) and all(r.state in FINISHED for r in rows)
