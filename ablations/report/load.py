"""Read run directories into one long frame, and the small helpers that name cells and columns.

A run directory holds some of run.json (who the run is, written by the runner), status.json (its
state), config.yaml (the resolved config), final.json (metrics, targets, code and software
versions) and failure.json (why it failed). `load_runs` turns any set of them into one row per
(run, metric); the other report modules only read that frame.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from ablations.grid import SEED_KEY, format_value
from ablations.metrics import HEADLINE
from ablations.rundir import find_run_dirs

RUN_FILES = ("run.json", "status.json", "final.json", "failure.json")
CONFIG_FILE = "config.yaml"
# Columns of `load_runs` that are not factors; every other column is a factor (an axis of the grid).
INFO_COLUMNS = ("run_id", "alias", "grid", "grid_hash", "state", "failure", "message", "code_version", "software",
                "seed", "random_teacher", "teachers", "config", "world_size", "frames", "cell_seeds", "path", "metric", "value",
                "chance")


def load_runs(paths: Iterable[str | Path]) -> pd.DataFrame:
    """Read run directories into a long frame, one row per (run, metric).

    Each path is a run directory (holding run.json, status.json, final.json or failure.json) or a
    root with run directories up to two levels below it (`ablations.rundir.find_run_dirs`, as `ablate
    status` finds them); other folders are skipped. The state comes from the
    runner's status.json; a run made by `ablate train` alone has none, and reads as done (final.json),
    failed (the trainer's failure.json: class, message) or pending. A run without final.json metrics
    (pending, failed) still gets one row, with metric and value missing, so that its state and
    failure reach the flags. List factor values are rendered for grouping ('+'-joined, [] -> 'none');
    numbers, strings and booleans keep their type.
    JSON text columns: `software` (final.json "software"), `teachers` (target ref -> teacher weights,
    from final.json "targets"), `config` (config.yaml), `frames` (final.json "frames", the cache's
    frame codec/compression when the trainer records it), `cell_seeds` (run.json "cell_seeds": the seeds
    the grid plans for the run's cell, after its exclusions).
    The runs' declared baselines and labels (run.json "baseline"/"labels") are kept in
    `df.attrs["baselines"]` and `df.attrs["labels"]`.
    """
    rows: list[dict[str, Any]] = []
    factor_order: list[str] = []
    baselines: list[dict[str, Any]] = []
    labels: dict[str, str] = {}
    for run_dir in find_run_dirs(paths, resolve=True):
        run, status, final, failure = (_read_json(run_dir / name) for name in RUN_FILES)
        factors = {k: v for k, v in (run.get("factors") or {}).items() if k != SEED_KEY}
        factor_order += [k for k in factors if k not in factor_order]
        if run.get("baseline"):
            baselines.append(run["baseline"])
        labels.update(run.get("labels") or {})
        seed = final.get("seed", (run.get("factors") or {}).get(SEED_KEY))
        targets = [t for t in final.get("targets") or [] if isinstance(t, dict)]
        config = _read_yaml(run_dir / CONFIG_FILE)
        info = {
            "run_id": run.get("run_id", run_dir.name), "alias": run.get("alias", run_dir.name),
            "grid": run.get("grid"), "grid_hash": run.get("grid_hash"),
            "state": status.get("state", "done" if final else "failed" if failure else "pending"),
            "failure": status.get("failure", failure.get("class")),
            "message": status.get("message", failure.get("message", "")),
            "code_version": final.get("code_version", run.get("code_version")),
            "software": _json_text(final.get("software")),
            "seed": seed, "random_teacher": any(t.get("teacher_weights") == "random" for t in targets),
            "teachers": _json_text({str(t.get("ref", t.get("target_id", "?"))): t.get("teacher_weights") or ""
                                    for t in targets}),
            "config": _json_text(config), "world_size": final.get("world_size"),
            "frames": _json_text(final.get("frames")),
            "cell_seeds": _json_text(run.get("cell_seeds")),
            "path": str(run_dir),
            **{k: render_factor(v) for k, v in factors.items()},
        }
        metrics = {k: v for k, v in (final.get("metrics") or {}).items() if is_number(v)}
        chance = final.get("chance") or {}
        if not metrics:
            rows.append({**info, "metric": None, "value": math.nan, "chance": math.nan})
        for metric, value in metrics.items():
            level = chance.get(metric)
            rows.append({**info, "metric": metric, "value": float(value),
                         "chance": float(level) if is_number(level) else math.nan})
    tail = ("metric", "value", "chance")
    columns = [c for c in INFO_COLUMNS if c not in tail] + factor_order + list(tail)
    frame = pd.DataFrame(rows, columns=columns)
    frame.attrs["baselines"] = baselines
    frame.attrs["labels"] = labels
    return frame


def _read_json(path: Path) -> dict[str, Any]:
    # A file being rewritten by a live run may be momentarily unreadable; the report treats it as
    # absent (the run then reads as pending) rather than failing on one run of hundreds.
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _read_yaml(path: Path) -> dict[str, Any] | None:
    try:
        data = yaml.safe_load(path.read_text())
    except (FileNotFoundError, yaml.YAMLError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _json_text(value: Any) -> str | None:
    # Mappings travel as sorted JSON text: hashable, comparable, and safe in a pandas column.
    return json.dumps(value, sort_keys=True) if value else None


def parse_json(text: Any) -> Any:
    """The value of a JSON text column (`software`, `teachers`, `config`, `frames`); None when empty."""
    return json.loads(text) if isinstance(text, str) and text else None


def config_value(config: Mapping[str, Any] | None, dotted: str, default: Any = None) -> Any:
    """`config["a"]["b"]` for dotted "a.b", or `default` when a level is absent (fields added
    after a run was made, e.g. mask.video_without_mvm, read as their default)."""
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return node


def render_factor(value: Any) -> Any:
    """A factor value as it appears in the frame: lists/mappings/None as text, scalars unchanged."""
    return format_value(value) if isinstance(value, (list, tuple, Mapping)) or value is None else value


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def factor_columns(df: pd.DataFrame) -> list[str]:
    """The factor (axis) columns of a `load_runs` frame, in order; the seed is not one of them."""
    return [c for c in df.columns if c not in INFO_COLUMNS]


def resolve_rows(df: pd.DataFrame, rows: Sequence[str] | None) -> list[str]:
    """The factor columns named by `rows` (factor keys or their labels); None means every factor."""
    factors = factor_columns(df)
    labels = df.attrs.get("labels", {})
    return [column_of(r, factors, labels) for r in (factors if rows is None else rows)]


def column_of(key: str, factors: Sequence[str], labels: Mapping[str, str]) -> str:
    if key in factors:
        return key
    by_label = {label: k for k, label in labels.items()}
    if key in by_label and by_label[key] in factors:
        return by_label[key]
    raise ValueError(f"'{key}' is not a factor of these runs (factors: {', '.join(factors) or 'none'})")


def cell_value(value: Any) -> Any:
    # NaN != NaN would split one missing-factor cell into many; use None as the missing marker.
    return None if isinstance(value, float) and math.isnan(value) else value


def cell_of(record: Mapping[str, Any], rows: Sequence[str]) -> tuple:
    """The cell (tuple of row-factor values) a run's record belongs to."""
    return tuple(cell_value(record.get(r)) for r in rows)


def cell_name(cell: Mapping[str, Any], labels: Mapping[str, str]) -> str:
    """'target=hog,mask.ratio=0.3': the row factors of a cell, named by their labels."""
    return ",".join(f"{labels.get(k, k)}={format_value(v)}" for k, v in cell.items()) or "(all runs)"


def format_unit(unit: tuple, pool: Sequence[str], labels: Mapping[str, str]) -> str:
    """A pairing key (seed, *pooled factor values) as text: 'seed 3' or 'seed 3 at ratio=0.3'."""
    text = f"seed {format_value(unit[0])}"
    return text + (f" at {cell_name(dict(zip(pool, unit[1:])), labels)}" if pool else "")


def natural(value: Any) -> tuple:
    """Sort key: numbers (also written as text: "9" before "10"), then text, then missing."""
    if value is None:
        return (2, "")
    if is_number(value):
        return (0, float(value), "")
    try:
        return (0, float(str(value)), str(value))
    except ValueError:
        return (1, 0.0, str(value))


def metric_order(metrics: Iterable[str]) -> list[str]:
    """Headline metrics first, in their fixed order, then the rest alphabetically."""
    metrics = list(metrics)
    return [m for m in HEADLINE if m in metrics] + sorted(m for m in metrics if m not in HEADLINE)
