"""The sections of a grid file (base, axes, zip groups, seeds, labels, exclude rules, baseline),
each checked and parsed on its own; `ablations.grid.expand` puts them together."""

from __future__ import annotations

import copy
import difflib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ablations.identity import IDENTITY_EXCLUDED, format_value, safe_name, value_key
from violet_core.config_parsing import ConfigError, apply_overrides, read_yaml_mapping

SEED_KEY = "seed"


class GridError(ValueError):
    """A grid file that cannot be expanded; the one-line message names the file and the key."""


Fail = Callable[[str, str], GridError]  # (section, message) -> an error naming the grid file
Dimension = tuple[tuple[str, ...], list[tuple[Any, ...]]]  # axis keys, rows of values (a zip group: several keys)


def load_base(spec: Mapping[str, Any], path: Path, fail: Fail) -> dict[str, Any]:
    base: dict[str, Any] = {}
    if spec.get("base_config"):
        config_path = (path.parent / str(spec["base_config"])).resolve()
        if not config_path.exists():
            raise fail("base_config", f"no such file {config_path}")
        try:
            base = read_yaml_mapping(config_path, "base_config", ConfigError)
        except ConfigError as error:
            raise fail("base_config", str(error)) from None
    stated = spec.get("base") or {}
    if not isinstance(stated, Mapping):
        raise fail("base", f"must be a mapping of RunConfig fields, got {stated!r}")
    return merge(base, nest(dict(stated), fail, "base"))


def nest(raw: dict[str, Any], fail: Fail, where: str) -> dict[str, Any]:
    """Dotted keys ('data.size: 64') become nested sections, so both spellings merge alike."""
    nested: dict[str, Any] = {}
    for key, value in raw.items():
        if isinstance(value, Mapping):
            value = nest(dict(value), fail, where)
        try:
            nested = merge(nested, apply_overrides({}, {str(key): value}))
        except ConfigError as error:
            raise fail(where, str(error)) from None
    return nested


def merge(into: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(into)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def check_field(key: str, known: list[str], fail: Fail, section: str) -> None:
    if key in known:
        return
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise fail(section, f"'{key}' is not a RunConfig field{hint}")


def parse_axes(spec: Mapping[str, Any], known: list[str], fail: Fail
                ) -> tuple[list[Dimension], dict[str, list[Any]], list[list[str]]]:
    """Product axes and zip groups as dimensions, the declared values per axis key, and the zip groups."""
    dimensions: list[Dimension] = []
    values: dict[str, list[Any]] = {}

    def add_axis(key: Any, items: Any, section: str, paired: bool = False) -> None:
        key = str(key)
        if key == SEED_KEY:
            raise fail(section, f"'{key}' is the replicate axis; list seeds under 'seeds'")
        check_field(key, known, fail, section)
        if key in IDENTITY_EXCLUDED:
            raise fail(section, f"'{key}' does not change results, so runs differing only in it would share an id")
        if key in values:
            raise fail(section, f"'{key}' is already an axis")
        if not isinstance(items, list) or not items:
            raise fail(section, f"'{key}' needs a non-empty list of values, got {items!r}")
        keys = [value_key(v) for v in items]
        twice = next((v for v, k in zip(items, keys) if keys.count(k) > 1), None)
        if len(set(keys)) != len(keys) and not paired:
            raise fail(section, f"'{key}' lists the value {twice!r} twice")
        # a paired key may repeat a value beside different partners; its levels are listed once
        values[key] = [v for i, v in enumerate(items) if keys.index(keys[i]) == i]

    axes = spec.get("axes") or {}
    if not isinstance(axes, Mapping):
        raise fail("axes", f"must be a mapping of dotted config keys to lists, got {axes!r}")
    for key, items in axes.items():
        add_axis(key, items, "axes")
        dimensions.append(((str(key),), [(v,) for v in items]))

    groups = spec.get("zip") or []
    if not isinstance(groups, list):
        raise fail("zip", f"must be a list of groups, got {groups!r}")
    paired = []
    for index, group in enumerate(groups):
        if not isinstance(group, Mapping) or not group:
            raise fail(f"zip[{index}]", f"a group is a non-empty mapping of axis keys to lists, got {group!r}")
        for key, items in group.items():
            add_axis(key, items, f"zip[{index}]", paired=True)
        lengths = {str(k): len(v) for k, v in group.items()}
        if len(set(lengths.values())) > 1:
            listed = ", ".join(f"{k} has {n}" for k, n in lengths.items())
            raise fail(f"zip[{index}]", f"paired axes need lists of equal length ({listed})")
        keys = tuple(str(k) for k in group)
        rows = list(zip(*group.values()))
        row_keys = [tuple(value_key(v) for v in row) for row in rows]
        if len(set(row_keys)) != len(row_keys):
            twice = next(row for row, k in zip(rows, row_keys) if row_keys.count(k) > 1)
            raise fail(f"zip[{index}]", f"lists the pair {dict(zip(keys, twice))!r} twice")
        dimensions.append((keys, rows))
        paired.append(list(keys))
    return dimensions, values, paired


def parse_seeds(spec: Mapping[str, Any], base: Mapping[str, Any], fail: Fail) -> list[int]:
    seeds = spec.get("seeds", [base.get(SEED_KEY, 0)])
    if not isinstance(seeds, list) or not seeds:
        raise fail("seeds", f"must be a non-empty list of integers, got {seeds!r}")
    for seed in seeds:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise fail("seeds", f"{seed!r} is not an integer")
    if len(set(seeds)) != len(seeds):
        twice = next(s for s in seeds if seeds.count(s) > 1)
        raise fail("seeds", f"lists seed {twice} twice")
    return list(seeds)


def parse_labels(spec: Mapping[str, Any], axes: list[str], fail: Fail) -> dict[str, str]:
    labels = spec.get("labels") or {}
    if not isinstance(labels, Mapping):
        raise fail("labels", f"must map axis keys to short names, got {labels!r}")
    for key, label in labels.items():
        if key not in axes:
            raise fail("labels", f"'{key}' is not an axis (axes: {', '.join(axes)})")
        if not isinstance(label, str) or not label or safe_name(label) != label or label.startswith("."):
            raise fail("labels", f"'{key}': {label!r} is not a non-empty, filesystem-safe name")
    names = list(labels.values()) + [k for k in axes if k not in labels]
    twice = next((n for n in names if names.count(n) > 1), None)
    if twice:
        raise fail("labels", f"the name '{twice}' is used for two axes")
    return {str(k): str(v) for k, v in labels.items()}


def parse_assignments(rules: Any, section: str, values: dict[str, list[Any]], fail: Fail,
                       allow_seed: bool) -> list[dict[str, Any]]:
    """Exclude rules and the baseline: partial assignments whose keys are axes and values in them."""
    if not isinstance(rules, list):
        raise fail(section, f"must be a list of mappings, got {rules!r}")
    parsed = []
    for index, rule in enumerate(rules):
        where = f"{section}[{index}]" if section == "exclude" else section
        if not isinstance(rule, Mapping) or not rule:
            raise fail(where, f"must be a non-empty mapping of axis keys to values, got {rule!r}")
        for key, value in rule.items():
            if key not in values or (key == SEED_KEY and not allow_seed):
                axes = [k for k in values if allow_seed or k != SEED_KEY]
                raise fail(where, f"'{key}' is not an axis of this grid (axes: {', '.join(axes)})")
            if value_key(value) not in {value_key(v) for v in values[key]}:
                raise fail(where, f"'{key}': {value!r} is not a value of the axis {values[key]!r}")
        parsed.append({str(k): v for k, v in rule.items()})
    return parsed


def complete_paired(assignment: dict[str, Any], dimensions: list[Dimension], section: str,
                    fail: Fail) -> dict[str, Any]:
    """`assignment` with the partners of every paired (zip) key it names: naming one key of a zip
    group names the group's row with that value, so the baseline `{mvm.targets: []}` of a group that
    pairs targets with their options is the row of [] and its own options, and a cell is compared to
    the baseline's row rather than to a combination the grid never runs."""
    out = dict(assignment)
    for keys, rows in dimensions:
        named = [k for k in keys if k in assignment]
        if len(keys) < 2 or not named:
            continue
        hits = [row for row in rows if all(value_key(row[keys.index(k)]) == value_key(assignment[k]) for k in named)]
        if len(hits) != 1:
            problem = "is not one of its rows" if not hits else f"matches {len(hits)} of its rows; name the others too"
            raise fail(section, f"{describe_assignment({k: assignment[k] for k in named}, {})} of the paired "
                                f"keys {', '.join(keys)} {problem}")
        out.update({k: v for k, v in zip(keys, hits[0]) if k not in out})
    return out


def matches(factors: Mapping[str, Any], rule: Mapping[str, Any]) -> bool:
    return all(value_key(factors[k]) == value_key(v) for k, v in rule.items())


def describe_assignment(assignment: Mapping[str, Any], labels: Mapping[str, str]) -> str:
    return ",".join(f"{labels.get(k, k)}={format_value(v)}" for k, v in assignment.items())
