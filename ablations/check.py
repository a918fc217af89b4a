"""`ablate check GRID`: everything a grid's runs need, verified before anything is extracted or trained.

For every run (grouped into cells: the factor values without the seed) it checks, reading only
the file system:

- the run's config validates (the grid is expanded with invalid runs collected, not raised);
- every `mvm.targets` reference names a registered target (or, without a cache section, a set
  that is already cached);
- its cache: without a `cache:` section the dataset, its sampling and every stored target must be
  cached already; with one, the source must exist (or be synthesised), the dataset must not hold
  another sampling the runs would not pick, and teacher weights must be present unless the
  section asks for `weights: random`;
- frame counts: `data.num_frames` and the finetuning count (`downstream.num_frames`, default the
  pretraining one) are at most the cached T (runs may take a window of fewer frames), the latter
  also at most `model.max_frames`; `data.size` at most the cached S;
- `model.backbone_weights`, `model.text_weights` and `data.tokenizer` exist in the form the
  trainer loads; every downstream task finds its files (`downstream.files`, else the synthetic
  layout under `data.source`).

A bad cell gets one line naming all its problems; `ablate run` runs the same checks first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from ablations.check_cache import cache_geometry, frame_problems, source_problem
from ablations.check_files import BERT_WEIGHT_FILES, SYNTHETIC_FILES, model_file_problems, task_file_problems
from ablations.check_targets import target_problems, teacher_weights
from ablations.grid import SEED_KEY, Grid, GridError, InvalidRun, RunSpec, format_value, load_grid
from ablations.prepare_plan import CacheJob, PrepareError, plan_cache
from violet_core.config import RunConfig, config_from_dict

# The checks of each kind live in check_targets, check_cache and check_files; their public names stay
# importable from here, where `ablate check` and `ablate run` look for them.
__all__ = ["BERT_WEIGHT_FILES", "SYNTHETIC_FILES", "CheckReport", "check_grid", "check_grid_file", "run_problems",
           "source_problem", "teacher_weights"]


@dataclass
class CheckReport:
    """What `ablate check` found: problems of the grid as a whole, and per bad cell."""

    grid_path: str
    problems: list[str] = field(default_factory=list)  # whole-grid problems, one line each
    cells: dict[str, list[str]] = field(default_factory=dict)  # bad cell -> its reasons
    cell_count: int = 0
    run_count: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems and not self.cells

    def error_lines(self) -> list[str]:
        """One line per whole-grid problem and per bad cell, each naming the grid file."""
        lines = [f"{self.grid_path}: {problem}" for problem in self.problems]
        lines += [f"{self.grid_path}: cell {cell}: {'; '.join(reasons)}" for cell, reasons in self.cells.items()]
        return lines

    def summary(self) -> str:
        return (f"{self.grid_path}: {self.cell_count} cell(s), {self.run_count} run(s) checked: configs valid, "
                "targets known, caches present or extracted by the cache section, frame counts consistent, "
                "weights and task files present")

    def add(self, cell: str, reasons: Iterable[str]) -> None:
        for reason in reasons:
            known = self.cells.setdefault(cell, [])
            if reason not in known:
                known.append(reason)


def check_grid_file(path: Path, overrides: dict[str, Any] | None = None) -> CheckReport:
    """Load `path` (with `overrides`, as `ablate run --set`) and check every run of it."""
    invalid: list[InvalidRun] = []
    try:
        grid = load_grid(path, overrides, invalid)
    except GridError as error:
        return CheckReport(str(path), problems=[_without_prefix(str(error), str(path))])
    return check_grid(grid, invalid)


def check_grid(grid: Grid, invalid: Sequence[InvalidRun] = (), runs: Sequence[RunSpec] | None = None) -> CheckReport:
    """Check `runs` (default: every run of `grid`) and the runs that failed validation."""
    runs = list(grid.runs if runs is None else runs)
    report = CheckReport(grid.path)
    cells = {_cell(grid, r.factors) for r in runs} | {_cell(grid, r.factors) for r in invalid}
    report.cell_count, report.run_count = len(cells), len(runs) + len(invalid)
    for bad in invalid:
        report.add(_cell(grid, bad.factors), [f"invalid config: {bad.reason}"])
    try:
        jobs = plan_cache(grid)
    except PrepareError as error:
        report.problems.append(_without_prefix(str(error), grid.path))
        return report
    by_group = {(str(j.cache_root), j.dataset, j.frames_id): j for j in jobs}
    for spec in runs:
        data = spec.config["data"]
        job = by_group.get((str(Path(data["cache"])), data["dataset"], data.get("frames_id")))
        report.add(_cell(grid, spec.factors), run_problems(config_from_dict(spec.config), job))
    return report


def run_problems(config: RunConfig, job: CacheJob | None) -> list[str]:
    """Every reason one run could not train, each a short clause."""
    problems: list[str] = []
    problems += target_problems(config, job)
    geometry, cache_problems = cache_geometry(config, job)
    problems += cache_problems
    if geometry is not None:
        problems += frame_problems(config, *geometry)
    problems += model_file_problems(config)
    problems += task_file_problems(config, job)
    return problems



def _cell(grid: Grid, factors: dict[str, Any]) -> str:
    """A cell's name: the values of the varied axes, seed left out (all axes if none varies)."""
    varied = [k for k in grid.axes if k != SEED_KEY and len(grid.values.get(k, [])) > 1]
    keys = varied or [k for k in grid.axes if k != SEED_KEY]
    if not keys:
        return "(every run)"
    return ",".join(f"{grid.label(k)}={format_value(factors[k])}" for k in keys if k in factors)


def _without_prefix(message: str, path: str) -> str:
    """GridError and PrepareError messages start with the grid path; the report adds it once."""
    return message[len(path) + 2:] if message.startswith(f"{path}: ") else message
