"""Flags: what a reader must know before trusting the numbers of a report."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from ablations.grid import SEED_KEY
from ablations.report.load import (cell_name, cell_of, cell_value, config_value, natural, parse_json, render_factor,
                                   resolve_rows)

RANDOM_TEACHER_NOTE = "numbers with random teachers are not meaningful"
# Config switches that make a run differ from the paper's protocol in a way its cell name does not
# show: (dotted key, what the runs do, what the paper does). Both default to false when absent.
SETTING_FLAGS = (
    ("mask.video_without_mvm", "mask the video without MVM",
     "the paper's no-MVM baseline trains on clean video"),
    ("data.approximate_flips", "flip cached teacher targets instead of recomputing them on the flipped clip",
     "targets are approximations of the flipped clip's"),
)


@dataclass(frozen=True)
class Flag:
    """Something a reader of the numbers must know: kind is missing_cell, incomplete_cell,
    random_teacher, mixed_code, mixed_software, failed_run, unpaired or one of the config keys of
    SETTING_FLAGS (mask.video_without_mvm, data.approximate_flips)."""

    kind: str
    message: str


def find_flags(df: pd.DataFrame, rows: Sequence[str] | None = None,
               expected: Iterable[Mapping[str, Any]] | None = None) -> list[Flag]:
    """Flags about the runs themselves (Δ pairing is flagged by `unpaired_flags`).

    Expected cells are the cells of every run directory found (any state; the runner writes
    run.json before a run starts), plus `expected` factor assignments (e.g. a grid's runs) when
    given. A cell with no done run is missing; failed and pending runs do not count.
    """
    labels = df.attrs.get("labels", {})
    rows = resolve_rows(df, rows)
    runs = df.drop_duplicates("run_id")
    done = runs[runs["state"] == "done"]
    with_metrics = set(df.loc[df["metric"].notna(), "run_id"])
    flags: list[Flag] = []

    def name_of(record: Mapping[str, Any]) -> str:
        return cell_name(dict(zip(rows, cell_of(record, rows))), labels)

    all_seeds = sorted({s for s in runs["seed"] if cell_value(s) is not None})
    cells: dict[tuple, list[dict[str, Any]]] = {}
    for record in runs.to_dict("records"):
        cells.setdefault(cell_of(record, rows), []).append(record)
    for assignment in expected or []:
        rendered = {k: render_factor(v) for k, v in assignment.items() if k != SEED_KEY}
        if cell_value(assignment.get(SEED_KEY)) is not None and assignment[SEED_KEY] not in all_seeds:
            all_seeds.append(assignment[SEED_KEY])
        cells.setdefault(cell_of(rendered, rows), [])
    for cell, members in sorted(cells.items(), key=lambda item: tuple(natural(v) for v in item[0])):
        name = cell_name(dict(zip(rows, cell)), labels)
        good = [m for m in members if m["state"] == "done" and m["run_id"] in with_metrics]
        if not good:
            states = Counter(m["state"] for m in members)
            why = ", ".join(f"{state}: {count}" for state, count in sorted(states.items())) or "no run directory"
            flags.append(Flag("missing_cell", f"missing cell {name}: no done run ({why})"))
            continue
        seeds = sorted({m["seed"] for m in good})
        wanted = _planned_seeds(members) or all_seeds  # a grid's exclusions leave some cells fewer seeds
        lacking = sorted(s for s in wanted if s not in seeds)
        if lacking:
            flags.append(Flag("incomplete_cell", f"cell {name}: {len(seeds)} of {len(wanted)} seeds done "
                                                 f"(missing seeds {', '.join(str(s) for s in lacking)})"))
    random_cells = Counter(name_of(r) for r in done.to_dict("records") if r["random_teacher"])
    for name, count in random_cells.items():
        runs_text = "1 run uses" if count == 1 else f"{count} runs use"
        flags.append(Flag("random_teacher", f"cell {name}: {runs_text} random-weight teachers; {RANDOM_TEACHER_NOTE}"))
    for key, what, paper in SETTING_FLAGS:
        setting_cells = Counter(name_of(r) for r in done.to_dict("records")
                                if config_value(parse_json(r["config"]), key, False) is True)
        if len(setting_cells) > 1 and sum(setting_cells.values()) == len(done):  # one line when every run sets it
            flags.append(Flag(key, f"all {len(done)} done runs set {key} (they {what}; {paper})"))
            continue
        for name, count in setting_cells.items():
            runs_text = "1 run sets" if count == 1 else f"{count} runs set"
            flags.append(Flag(key, f"cell {name}: {runs_text} {key} (they {what}; {paper})"))
    versions = Counter(v for v in runs["code_version"] if isinstance(v, str) and v)
    if len(versions) > 1:
        flags.append(Flag("mixed_code", f"mixed code versions across runs: {counted(versions)}"))
    mixed = _mixed_software(done["software"])
    if mixed:
        flags.append(Flag("mixed_software", f"done runs were trained with different software: {mixed}"))
    for record in runs[runs["state"] == "failed"].to_dict("records"):
        message = f": {record['message']}" if record.get("message") else ""
        flags.append(Flag("failed_run", f"failed run {record['alias']} ({record['run_id']}): "
                                        f"{record.get('failure') or 'unknown'}{message}"))
    return flags


def _planned_seeds(members: Sequence[Mapping[str, Any]]) -> list[Any]:
    """The seeds the grid planned for a cell, as its runs recorded them (run.json "cell_seeds"); empty
    when no run recorded them (runs written before the field existed)."""
    planned: list[Any] = []
    for member in members:
        text = member.get("cell_seeds")
        for seed in (json.loads(text) if isinstance(text, str) and text else None) or []:
            if seed not in planned:
                planned.append(seed)
    return planned


def unpaired_flags(summary: pd.DataFrame, rows: Sequence[str], baseline: Mapping[str, Any] | None,
                   labels: Mapping[str, str]) -> list[Flag]:
    """Cells whose Δ leaves units out: seeds present in only one of the cell and its baseline cell,
    or no baseline cell at all. One flag per cell and distinct pairing (metrics that agree share it)."""
    if not baseline or summary.empty:
        return []
    base = {k: render_factor(v) for k, v in baseline.items()}
    present = {(tuple(cell_value(r[c]) for c in rows), r["metric"]) for r in summary.to_dict("records")}
    cells_present = {cell for cell, _ in present}
    messages: dict[str, None] = {}
    for record in summary.to_dict("records"):
        if record["is_baseline"]:
            continue
        cell = dict(zip(rows, (cell_value(record[r]) for r in rows)))
        reference = {r: base.get(r, v) for r, v in cell.items()}
        name, ref_name = cell_name(cell, labels), cell_name(reference, labels)
        if (tuple(reference.values()), record["metric"]) not in present:
            if tuple(reference.values()) in cells_present:
                continue  # a metric only this cell has (its own MVM loss): nothing to pair, nothing missing
            messages[f"cell {name}: no done run in its baseline cell {ref_name}, so no Δ"] = None
            continue
        parts = [f"{units} only in {where}" for units, where in ((record["only_in_cell"], name),
                                                                   (record["only_in_baseline"], ref_name)) if units]
        if parts:
            pairs = f"{record['n_pairs']} pair{'s' * (record['n_pairs'] != 1)}"
            messages[f"Δ of {name} against {ref_name} uses {pairs}: {'; '.join(parts)}"] = None
    return [Flag("unpaired", message) for message in messages]


def _mixed_software(records: pd.Series) -> str:
    """'numpy 2.4.6 (6 runs), 2.3.1 (2 runs); torch ...' for each package whose version differs
    between runs (final.json "software"); '' when all agree or nothing was recorded."""
    recorded = [parse_json(r) for r in records if isinstance(r, str) and r]
    parts = []
    for package in sorted({name for software in recorded for name in software}):
        counts = Counter(software.get(package, "absent") for software in recorded)
        if len(counts) > 1:
            parts.append(f"{package} {counted(counts)}")
    return "; ".join(parts)


def counted(counts: Counter) -> str:
    """Counter({'a': 3, 'b': 1}) -> 'a (3 runs), b (1 run)'."""
    return ", ".join(f"{value} ({n} run{'s' * (n != 1)})" for value, n in counts.most_common())
