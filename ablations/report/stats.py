"""Statistics over seeds: per-cell summaries, paired Δ against a baseline cell, bootstrap and IQM.

The unit of replication is a seed. Runs of one cell that share a seed (and the values of any factor
pooled out of the rows) are averaged into one unit first, so a seed run twice (two code versions,
a rerun) counts once: n is the number of distinct seeds (seed x pooled-factor combinations when a
factor is pooled). Per cell and metric, over its units:
    mean, std (ddof=1), se = std / sqrt(n), ci95 = mean -/+ t(0.975, n-1) * se   (NaN spread when n = 1)
Δ against the baseline cell (same row factors except the baseline's) pairs units by key:
    delta = mean of the per-unit differences, delta_std/delta_se/delta_ci95 as above on them,
    p_signflip = two-sided paired sign-flip permutation p-value of the mean difference: exact over
    all 2^n sign patterns for n <= 12 pairs, else a Monte-Carlo estimate (fixed seed, p_method says);
    n_pairs = units in both cells; only_in_cell / only_in_baseline list the units that are not.
With `bootstrap` > 0, percentile intervals from resampling units within the cell (pairs for Δ),
and `interquartile_means` gives rliable's IQM across headline metrics with a stratified bootstrap.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps

from ablations.report.load import (cell_name, cell_of, cell_value, factor_columns, format_unit, metric_order, natural,
                                   render_factor, resolve_rows)

EXACT_MAX_PAIRS = 12  # 2^12 = 4096 sign patterns: exact enumeration is instant up to here
MC_DRAWS = 100_000  # Monte-Carlo sign patterns beyond EXACT_MAX_PAIRS: p's standard error <= 0.0016
BOOT_SEED = 0
LEVEL = 0.95

Units = dict[tuple, float]  # pairing key (seed, *pooled factor values) -> mean over that key's runs


def cell_units(df: pd.DataFrame, rows: Sequence[str], metrics: Sequence[str] | None = None
               ) -> tuple[dict[tuple[tuple, str], Units], dict[tuple[tuple, str], float], list[str]]:
    """Done runs' values as units: {(cell, metric): {key: mean of the runs with that key}}.

    Also returns the mean chance level per (cell, metric) and the pooled factors (those not in
    `rows`), whose values join the seed in the key.
    """
    pool = [f for f in factor_columns(df) if f not in rows]
    done = df[(df["state"] == "done") & df["metric"].notna() & df["value"].notna()]
    if metrics is not None:
        done = done[done["metric"].isin(list(metrics))]
    values: dict[tuple[tuple, str], dict[tuple, list[float]]] = {}
    chances: dict[tuple[tuple, str], list[float]] = {}
    for record in done.to_dict("records"):
        key = (cell_of(record, rows), record["metric"])
        unit = (cell_value(record["seed"]),) + tuple(cell_value(record[p]) for p in pool)
        values.setdefault(key, {}).setdefault(unit, []).append(record["value"])
        if not math.isnan(record["chance"]):
            chances.setdefault(key, []).append(record["chance"])
    units = {key: {u: float(np.mean(v)) for u, v in by_unit.items()} for key, by_unit in values.items()}
    return units, {k: float(np.mean(v)) for k, v in chances.items()}, pool


def describe(values: Sequence[float]) -> dict[str, float]:
    """n, mean, std (ddof=1), se and the 95 % t-interval of the mean; spread is NaN when n < 2."""
    data = np.asarray(values, dtype=float)
    n = len(data)
    mean = float(data.mean()) if n else math.nan
    std = float(data.std(ddof=1)) if n > 1 else math.nan
    se = std / math.sqrt(n) if n > 1 else math.nan
    half = float(sps.t.ppf(0.5 + LEVEL / 2, n - 1)) * se if n > 1 else math.nan
    return {"n": n, "mean": mean, "std": std, "se": se, "ci95_low": mean - half, "ci95_high": mean + half}


def sign_flip_p(diffs: Sequence[float], seed: int = BOOT_SEED) -> tuple[float, str]:
    """Two-sided paired sign-flip p-value of mean(diffs): the share of sign patterns whose |mean|
    reaches the observed one. Exact (all 2^n patterns) for n <= 12, else Monte-Carlo."""
    d = np.asarray(diffs, dtype=float)
    n = len(d)
    if n == 0:
        return math.nan, ""
    observed = abs(d.mean())
    slack = abs(observed) * 100 * np.finfo(float).eps  # ties that differ only by rounding count as ties
    if n <= EXACT_MAX_PAIRS:
        patterns = 1 - 2 * ((np.arange(2 ** n)[:, None] >> np.arange(n)) & 1)  # every +-1 vector
        null = np.abs((patterns * d).mean(axis=1))
        return float(np.mean(null >= observed - slack)), "exact"
    rng = np.random.default_rng(seed)
    patterns = rng.choice(np.array([-1.0, 1.0]), size=(MC_DRAWS, n))
    hits = int(np.sum(np.abs((patterns * d).mean(axis=1)) >= observed - slack))
    # (hits + 1) / (draws + 1): the observed pattern is one of the possible ones, so p is never 0
    return (hits + 1) / (MC_DRAWS + 1), f"monte-carlo ({MC_DRAWS} sign patterns, seed {seed})"


def bootstrap_ci(values: Sequence[float], draws: int, rng: np.random.Generator) -> tuple[float, float]:
    """95 % percentile interval of the mean from `draws` resamples with replacement; NaN when n < 2."""
    data = np.asarray(values, dtype=float)
    if len(data) < 2 or draws <= 0:
        return math.nan, math.nan
    means = data[rng.integers(0, len(data), size=(draws, len(data)))].mean(axis=1)
    low, high = np.percentile(means, [50 * (1 - LEVEL), 50 * (1 + LEVEL)])
    return float(low), float(high)


def stream(seed: int, *parts: Any) -> np.random.Generator:
    """A generator of its own per cell and metric, so adding a cell leaves the others' draws alone."""
    return np.random.default_rng([seed, zlib.crc32(repr(parts).encode())])


def summarize(df: pd.DataFrame, rows: Sequence[str] | None = None, baseline: Mapping[str, Any] | None = None,
              metrics: Sequence[str] | None = None, bootstrap: int = 0, seed: int = BOOT_SEED) -> pd.DataFrame:
    """One row per cell and metric: the statistics of the module docstring, baseline cells first.

    `rows` are the factors that define a cell (default: every factor, keys or labels); factors left
    out are pooled and join the pairing key. `baseline` maps row factors to values (raw like [] or
    rendered like "none"); a baseline that matches no run's cell is a ValueError listing the cells.
    """
    labels = df.attrs.get("labels", {})
    rows = resolve_rows(df, rows)
    base = {resolve_rows(df, [k])[0]: render_factor(v) for k, v in (baseline or {}).items()}
    for key in base:
        if key not in rows:
            raise ValueError(f"baseline factor '{key}' is not a row of the report (rows: {', '.join(rows)})")
    if base:
        check_baseline(df, rows, base)
    units, chances, pool = cell_units(df, rows, metrics)
    out = []
    for (cell, metric), by_unit in units.items():
        entry: dict[str, Any] = {**dict(zip(rows, cell)), "metric": metric, **describe(list(by_unit.values())),
                                 "chance": chances.get((cell, metric), math.nan),
                                 "is_baseline": bool(base) and all(cell[rows.index(k)] == v for k, v in base.items())}
        reference = tuple(base.get(r, c) for r, c in zip(rows, cell))
        ref_units = units.get((reference, metric), {}) if base else {}
        shared = [u for u in by_unit if u in ref_units]
        diffs = [by_unit[u] - ref_units[u] for u in shared]
        paired = describe(diffs)
        p, method = sign_flip_p(diffs, seed)
        entry.update(delta=paired["mean"], delta_std=paired["std"], delta_se=paired["se"],
                     delta_ci95_low=paired["ci95_low"], delta_ci95_high=paired["ci95_high"],
                     p_signflip=p, p_method=method, n_pairs=len(shared),
                     only_in_cell=_units_text([u for u in by_unit if u not in ref_units] if ref_units else [],
                                              pool, labels),
                     only_in_baseline=_units_text([u for u in ref_units if u not in by_unit], pool, labels))
        if bootstrap > 0:
            entry["mean_boot95_low"], entry["mean_boot95_high"] = bootstrap_ci(
                list(by_unit.values()), bootstrap, stream(seed, "mean", cell, metric))
            entry["delta_boot95_low"], entry["delta_boot95_high"] = bootstrap_ci(
                diffs, bootstrap, stream(seed, "delta", cell, metric))
        out.append(entry)
    columns = rows + ["metric", "n", "mean", "std", "se", "ci95_low", "ci95_high", "chance", "is_baseline", "delta",
                      "delta_std", "delta_se", "delta_ci95_low", "delta_ci95_high", "p_signflip", "p_method",
                      "n_pairs", "only_in_cell", "only_in_baseline"]
    if bootstrap > 0:
        columns += ["mean_boot95_low", "mean_boot95_high", "delta_boot95_low", "delta_boot95_high"]
    table = pd.DataFrame(out, columns=columns)
    if table.empty:
        return table
    rank = {m: i for i, m in enumerate(metric_order(table["metric"].unique()))}
    order = sorted(range(len(table)), key=lambda i: (not table["is_baseline"].iat[i],
                                                      tuple(natural(table[r].iat[i]) for r in rows),
                                                      rank[table["metric"].iat[i]]))
    return table.iloc[order].reset_index(drop=True)


def check_baseline(df: pd.DataFrame, rows: Sequence[str], base: Mapping[str, Any]) -> None:
    """ValueError unless some run (any state) lies in a cell with the baseline's values."""
    if matches_baseline(df, rows, base):
        return
    labels = df.attrs.get("labels", {})
    cells = _cells(df, rows)
    names = "; ".join(cell_name(dict(zip(rows, c)), labels) for c in cells) or "none"
    raise ValueError(f"baseline {cell_name(dict(base), labels)} matches no cell of these runs (cells: {names})")


def matches_baseline(df: pd.DataFrame, rows: Sequence[str], base: Mapping[str, Any]) -> bool:
    """Whether some run (any state) lies in a cell with the baseline's (rendered) row-factor values."""
    return any(all(cell[rows.index(k)] == v for k, v in base.items()) for cell in _cells(df, rows))


def _cells(df: pd.DataFrame, rows: Sequence[str]) -> list[tuple]:
    return sorted({cell_of(r, rows) for r in df.drop_duplicates("run_id").to_dict("records")},
                  key=lambda c: tuple(natural(v) for v in c))


def interquartile_means(df: pd.DataFrame, rows: Sequence[str], metrics: Sequence[str], draws: int,
                        seed: int = BOOT_SEED) -> pd.DataFrame:
    """Per cell: the interquartile mean (25 % trimmed) of its units' scores pooled over `metrics`,
    with a 95 % stratified-bootstrap percentile interval (units resampled within each metric, as
    rliable does with runs within each task). Metrics should share a scale (the headline metrics
    are all percentages)."""
    rows = resolve_rows(df, rows)
    units, _, _ = cell_units(df, rows, metrics)
    out = []
    for cell in sorted({c for c, _ in units}, key=lambda c: tuple(natural(v) for v in c)):
        present = [m for m in metrics if (cell, m) in units]
        scores = [np.array(list(units[(cell, m)].values())) for m in present]
        pooled = np.concatenate(scores)
        low = high = math.nan
        if draws > 0 and all(len(s) > 1 for s in scores):
            rng = stream(seed, "iqm", cell)
            samples = np.concatenate([s[rng.integers(0, len(s), size=(draws, len(s)))] for s in scores], axis=1)
            low, high = np.percentile(sps.trim_mean(samples, 0.25, axis=1), [50 * (1 - LEVEL), 50 * (1 + LEVEL)])
        out.append({**dict(zip(rows, cell)), "metrics": "+".join(present), "n_scores": len(pooled),
                    "iqm": float(sps.trim_mean(pooled, 0.25)), "iqm_boot95_low": float(low),
                    "iqm_boot95_high": float(high)})
    return pd.DataFrame(out, columns=rows + ["metrics", "n_scores", "iqm", "iqm_boot95_low", "iqm_boot95_high"])


def _units_text(units: Sequence[tuple], pool: Sequence[str], labels: Mapping[str, str]) -> str:
    """'seed 3', 'seeds 1, 2', or with pooled factors 'seed 1 at ratio=0.3, seed 2 at ratio=0.3'."""
    ordered = sorted(units, key=lambda u: tuple(map(natural, u)))
    if not pool and len(ordered) > 1:
        return "seeds " + ", ".join(format_unit(u, pool, labels).removeprefix("seed ") for u in ordered)
    return ", ".join(format_unit(u, pool, labels) for u in ordered)
