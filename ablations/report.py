"""Summarise finished runs: mean ± s.e. over seeds per cell, and the paired Δ against a baseline cell.

Input is a set of run directories (see `load_runs`); output is `summary.csv` (tidy statistics),
`comparison.csv` (one row per cell), `report.md` and one bar chart per headline metric.

Statistics, per cell (a combination of the row factors) and metric, over its done runs:
    n     number of runs with a value
    mean  their mean
    std   sample standard deviation (ddof=1); NaN when n = 1, since one run says nothing about spread
    se    std / sqrt(n), the standard error of the mean
Delta against the baseline cell (the cell with the baseline's factor values, every other row factor
unchanged) is paired: runs are matched by seed (and by any factor pooled out of the rows), and
    delta     mean of the per-pair differences cell - baseline
    delta_std sample std (ddof=1) of those differences
    delta_se  delta_std / sqrt(n_pairs)
    n_pairs   pairs with both runs done; unpaired seeds are left out of Δ (they stay in mean/n)
Pairing removes the seed-to-seed variation the two cells share (same data order and init for a
seed), so the s.e. of Δ is usually far smaller than combining the two cells' s.e.; it is the
paired-t standard error. Several runs for one seed in a cell (e.g. two code versions) are averaged
before pairing.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ablations.grid import SEED_KEY, format_value, load_grid, safe_name

RUN_FILES = ("run.json", "status.json", "final.json", "failure.json")
# Columns of `load_runs` that are not factors; every other column is a factor (an axis of the grid).
INFO_COLUMNS = ("run_id", "alias", "grid", "grid_hash", "state", "failure", "message", "code_version", "software",
                "seed", "random_teacher", "path", "metric", "value", "chance")
HEADLINE = ("retrieval/R@1", "retrieval/R@5", "retrieval/R@10", "retrieval/AveR", "qa_oe/acc", "qa_mc/acc")
STATS = ("mean", "std", "se", "n", "delta", "delta_se")
RANDOM_TEACHER_NOTE = "numbers with random teachers are not meaningful"


@dataclass(frozen=True)
class Flag:
    """Something a reader of the numbers must know: kind is missing_cell, incomplete_cell,
    random_teacher, mixed_code, mixed_software or failed_run."""

    kind: str
    message: str


@dataclass(frozen=True)
class Report:
    files: list[Path]
    flags: list[Flag]
    summary: pd.DataFrame = field(compare=False)


# ----------------------------------------------------------------------------------------------
# Loading


def load_runs(paths: Iterable[str | Path]) -> pd.DataFrame:
    """Read run directories into a long frame, one row per (run, metric).

    Each path is a run directory (holding run.json, status.json, final.json or failure.json) or a
    root whose children are run directories; other folders are skipped. The state comes from the
    runner's status.json; a run made by `ablate train` alone has none, and reads as done (final.json),
    failed (the trainer's failure.json: class, message) or pending. A run without final.json metrics
    (pending, failed) still gets one row, with metric and value missing, so that its state and
    failure reach the flags. List factor values are rendered for grouping ('+'-joined, [] -> 'none');
    numbers, strings and booleans keep their type.
    The runs' declared baselines and labels (run.json "baseline"/"labels") are kept in
    `df.attrs["baselines"]` and `df.attrs["labels"]`.
    """
    rows: list[dict[str, Any]] = []
    factor_order: list[str] = []
    baselines: list[dict[str, Any]] = []
    labels: dict[str, str] = {}
    for run_dir in _run_dirs(paths):
        run, status, final, failure = (_read_json(run_dir / name) for name in RUN_FILES)
        factors = {k: v for k, v in (run.get("factors") or {}).items() if k != SEED_KEY}
        factor_order += [k for k in factors if k not in factor_order]
        if run.get("baseline"):
            baselines.append(run["baseline"])
        labels.update(run.get("labels") or {})
        seed = final.get("seed", (run.get("factors") or {}).get(SEED_KEY))
        info = {
            "run_id": run.get("run_id", run_dir.name), "alias": run.get("alias", run_dir.name),
            "grid": run.get("grid"), "grid_hash": run.get("grid_hash"),
            "state": status.get("state", "done" if final else "failed" if failure else "pending"),
            "failure": status.get("failure", failure.get("class")),
            "message": status.get("message", failure.get("message", "")),
            "code_version": final.get("code_version", run.get("code_version")),
            "software": json.dumps(final["software"], sort_keys=True) if final.get("software") else None,
            "seed": seed, "random_teacher": any(isinstance(t, dict) and t.get("teacher_weights") == "random"
                                                for t in final.get("targets") or []),
            "path": str(run_dir),
            **{k: render_factor(v) for k, v in factors.items()},
        }
        metrics = {k: v for k, v in (final.get("metrics") or {}).items() if _is_number(v)}
        chance = final.get("chance") or {}
        if not metrics:
            rows.append({**info, "metric": None, "value": math.nan, "chance": math.nan})
        for metric, value in metrics.items():
            level = chance.get(metric)
            rows.append({**info, "metric": metric, "value": float(value),
                         "chance": float(level) if _is_number(level) else math.nan})
    columns = [c for c in INFO_COLUMNS if c not in ("metric", "value", "chance")] + factor_order + ["metric", "value",
                                                                                                    "chance"]
    frame = pd.DataFrame(rows, columns=columns)
    frame.attrs["baselines"] = baselines
    frame.attrs["labels"] = labels
    return frame


def _run_dirs(paths: Iterable[str | Path]) -> list[Path]:
    found: dict[Path, None] = {}
    for path in map(Path, paths):
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such run directory or runs root")
        if _is_run_dir(path):
            found[path.resolve()] = None
        elif path.is_dir():
            found.update((child.resolve(), None) for child in sorted(path.iterdir()) if _is_run_dir(child))
    return list(found)


def _is_run_dir(path: Path) -> bool:
    return path.is_dir() and any((path / name).is_file() for name in RUN_FILES)


def _read_json(path: Path) -> dict[str, Any]:
    # A file being rewritten by a live run may be momentarily unreadable; the report treats it as
    # absent (the run then reads as pending) rather than failing on one run of hundreds.
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def render_factor(value: Any) -> Any:
    """A factor value as it appears in the frame: lists/mappings/None as text, scalars unchanged."""
    return format_value(value) if isinstance(value, (list, tuple, Mapping)) or value is None else value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def factor_columns(df: pd.DataFrame) -> list[str]:
    """The factor (axis) columns of a `load_runs` frame, in order; the seed is not one of them."""
    return [c for c in df.columns if c not in INFO_COLUMNS]


# ----------------------------------------------------------------------------------------------
# Statistics


def summarize(df: pd.DataFrame, rows: Sequence[str] | None = None, baseline: Mapping[str, Any] | None = None,
              metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """Per cell and metric: n, mean, std, se, chance, and the seed-paired Δ against `baseline`.

    `rows` are the factors that define a cell (default: every factor); factors left out are pooled
    and become part of the pairing key. `baseline` maps row factors to values (raw like [] or
    rendered like "none"); keys may be labels. See the module docstring for the statistics.
    """
    factors = factor_columns(df)
    labels = df.attrs.get("labels", {})
    rows = [_column(r, factors, labels) for r in (factors if rows is None else rows)]
    base = {_column(k, factors, labels): render_factor(v) for k, v in (baseline or {}).items()}
    for key in base:
        if key not in rows:
            raise ValueError(f"baseline factor '{key}' is not a row of the report (rows: {', '.join(rows)})")
    done = df[(df["state"] == "done") & df["metric"].notna() & df["value"].notna()]
    if metrics is not None:
        done = done[done["metric"].isin(list(metrics))]
    pool = [f for f in factors if f not in rows]

    # One value per (cell, metric, pairing key): repeated runs of one seed are averaged first.
    units: dict[tuple, dict[tuple, list[float]]] = {}
    chances: dict[tuple, list[float]] = {}
    for record in done.to_dict("records"):
        cell = tuple(_cell_value(record[r]) for r in rows)
        pair = (_cell_value(record["seed"]),) + tuple(_cell_value(record[p]) for p in pool)
        units.setdefault((cell, record["metric"]), {}).setdefault(pair, []).append(record["value"])
        if not math.isnan(record["chance"]):
            chances.setdefault((cell, record["metric"]), []).append(record["chance"])

    out = []
    for (cell, metric), by_pair in units.items():
        values = [v for vs in by_pair.values() for v in vs]
        stats = _stats(values)
        entry = {**dict(zip(rows, cell)), "metric": metric, **stats,
                 "chance": _mean(chances.get((cell, metric), [])),
                 "is_baseline": bool(base) and all(cell[rows.index(k)] == v for k, v in base.items())}
        reference = tuple(base.get(r, c) for r, c in zip(rows, cell))
        ref_units = units.get((reference, metric)) if base else None
        diffs = [_mean(by_pair[p]) - _mean(ref_units[p]) for p in by_pair if ref_units and p in ref_units]
        paired = _stats(diffs)
        entry.update(delta=paired["mean"], delta_std=paired["std"], delta_se=paired["se"], n_pairs=paired["n"])
        out.append(entry)
    columns = rows + ["metric", "n", "mean", "std", "se", "chance", "is_baseline", "delta", "delta_std", "delta_se",
                      "n_pairs"]
    table = pd.DataFrame(out, columns=columns)
    if table.empty:
        return table
    metric_rank = {m: i for i, m in enumerate(_metric_order(table["metric"].unique()))}
    order = sorted(range(len(table)), key=lambda i: (not table["is_baseline"].iat[i],
                                                      tuple(_natural(table[r].iat[i]) for r in rows),
                                                      metric_rank[table["metric"].iat[i]]))
    return table.iloc[order].reset_index(drop=True)


def _stats(values: Sequence[float]) -> dict[str, Any]:
    n = len(values)
    mean = _mean(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else math.nan
    return {"n": n, "mean": mean, "std": std, "se": std / math.sqrt(n) if n > 1 else math.nan}


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def _cell_value(value: Any) -> Any:
    # NaN != NaN would split one missing-factor cell into many; use None as the missing marker.
    return None if isinstance(value, float) and math.isnan(value) else value


def _column(key: str, factors: Sequence[str], labels: Mapping[str, str]) -> str:
    if key in factors:
        return key
    by_label = {label: k for k, label in labels.items()}
    if key in by_label and by_label[key] in factors:
        return by_label[key]
    raise ValueError(f"'{key}' is not a factor of these runs (factors: {', '.join(factors) or 'none'})")


def _natural(value: Any) -> tuple:
    if value is None:
        return (2, "")
    if _is_number(value):
        return (0, float(value), "")
    try:  # numbers written as text still sort as numbers ("9" before "10")
        return (0, float(str(value)), str(value))
    except ValueError:
        return (1, 0.0, str(value))


def _metric_order(metrics: Iterable[str]) -> list[str]:
    metrics = list(metrics)
    return [m for m in HEADLINE if m in metrics] + sorted(m for m in metrics if m not in HEADLINE)


# ----------------------------------------------------------------------------------------------
# Flags


def find_flags(df: pd.DataFrame, rows: Sequence[str] | None = None,
               expected: Iterable[Mapping[str, Any]] | None = None) -> list[Flag]:
    """What a reader must know before trusting the table.

    Expected cells are the cells of every run directory found (any state; the runner writes
    run.json before a run starts), plus `expected` factor assignments (e.g. a grid's runs) when
    given. A cell with no done run is missing; failed and pending runs do not count.
    """
    factors = factor_columns(df)
    labels = df.attrs.get("labels", {})
    rows = [_column(r, factors, labels) for r in (factors if rows is None else rows)]
    runs = df.drop_duplicates("run_id")
    done = runs[runs["state"] == "done"]
    with_metrics = set(df.loc[df["metric"].notna(), "run_id"])
    flags: list[Flag] = []

    def cell_of(record: Mapping[str, Any]) -> tuple:
        return tuple(_cell_value(record.get(r)) for r in rows)

    all_seeds = sorted({s for s in runs["seed"] if _cell_value(s) is not None})
    cells: dict[tuple, list[dict[str, Any]]] = {}
    for record in runs.to_dict("records"):
        cells.setdefault(cell_of(record), []).append(record)
    for assignment in expected or []:
        rendered = {k: render_factor(v) for k, v in assignment.items() if k != SEED_KEY}
        if _cell_value(assignment.get(SEED_KEY)) is not None and assignment[SEED_KEY] not in all_seeds:
            all_seeds.append(assignment[SEED_KEY])
        cells.setdefault(cell_of(rendered), [])
    for cell, members in sorted(cells.items(), key=lambda item: tuple(_natural(v) for v in item[0])):
        name = _cell_name(dict(zip(rows, cell)), labels)
        good = [m for m in members if m["state"] == "done" and m["run_id"] in with_metrics]
        if not good:
            states = Counter(m["state"] for m in members)
            why = ", ".join(f"{state}: {count}" for state, count in sorted(states.items())) or "no run directory"
            flags.append(Flag("missing_cell", f"missing cell {name}: no done run ({why})"))
            continue
        seeds = sorted({m["seed"] for m in good})
        lacking = sorted(s for s in all_seeds if s not in seeds)
        if lacking:
            flags.append(Flag("incomplete_cell", f"cell {name}: {len(seeds)} of {len(all_seeds)} seeds done "
                                                 f"(missing seeds {', '.join(str(s) for s in lacking)})"))
    random_cells = Counter(_cell_name(dict(zip(rows, cell_of(r))), labels)
                           for r in done.to_dict("records") if r["random_teacher"])
    for name, count in random_cells.items():
        runs_text = "1 run uses" if count == 1 else f"{count} runs use"
        flags.append(Flag("random_teacher", f"cell {name}: {runs_text} random-weight teachers; {RANDOM_TEACHER_NOTE}"))
    versions = Counter(v for v in runs["code_version"] if isinstance(v, str) and v)
    if len(versions) > 1:
        flags.append(Flag("mixed_code", f"mixed code versions across runs: {_counted(versions)}"))
    mixed = _mixed_software(done["software"])
    if mixed:
        flags.append(Flag("mixed_software", f"done runs were trained with different software: {mixed}"))
    for record in runs[runs["state"] == "failed"].to_dict("records"):
        message = f": {record['message']}" if record.get("message") else ""
        flags.append(Flag("failed_run", f"failed run {record['alias']} ({record['run_id']}): "
                                        f"{record.get('failure') or 'unknown'}{message}"))
    return flags


def _mixed_software(records: pd.Series) -> str:
    """'numpy 2.4.6 (6 runs), 2.3.1 (2 runs); torch ...' for each package whose version differs
    between runs (final.json "software"); '' when all agree or nothing was recorded."""
    recorded = [json.loads(r) for r in records if isinstance(r, str) and r]
    parts = []
    for package in sorted({name for software in recorded for name in software}):
        counts = Counter(software.get(package, "absent") for software in recorded)
        if len(counts) > 1:
            parts.append(f"{package} {_counted(counts)}")
    return "; ".join(parts)


def _counted(counts: Counter) -> str:
    """Counter({'a': 3, 'b': 1}) -> 'a (3 runs), b (1 run)'."""
    return ", ".join(f"{value} ({n} run{'s' * (n != 1)})" for value, n in counts.most_common())


def _cell_name(cell: Mapping[str, Any], labels: Mapping[str, str]) -> str:
    return ",".join(f"{labels.get(k, k)}={format_value(v)}" for k, v in cell.items()) or "(all runs)"


# ----------------------------------------------------------------------------------------------
# Writing


def write_report(df: pd.DataFrame, out_dir: str | Path, baseline: Mapping[str, Any] | None = None,
                 rows: Sequence[str] | None = None, metrics: Sequence[str] | None = None,
                 headline: Sequence[str] | None = None, expected: Iterable[Mapping[str, Any]] | None = None,
                 decimals: int = 2) -> Report:
    """Write summary.csv, comparison.csv, report.md and <metric>.png charts into `out_dir`.

    Headline metrics (tables in report.md and charts) default to the retrieval and QA metrics present,
    else every metric. Returns the written files, the flags and the summary frame.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    factors = factor_columns(df)
    labels = df.attrs.get("labels", {})
    rows = [_column(r, factors, labels) for r in (factors if rows is None else rows)]
    summary = summarize(df, rows, baseline, metrics)
    flags = find_flags(df, rows, expected)
    present = _metric_order(summary["metric"].unique()) if not summary.empty else []
    headline = [m for m in (headline or HEADLINE) if m in present] or present

    files = [out_dir / "summary.csv", out_dir / "comparison.csv", out_dir / "report.md"]
    summary.to_csv(files[0], index=False)
    _comparison(summary, rows, present).to_csv(files[1], index=False)
    files[2].write_text(_markdown(df, summary, rows, headline, flags, baseline, labels, decimals))
    for metric in headline:
        files.append(_bar_chart(summary[summary["metric"] == metric], rows, metric, labels, out_dir))
    return Report(files=files, flags=flags, summary=summary)


def _comparison(summary: pd.DataFrame, rows: list[str], metrics: list[str]) -> pd.DataFrame:
    """One row per cell; columns '<metric> <stat>' for stat in STATS (flat, so the CSV reads back)."""
    table: dict[tuple, dict[str, Any]] = {}
    for record in summary.to_dict("records"):
        cell = tuple(record[r] for r in rows)
        entry = table.setdefault(cell, dict(zip(rows, cell)))
        entry.update({f"{record['metric']} {stat}": record[stat] for stat in STATS})
    columns = rows + [f"{m} {s}" for m in metrics for s in STATS]
    return pd.DataFrame(list(table.values()), columns=columns)


def _fmt(value: float, decimals: int, signed: bool = False) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    return f"{value:+.{decimals}f}" if signed else f"{value:.{decimals}f}"


def _markdown(df: pd.DataFrame, summary: pd.DataFrame, rows: list[str], headline: list[str], flags: list[Flag],
              baseline: Mapping[str, Any] | None, labels: Mapping[str, str], decimals: int) -> str:
    runs = df.drop_duplicates("run_id")
    grids = sorted({g for g in runs["grid"] if isinstance(g, str)})
    states = Counter(runs["state"])
    lines = [f"# Ablation report{': ' + ', '.join(grids) if grids else ''}", "",
             f"{len(runs)} runs ({', '.join(f'{s} {n}' for s, n in sorted(states.items()))}).",
             "Cells show mean ± s.e. (n) over seeds; s.e. = sample std (ddof=1) / √n."]
    if baseline:
        lines.append(f"Δ = mean of per-seed differences against the baseline cell "
                     f"{_cell_name(dict(baseline), labels)}, "
                     "paired by seed (unpaired seeds dropped), ± s.e. of those differences (n pairs).")
    for metric in headline:
        part = summary[summary["metric"] == metric]
        chance = part["chance"].dropna()
        title = f"## {metric}" + (f" (chance {_fmt(chance.mean(), decimals)})" if len(chance) else "")
        header = [labels.get(r, r) for r in rows] + ["mean ± s.e. (n)"]
        header += ["Δ vs baseline (n pairs)"] if baseline else []
        lines += ["", title, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for record in part.to_dict("records"):
            cells = [format_value(record[r]) + (" (baseline)" if record["is_baseline"] and i == 0 else "")
                     for i, r in enumerate(rows)]
            cells.append(f"{_fmt(record['mean'], decimals)} ± {_fmt(record['se'], decimals)} ({record['n']})")
            if baseline:
                cells.append(f"{_fmt(record['delta'], decimals, signed=True)} ± {_fmt(record['delta_se'], decimals)}"
                             f" ({record['n_pairs']})" if record["n_pairs"] else "n/a")
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Flags", ""]
    lines += [f"- **{flag.kind}**: {flag.message}" for flag in flags] or ["- none"]
    return "\n".join(lines) + "\n"


def _bar_chart(part: pd.DataFrame, rows: list[str], metric: str, labels: Mapping[str, str], out_dir: Path) -> Path:
    # The object API with an explicit Agg canvas: no pyplot global state, no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = [",".join(format_value(record[r]) for r in rows) or "all" for record in part.to_dict("records")]
    means = part["mean"].tolist()
    errors = [0.0 if math.isnan(se) else se for se in part["se"]]
    colours = ["tab:gray" if b else "tab:blue" for b in part["is_baseline"]]
    figure = Figure(figsize=(max(4.0, 0.8 * len(names) + 2), 3.5))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    bars = axes.bar(range(len(names)), means, yerr=errors, capsize=4, color=colours)
    axes.bar_label(bars, labels=[f"n={n}" for n in part["n"]], label_type="center", color="white", fontsize=8)
    axes.set_xticks(range(len(names)), names, rotation=30, ha="right")
    axes.set_xlabel(", ".join(labels.get(r, r) for r in rows))
    axes.set_ylabel(metric)
    axes.set_title(f"{metric}: mean ± s.e. over seeds (grey: baseline)")
    chance = part["chance"].dropna()
    if len(chance):
        axes.axhline(chance.mean(), color="tab:red", linestyle="--", linewidth=1, label="chance")
        axes.legend(loc="best")
    figure.tight_layout()
    path = out_dir / f"{safe_name(metric.replace('/', '_'))}.png"  # retrieval/R@1 -> retrieval_R@1.png
    figure.savefig(path, dpi=100)
    return path


# ----------------------------------------------------------------------------------------------
# Entry point


def report_main(runs: Sequence[str | Path], out_dir: str | Path, baseline: Mapping[str, Any] | None = None,
                rows: Sequence[str] | None = None, metrics: Sequence[str] | None = None,
                grid: str | Path | None = None) -> list[Path]:
    """Load `runs`, write the report into `out_dir`, return the written files.

    Without `baseline`, the baseline declared by the grid (run.json "baseline", written by the
    runner) is used when the runs agree on one; runs that declare different baselines are an error,
    and runs that declare none get no Δ. `grid` (a grid YAML) adds its cells to the expected ones,
    so cells that never started are flagged missing too.
    """
    df = load_runs(runs)
    if df.empty:
        raise ValueError(f"no run directories under {', '.join(str(r) for r in runs)}")
    if baseline is None:
        declared = {json.dumps(b, sort_keys=True): b for b in df.attrs.get("baselines", [])}
        if len(declared) > 1:
            raise ValueError(f"the runs declare different baselines ({', '.join(declared)}); pass one explicitly")
        baseline = next(iter(declared.values()), None)
    expected = [run.factors for run in load_grid(grid).runs] if grid is not None else None
    return write_report(df, out_dir, baseline, rows=rows, metrics=metrics, expected=expected).files


__all__ = ["Flag", "Report", "load_runs", "render_factor", "factor_columns", "summarize", "find_flags", "write_report",
           "report_main"]
