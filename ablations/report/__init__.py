"""Summarise finished runs: per cell over seeds, and paired against a baseline cell.

    load      run directories -> one long frame (one row per run and metric)
    stats     mean, sd, s.e., 95 % t-intervals; paired Δ, its t-interval and sign-flip p-value;
              bootstrap intervals and the interquartile mean (docs/method.md §7 states the rules)
    flags     what a reader must know: missing cells, unpaired seeds, random teachers, mixed code...
    protocol  the protocol card: the settings as run and their deviations from the paper's
    render    summary.csv, comparison.csv, iqm.csv, report.md and the charts
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ablations.grid import load_grid
from ablations.report.flags import Flag, find_flags
from ablations.report.load import cell_name, factor_columns, load_runs, render_factor, resolve_rows
from ablations.report.render import Report, write_report
from ablations.report.stats import interquartile_means, matches_baseline, summarize


def report_main(runs: Sequence[str | Path], out_dir: str | Path, baseline: Mapping[str, Any] | None = None,
                rows: Sequence[str] | None = None, metrics: Sequence[str] | None = None,
                grid: str | Path | None = None, bootstrap: int = 0) -> list[Path]:
    """Load `runs`, write the report into `out_dir`, return the written files.

    Without `baseline`, the baseline declared by the grid (run.json "baseline", written by the
    runner) is used when the runs agree on one; runs that declare different baselines are an error.
    A declared baseline with no run among these is dropped with a flag; an explicit one is an error
    naming the cells. `grid` (a grid YAML) adds its cells to the expected ones, so cells that never
    started are flagged missing too. `bootstrap` > 0 adds bootstrap intervals and the IQM.
    """
    df = load_runs(runs)
    if df.empty:
        raise ValueError(f"no run directories in {', '.join(str(r) for r in runs)}")
    extra: list[Flag] = []
    if baseline is None:
        declared = {json.dumps(b, sort_keys=True): b for b in df.attrs.get("baselines", [])}
        if len(declared) > 1:
            raise ValueError(f"the runs declare different baselines ({', '.join(declared)}); pass one explicitly")
        baseline = next(iter(declared.values()), None)
        chosen = resolve_rows(df, rows)
        if baseline is not None and set(baseline) <= set(chosen) and not matches_baseline(
                df, chosen, {k: render_factor(v) for k, v in baseline.items()}):
            labels = df.attrs.get("labels", {})
            extra.append(Flag("no_baseline", f"the grid's baseline {cell_name(baseline, labels)} has no run here: "
                                             "no Δ"))
            baseline = None
    spec = load_grid(grid) if grid is not None else None
    expected = [run.factors for run in spec.runs] if spec else None
    return write_report(df, out_dir, baseline, rows=rows, metrics=metrics, expected=expected, bootstrap=bootstrap,
                        extra_flags=extra, cache=spec.cache if spec else None).files


__all__ = ["Flag", "Report", "load_runs", "render_factor", "factor_columns", "summarize", "find_flags", "write_report",
           "report_main", "interquartile_means"]
