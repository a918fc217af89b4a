"""Write a report: summary.csv, comparison.csv, (iqm.csv), report.md and one chart per headline metric."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ablations.grid import format_value, safe_name
from ablations.report.flags import Flag, find_flags, unpaired_flags
from ablations.report.load import HEADLINE, cell_name, metric_order, resolve_rows
from ablations.report.protocol import ProtocolCard, build_card, card_markdown
from ablations.report.stats import EXACT_MAX_PAIRS, MC_DRAWS, interquartile_means, summarize

# Per-cell columns of comparison.csv ('<metric> <stat>'); ci95 columns are interval ends, se is not one.
STATS = ("n", "mean", "std", "se", "ci95_low", "ci95_high", "delta", "delta_se", "delta_ci95_low", "delta_ci95_high",
         "p_signflip", "n_pairs")
BOOT_STATS = ("mean_boot95_low", "mean_boot95_high", "delta_boot95_low", "delta_boot95_high")


@dataclass(frozen=True)
class Report:
    files: list[Path]
    flags: list[Flag]
    summary: pd.DataFrame = field(compare=False)
    card: ProtocolCard | None = field(default=None, compare=False)


def write_report(df: pd.DataFrame, out_dir: str | Path, baseline: Mapping[str, Any] | None = None,
                 rows: Sequence[str] | None = None, metrics: Sequence[str] | None = None,
                 headline: Sequence[str] | None = None, expected: Iterable[Mapping[str, Any]] | None = None,
                 decimals: int = 2, bootstrap: int = 0, extra_flags: Sequence[Flag] = (),
                 cache: Mapping[str, Any] | None = None) -> Report:
    """Write summary.csv, comparison.csv, report.md and <metric>.png charts into `out_dir`
    (plus iqm.csv with `bootstrap` > 0 draws). `cache` is the grid file's cache section, when known.

    Headline metrics (tables in report.md, charts, IQM) default to the retrieval and QA metrics
    present, else every metric. Returns the written files, the flags, the summary and the card.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    labels = df.attrs.get("labels", {})
    rows = resolve_rows(df, rows)
    # baseline keys may be labels ("target"); everything below reads factor keys ("mvm.targets")
    baseline = {resolve_rows(df, [k])[0]: v for k, v in baseline.items()} if baseline else None
    summary = summarize(df, rows, baseline, metrics, bootstrap=bootstrap)
    flags = list(extra_flags) + find_flags(df, rows, expected) + unpaired_flags(summary, rows, baseline, labels)
    present = metric_order(summary["metric"].unique()) if not summary.empty else []
    headline = [m for m in (headline or HEADLINE) if m in present] or present
    card = build_card(df, rows, baseline, cache)
    iqm = interquartile_means(df, rows, headline, bootstrap) if bootstrap > 0 and headline else None

    files = [out_dir / "summary.csv", out_dir / "comparison.csv", out_dir / "report.md"]
    summary.to_csv(files[0], index=False)
    stats = STATS + (BOOT_STATS if bootstrap > 0 else ())
    _comparison(summary, rows, present, stats).to_csv(files[1], index=False)
    if iqm is not None:
        files.append(out_dir / "iqm.csv")
        iqm.to_csv(files[-1], index=False)
    charts = [_bar_chart(summary[summary["metric"] == m], rows, m, labels, out_dir) for m in headline]
    files[2].write_text(_markdown(df, summary, rows, headline, flags, baseline, labels, decimals, card, iqm,
                                  bootstrap, [c.name for c in charts]))
    return Report(files=files + charts, flags=flags, summary=summary, card=card)


def _comparison(summary: pd.DataFrame, rows: list[str], metrics: list[str], stats: Sequence[str]) -> pd.DataFrame:
    """One row per cell; columns '<metric> <stat>' (flat, so the CSV reads back)."""
    table: dict[tuple, dict[str, Any]] = {}
    for record in summary.to_dict("records"):
        cell = tuple(record[r] for r in rows)
        entry = table.setdefault(cell, dict(zip(rows, cell)))
        entry.update({f"{record['metric']} {stat}": record[stat] for stat in stats})
    return pd.DataFrame(list(table.values()), columns=rows + [f"{m} {s}" for m in metrics for s in stats])


def _fmt(value: Any, decimals: int, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:+.{decimals}f}" if signed else f"{value:.{decimals}f}"


def _interval(low: float, high: float, decimals: int, signed: bool = False) -> str:
    if math.isnan(low) or math.isnan(high):
        return "n/a"
    return f"[{_fmt(low, decimals, signed)}, {_fmt(high, decimals, signed)}]"


def _p(value: float, method: str) -> str:
    if math.isnan(value):
        return "n/a"
    return f"{value:.3f}" + ("" if method == "exact" else " (MC)")


def _markdown(df: pd.DataFrame, summary: pd.DataFrame, rows: list[str], headline: list[str], flags: list[Flag],
              baseline: Mapping[str, Any] | None, labels: Mapping[str, str], decimals: int, card: ProtocolCard,
              iqm: pd.DataFrame | None, bootstrap: int, charts: list[str]) -> str:
    runs = df.drop_duplicates("run_id")
    grids = sorted({g for g in runs["grid"] if isinstance(g, str)})
    states = Counter(runs["state"])
    lines = [f"# Ablation report{': ' + ', '.join(grids) if grids else ''}", "",
             f"{len(runs)} runs ({', '.join(f'{s} {n}' for s, n in sorted(states.items()))}).", ""]
    lines += card_markdown(card)
    lines += ["## How to read the tables", "",
              "Runs of one seed in a cell are averaged first; *seeds* counts distinct seeds. *mean* is over seeds, "
              "*sd* their sample standard deviation (ddof=1), *s.e.* = sd / √seeds (a spread, not an interval), "
              "*95 % CI (t)* = mean ∓ t(0.975, seeds − 1) × s.e. (none with one seed)."]
    if baseline:
        base_name = cell_name(dict(baseline), labels)
        lines.append(f"*Δ* = mean of per-seed differences against the baseline cell {base_name}, "
                     "paired by seed; *pairs* counts seeds in both cells (the others are left out of Δ and flagged). "
                     "*Δ 95 % CI (t)* is the paired-t interval; *p (sign-flip)* the two-sided paired sign-flip "
                     f"permutation p-value, exact over all 2^pairs sign patterns up to {EXACT_MAX_PAIRS} pairs, "
                     f"else a Monte-Carlo estimate from {MC_DRAWS} patterns with a fixed seed (marked MC).")
    if bootstrap:
        lines.append(f"*bootstrap* intervals: 95 % percentile intervals from {bootstrap} resamples of seeds within "
                     "the cell (of pairs for Δ), fixed seed; with fewer than about 10 seeds they are too narrow "
                     "(they never reach beyond the values seen), so prefer the t-intervals.")
    for metric, chart in zip(headline, charts):
        part = summary[summary["metric"] == metric]
        chance = part["chance"].dropna()
        title = f"## {metric}" + (f" (chance {_fmt(chance.mean(), decimals)})" if len(chance) else "")
        header = [labels.get(r, r) for r in rows] + ["seeds", "mean", "95 % CI (t)", "sd", "s.e."]
        header += ["95 % CI (bootstrap)"] if bootstrap else []
        header += ["Δ vs baseline", "Δ 95 % CI (t)"] + (["Δ 95 % CI (bootstrap)"] if bootstrap else []) \
            + ["p (sign-flip)", "pairs"] if baseline else []
        lines += ["", title, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for r in part.to_dict("records"):
            cells = [format_value(r[c]) + (" (baseline)" if r["is_baseline"] and i == 0 else "")
                     for i, c in enumerate(rows)]
            cells += [str(r["n"]), _fmt(r["mean"], decimals), _interval(r["ci95_low"], r["ci95_high"], decimals),
                      _fmt(r["std"], decimals), _fmt(r["se"], decimals)]
            cells += [_interval(r["mean_boot95_low"], r["mean_boot95_high"], decimals)] if bootstrap else []
            if baseline and r["is_baseline"]:
                cells += ["—"] * (len(header) - len(cells))
            elif baseline:
                cells += [_fmt(r["delta"], decimals, True), _interval(r["delta_ci95_low"], r["delta_ci95_high"],
                                                                      decimals, True)]
                cells += [_interval(r["delta_boot95_low"], r["delta_boot95_high"], decimals, True)] if bootstrap else []
                cells += [_p(r["p_signflip"], r["p_method"]), str(r["n_pairs"])]
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", f"![{metric}]({chart})", "",
                  f"*{metric}: bars are the mean over seeds, whiskers the 95 % t-interval (none with one seed); "
                  "grey bar: baseline.*"]
    if iqm is not None:
        lines += ["", "## Interquartile mean over headline metrics", "",
                  f"IQM = mean of the middle 50 % of the cell's per-seed scores pooled over {', '.join(headline)} "
                  f"(25 % trimmed mean); 95 % stratified-bootstrap interval from {bootstrap} resamples of seeds "
                  "within each metric, fixed seed.", "",
                  "| " + " | ".join([labels.get(r, r) for r in rows] + ["IQM", "95 % CI (bootstrap)", "scores"]) + " |",
                  "|" + "---|" * (len(rows) + 3)]
        for r in iqm.to_dict("records"):
            lines.append("| " + " | ".join([format_value(r[c]) for c in rows] + [
                _fmt(r["iqm"], decimals), _interval(r["iqm_boot95_low"], r["iqm_boot95_high"], decimals),
                str(r["n_scores"])]) + " |")
    lines += ["", "## Flags", ""]
    lines += [f"- **{flag.kind}**: {flag.message}" for flag in flags] or ["- none"]
    return "\n".join(lines) + "\n"


def _bar_chart(part: pd.DataFrame, rows: list[str], metric: str, labels: Mapping[str, str], out_dir: Path) -> Path:
    # The object API with an explicit Agg canvas: no pyplot global state, no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = [(",".join(format_value(record[r]) for r in rows) or "all") + f"\n(n={record['n']})"
             for record in part.to_dict("records")]
    means = part["mean"].tolist()
    # whiskers from the interval ends; a cell with one seed has no interval, and NaN draws no whisker
    lows = [m - lo for m, lo in zip(means, part["ci95_low"])]
    highs = [hi - m for m, hi in zip(means, part["ci95_high"])]
    colours = ["tab:gray" if b else "tab:blue" for b in part["is_baseline"]]
    figure = Figure(figsize=(max(4.0, 0.8 * len(names) + 2), 3.8))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.bar(range(len(names)), means, yerr=[lows, highs], capsize=4, color=colours)
    axes.set_xticks(range(len(names)), names, rotation=30, ha="right")
    axes.set_xlabel(", ".join(labels.get(r, r) for r in rows))
    axes.set_ylabel(metric)
    axes.set_title(f"{metric}: mean over seeds, whiskers 95 % t-interval\n(n = seeds; grey: baseline)", fontsize=10)
    chance = part["chance"].dropna()
    if len(chance):
        axes.axhline(chance.mean(), color="tab:red", linestyle="--", linewidth=1, label="chance")
        axes.legend(loc="best")
    figure.tight_layout()
    path = out_dir / f"{safe_name(metric.replace('/', '_'))}.png"  # retrieval/R@1 -> retrieval_R@1.png
    figure.savefig(path, dpi=100)
    return path
