"""`ablate status RUNS --watch`: redraw the status of a running grid until every run is done or failed.

On a terminal the screen is cleared and redrawn every interval; otherwise (a pipe, a log file) a
new table is printed every interval, each headed by the time, so the output reads as a history.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from ablations.progress import format_duration
from ablations.status import (StatusRow, all_finished, collect_rows, failure_lines, format_table,
                              summarize_states)
from mvm_targets.interrupts import raise_if_interrupted

CLEAR = "\x1b[H\x1b[2J"  # cursor home, clear screen
EXIT_DONE, EXIT_FAILED = 0, 1  # as `ablate run`: 1 when some run failed


def render(title: str, rows: list[StatusRow]) -> str:
    """One frame: title, table with steps and ETA, counts with the grid's ETA, then the failures."""
    if not rows:
        return f"{title}: no runs yet"
    eta = grid_eta(rows)
    counts = summarize_states(rows) + (f"; ETA {format_duration(eta)}" if eta is not None else "")
    return "\n".join([title, format_table(rows, progress=True), counts, *failure_lines(rows)])


def grid_eta(rows: list[StatusRow]) -> float | None:
    """Time until every run is finished, assuming the running runs keep their pace and each waiting
    run takes as long as the mean finished (or projected) run, as many at a time as run now.

    None when nothing is left, or when there is nothing to estimate from yet.
    """
    running = [r for r in rows if r.state == "running"]
    waiting = sum(r.state in ("pending", "not started", "interrupted") for r in rows)
    if not running and not waiting:
        return None
    known = [r.duration_s for r in rows if r.state == "done" and r.duration_s is not None]
    known += [r.duration_s + r.eta_s for r in running if r.duration_s is not None and r.eta_s is not None]
    if any(r.eta_s is None for r in running) or (waiting and not known):
        return None
    slowest = max((r.eta_s or 0.0 for r in running), default=0.0)
    mean = sum(known) / len(known) if known else 0.0
    return slowest + waiting * mean / max(1, len(running))


def watch(target: Path, runs_dir: Path | None = None, overrides: dict[str, Any] | None = None,
          interval_s: float = 2.0, out: TextIO | None = None, sleep: Callable[[float], None] = time.sleep) -> int:
    """Draw frames every `interval_s` until every run is done or failed; returns EXIT_DONE when all are
    done, EXIT_FAILED when some failed. Ctrl-C raises KeyboardInterrupt (the CLI exits 130)."""
    if not interval_s > 0:
        raise ValueError(f"--interval must be a positive number of seconds, got {interval_s}")
    out = out or sys.stdout
    redraw = out.isatty()
    while True:
        raise_if_interrupted()
        title, rows = collect_rows(target, runs_dir, overrides)
        frame = render(title, rows)
        if redraw:
            out.write(CLEAR + frame + "\n")
        else:
            out.write(f"-- {time.strftime('%H:%M:%S')}\n{frame}\n\n")
        out.flush()
        if all_finished(rows):
            return EXIT_FAILED if any(r.state == "failed" for r in rows) else EXIT_DONE
        sleep(interval_s)
