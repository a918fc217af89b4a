"""Expand a grid YAML into content-addressed runs of the VIOLET trainer.

Format (every key but `axes`/`zip` optional; unknown top-level keys are errors)::

    name: demo                      # default: the file's stem; one folder name (runs/<name>)
    description: free text          # shown by describe()
    base_config: ../../violet_core/configs/tiny.yaml   # a RunConfig YAML, relative to THIS file
    base:                           # RunConfig fields merged over base_config (nested or dotted keys)
      pretrain: {optim: {steps: 200}}
      data.num_workers: 2
    cache:                          # passed through to the runner (what to extract before training);
      source: data/synthetic/captions.csv     # like every path in a RunConfig, relative to the
      synth: {clips: 96, seed: 0}             # working directory, not to the grid file
      num_frames: 4
      size: 128
    axes:                           # full product; keys are dotted RunConfig leaves, values lists
      mvm.targets: [[], [pixel], [hog], ["flow:dis"]]
      mask.ratio: [0.15, 0.3]
    zip:                            # each group is ONE axis whose keys vary together (paired)
      - {mask.strategies: [[rm], [rm, bm]], mask.paper: [true, false]}
    exclude:                        # drop every run that matches all keys of one rule
      - {mvm.targets: ["flow:dis"], mask.ratio: 0.15}
    seeds: [0, 1]                   # the replicate axis (config key `seed`); default [base seed]
    baseline: {mvm.targets: []}     # the reference cell for deltas in the report; naming one key of
                                    # a zip group names that group's row (its partners are filled in)
    labels: {mvm.targets: target}   # short axis names for aliases and report columns

Runs are ordered as the product of the axes in file order (zip groups after the plain axes), with
the seed varying fastest. Every run's config is the base with its factor values set, validated by
`violet_core.config.config_from_dict`; an invalid one is a GridError naming the run.

Overrides (`ablate run GRID --set KEY=VALUE`) are dotted RunConfig keys applied to the base, or
`cache.KEY` for the cache section (e.g. `--set cache.weights=random --set cache.source=tiny.csv`).

Identity: `run_id` hashes the resolved config, not the grid, so the same settings get the same id
from any grid file, any axis order, any machine. The alias is only for people: it names the factors
that the grid varies (axes with more than one value, plus the seed).
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ablations.grid_sections import (SEED_KEY, Dimension, GridError, check_field, complete_paired,
                                     describe_assignment, load_base, matches, merge, nest, parse_assignments,
                                     parse_axes, parse_labels, parse_seeds)
from ablations.identity import IDENTITY_EXCLUDED, format_value, run_id, safe_name, value_key
from mvm_targets.names import name_problem
from mvm_targets.targets.spec import ref_key
from violet_core.config import config_from_dict, field_paths
from violet_core.config_parsing import ConfigError, apply_overrides, read_yaml_mapping

TOP_LEVEL_KEYS = ("name", "description", "base_config", "base", "cache", "axes", "zip", "exclude", "seeds",
                  "baseline", "labels")
CACHE_PREFIX = "cache."  # overrides of the grid's cache section rather than of the runs' config


@dataclass(frozen=True)
class RunSpec:
    """One run of a grid: its id, readable alias, factor values and full resolved config."""

    run_id: str
    alias: str
    factors: dict[str, Any]  # axis key -> resolved value, seed included under "seed"
    config: dict[str, Any]  # RunConfig.to_dict() of the resolved config


@dataclass(frozen=True)
class Grid:
    """An expanded grid. `axes` lists the axis keys in order, with `seed` last."""

    name: str
    path: str
    grid_hash: str  # sha256 of the canonical grid content (base after base_config and overrides)
    base: dict[str, Any]  # the merged base mapping as stated (RunConfig defaults fill the rest)
    cache: dict[str, Any]
    axes: list[str]
    runs: list[RunSpec]
    baseline: dict[str, Any]
    labels: dict[str, str]
    values: dict[str, list[Any]] = field(default_factory=dict)  # axis key -> declared values
    paired: list[list[str]] = field(default_factory=list)  # zip groups
    excluded: int = 0  # runs dropped by `exclude`
    description: str = ""

    def label(self, key: str) -> str:
        return self.labels.get(key, key)


# ----------------------------------------------------------------------------------------------
# Loading


@dataclass(frozen=True)
class InvalidRun:
    """A run whose resolved config does not validate (collected by `ablate check` instead of raised)."""

    alias: str
    factors: dict[str, Any]  # axis key -> value as the grid states it, seed included
    reason: str  # the config error, one line


def load_grid(path: str | Path, overrides: Mapping[str, Any] | None = None,
              invalid: list[InvalidRun] | None = None) -> Grid:
    """Read a grid YAML and expand it; `overrides` are dotted RunConfig keys applied to the base
    (or `cache.KEY` keys applied to the cache section). With `invalid`, runs whose config does not
    validate are appended to it and left out, instead of raising GridError."""
    path = Path(path)
    return expand(read_yaml_mapping(path, "grid", GridError), path, overrides, invalid)


def expand(spec: Mapping[str, Any], path: str | Path = "<grid>", overrides: Mapping[str, Any] | None = None,
           invalid: list[InvalidRun] | None = None) -> Grid:
    """Validate a parsed grid mapping and expand it into runs; `path` anchors `base_config` and messages.
    `invalid`: see `load_grid`."""
    where = str(path)

    def fail(section: str, message: str) -> GridError:
        return GridError(f"{where}: {section}: {message}")

    unknown = [k for k in spec if k not in TOP_LEVEL_KEYS]
    if unknown:
        raise GridError(f"{where}: unknown top-level key '{unknown[0]}' (known: {', '.join(TOP_LEVEL_KEYS)})")
    name = spec.get("name") or Path(path).stem
    name = str(name) if isinstance(name, int) and not isinstance(name, bool) else name  # `name: 2024`
    problem = name_problem(name)
    if problem:
        raise fail("name", f"{problem} (the grid's runs go to runs/<name>)")
    known_fields = field_paths()
    base = load_base(spec, Path(path), fail)
    cache_overrides = {k[len(CACHE_PREFIX):]: v for k, v in (overrides or {}).items() if k.startswith(CACHE_PREFIX)}
    overrides = {k: v for k, v in (overrides or {}).items() if not k.startswith(CACHE_PREFIX)}
    if overrides:
        for key in overrides:
            check_field(key, known_fields, fail, "overrides")
        base = merge(base, nest(dict(overrides), fail, "overrides"))

    dimensions, values, paired = parse_axes(spec, known_fields, fail)
    if overrides:
        clash = [k for k in overrides if k in values]
        if clash:
            raise fail("overrides", f"'{clash[0]}' is a grid axis; an override would collapse it (edit the axis)")
    seeds = parse_seeds(spec, base, fail)
    values[SEED_KEY] = seeds
    axes = list(values)
    labels = parse_labels(spec, axes, fail)
    exclude = parse_assignments(spec.get("exclude") or [], "exclude", values, fail, allow_seed=True)
    baseline_rules = parse_assignments([spec["baseline"]] if spec.get("baseline") else [], "baseline", values, fail,
                                        allow_seed=False)
    baseline = complete_paired(baseline_rules[0], dimensions, "baseline", fail) if baseline_rules else {}
    cache = spec.get("cache") or {}
    if not isinstance(cache, Mapping):
        raise fail("cache", f"must be a mapping, got {cache!r}")
    if cache_overrides:
        cache = merge(dict(cache), nest(cache_overrides, fail, "overrides"))
    if "synth" in cache and not isinstance(cache["synth"], Mapping):
        raise fail("cache", f"'synth' must be a mapping like {{clips: 96, seed: 0}}, got {cache['synth']!r}")

    # An axis with one value is a setting, not a factor: it stays out of the alias.
    varied = [k for k in axes if k == SEED_KEY or len({value_key(v) for v in values[k]}) > 1]
    collected: list[InvalidRun] = [] if invalid is None else invalid
    runs, excluded = _expand_runs(base, dimensions, seeds, exclude, varied, labels, where,
                                  None if invalid is None else collected)
    if not runs and not collected:
        raise fail("exclude", "every run is excluded")
    if baseline and runs and not collected and not any(matches(r.factors, baseline) for r in runs):
        raise fail("baseline", f"the cell {describe_assignment(baseline, labels)} is entirely excluded")

    content = {"name": name, "base": base, "cache": cache,
               "axes": spec.get("axes") or {}, "zip": spec.get("zip") or [], "exclude": spec.get("exclude") or [],
               "seeds": seeds, "baseline": baseline, "labels": labels}
    grid_hash = hashlib.sha256(json.dumps(content, sort_keys=True, separators=(",", ":"), default=str).encode())
    return Grid(name=str(content["name"]), path=where, grid_hash=grid_hash.hexdigest(), base=base, cache=dict(cache),
                axes=axes, runs=runs, baseline=baseline, labels=labels, values=values, paired=paired,
                excluded=excluded, description=str(spec.get("description") or ""))


def _expand_runs(base: dict[str, Any], dimensions: list[Dimension], seeds: list[int], exclude: list[dict[str, Any]],
                 varied: list[str], labels: dict[str, str], where: str,
                 invalid: list[InvalidRun] | None = None) -> tuple[list[RunSpec], int]:
    """The product of the dimensions and seeds (seed fastest), minus exclusions, each run resolved."""
    runs, excluded = [], 0
    seen_ids: dict[str, str] = {}
    seen_aliases: set[str] = set()
    for combo in itertools.product(*(rows for _, rows in dimensions), seeds):
        assignment: dict[str, Any] = {}
        for (keys, _), row in zip(dimensions, combo[:-1]):
            assignment.update(zip(keys, row))
        assignment[SEED_KEY] = combo[-1]
        if any(matches(assignment, rule) for rule in exclude):
            excluded += 1
            continue
        try:
            run = _resolve(base, assignment, varied, labels)
        except ConfigError as error:
            alias = _alias(assignment, varied, labels)
            if invalid is None:
                raise GridError(f"{where}: run '{alias}': {error}") from None
            invalid.append(InvalidRun(alias, dict(assignment), str(error)))
            continue
        if run.run_id in seen_ids:
            raise GridError(f"{where}: runs '{seen_ids[run.run_id]}' and '{run.alias}' resolve to the same config "
                            f"(run id {run.run_id}); remove the duplicate axis value")
        if run.alias in seen_aliases:
            raise GridError(f"{where}: two runs share the alias '{run.alias}'; make the axis values distinct")
        seen_ids[run.run_id] = run.alias
        seen_aliases.add(run.alias)
        runs.append(run)
    return runs, excluded


TARGETS_KEY = "mvm.targets"  # its values are target references


def _alias(assignment: dict[str, Any], varied: list[str], labels: dict[str, str]) -> str:
    return safe_name(",".join(f"{labels.get(k, k)}={_alias_value(k, assignment[k])}" for k in varied))


def _alias_value(key: str, value: Any) -> str:
    """A factor value as it reads in an alias; target references by their one file-safe key (`ref_key`:
    `flow:dis` -> `flow_dis`), the spelling of the run's batch entries and `mvm_<key>` metrics, also as
    the keys of per-target options (`{flow:dis: {codec: int8}}` -> `flow_dis.codec=int8`, {} -> `none`)."""
    if key == TARGETS_KEY and isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return format_value([ref_key(v) for v in value])
    if key == "mvm.options" and isinstance(value, Mapping):  # keyed by target references or names
        return format_value({ref_key(str(ref)): options for ref, options in value.items()})
    return format_value(value)


def _resolve(base: dict[str, Any], assignment: dict[str, Any], varied: list[str], labels: dict[str, str]) -> RunSpec:
    """The run of one assignment; ConfigError when its config does not validate."""
    alias = _alias(assignment, varied, labels)
    resolved = config_from_dict(apply_overrides(base, {**assignment, "name": alias}))
    config = resolved.to_dict()
    factors = {key: _get(config, key) for key in assignment}
    return RunSpec(run_id=run_id(resolved), alias=alias, factors=factors, config=config)


def _get(config: Mapping[str, Any], dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        node = node[part]
    return node


# ----------------------------------------------------------------------------------------------
# Summary for --dry-run


def describe(grid: Grid) -> str:
    """A short human summary: axes, counts, baseline, cache, then one line per run."""
    cells = {tuple(value_key(v) for k, v in r.factors.items() if k != SEED_KEY) for r in grid.runs}
    lines = [f"grid {grid.name} ({grid.path})  hash {grid.grid_hash[:12]}"]
    if grid.description:
        lines.append(f"  {grid.description}")
    in_groups = {k for group in grid.paired for k in group}
    for key in grid.axes:
        if key in in_groups or key == SEED_KEY:
            continue
        name = grid.label(key) if grid.label(key) == key else f"{grid.label(key)} ({key})"
        lines.append(f"  axis {name}: {' | '.join(format_value(v) for v in grid.values.get(key, []))}")
    for group in grid.paired:
        rows = zip(*(grid.values[k] for k in group))
        shown = " | ".join("(" + ", ".join(format_value(v) for v in row) + ")" for row in rows)
        lines.append(f"  zip {' + '.join(grid.label(k) for k in group)}: {shown}")
    lines.append(f"  seeds: {' | '.join(str(s) for s in grid.values.get(SEED_KEY, []))}")
    lines.append(f"  {len(grid.runs)} runs in {len(cells)} cells, {grid.excluded} excluded")
    if grid.baseline:
        lines.append(f"  baseline: {describe_assignment(grid.baseline, grid.labels)}")
    if grid.cache:
        lines.append("  cache: " + ", ".join(f"{k}={format_value(v)}" for k, v in grid.cache.items()))
    lines.append(f"  {'run_id':<12}  alias")
    lines += [f"  {r.run_id:<12}  {r.alias}" for r in grid.runs]
    return "\n".join(lines)


__all__ = ["GridError", "InvalidRun", "RunSpec", "Grid", "IDENTITY_EXCLUDED", "SEED_KEY", "load_grid", "expand",
           "run_id", "describe", "format_value", "safe_name", "value_key"]
