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

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from ablations.grid import SEED_KEY, Grid, GridError, InvalidRun, RunSpec, format_value, load_grid
from ablations.prepare import CacheJob, PrepareError, frames_id_problem, plan_cache
from violet_core.config import DOWNSTREAM_TASKS, RunConfig, config_from_dict

# The files each downstream task reads under data.source when `downstream.files` names none for it
# (violet_core.downstream.records): alternatives per role, any one of a group will do.
SYNTHETIC_FILES: dict[str, dict[str, tuple[tuple[str, ...], ...]]] = {
    "retrieval": {"train": (("splits.json",), ("captions.csv",)),
                  "eval": (("splits.json", "retrieval.json"), ("captions.csv", "retrieval.json"))},
    "qa_mc": {"train": (("qa_mc.jsonl",),), "eval": (("qa_mc.jsonl",),)},
    "qa_oe": {"train": (("qa_oe.jsonl",),), "eval": (("qa_oe.jsonl",),)},
}
BERT_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
                     "pytorch_model.bin.index.json")
_FRAMES_ID = re.compile(r"frames-t(\d+)-s(\d+)-")
_USED_BY = re.compile(r"^\s*([\w.-]+)(?::([\w.-]+))?\s*(?:\((.*)\))?\s*$")


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
    problems += _target_problems(config, job)
    geometry, cache_problems = _cache_geometry(config, job)
    problems += cache_problems
    if geometry is not None:
        problems += _frame_problems(config, *geometry)
    problems += _model_file_problems(config)
    problems += _task_file_problems(config, job)
    return problems


# ----------------------------------------------------------------------------------------------
# Targets and their teachers


def _target_problems(config: RunConfig, job: CacheJob | None) -> list[str]:
    from mvm_targets.errors import MvmTargetsError
    from mvm_targets.targets.registry import parse_target_ref

    problems = []
    extracts = job is not None and job.source is not None
    for ref in config.mvm.targets:
        try:
            name, variant = parse_target_ref(ref)
        except MvmTargetsError as error:
            if not extracts and _cached_set(config, ref):
                continue  # an exact cached set id, which the trainer reads as it is
            problems.append(f"mvm.targets: {error}")
            continue
        if extracts and str(job.settings.get("weights", "pretrained")) != "random":
            options = (job.settings.get("options") or {}).get(name) or {}
            problems += _missing_weights(name, variant, options, job.settings.get("weights_dir"))
    return problems


def _cached_set(config: RunConfig, ref: str) -> bool:
    from mvm_targets.errors import MvmTargetsError
    from mvm_targets.store.layout import open_clip_cache

    try:
        open_clip_cache(Path(config.data.cache), config.data.dataset, config.data.frames_id).resolve_target(ref)
    except MvmTargetsError:
        return False
    return True


def teacher_weights(name: str, variant: str, options: dict[str, Any]) -> list[Any]:
    """The weights entries (mvm_targets.teachers.weights) a target reads, from their `used_by`.

    `used_by` lists references such as "depth:dpt-large, depth:paper", "vq" (every variant) or
    "flow:raft (model=small)" (only with that option). Entries qualified by options that match
    replace the unqualified ones; several matching entries are alternatives (vq reads its converted
    safetensors or the original pickle).
    """
    from mvm_targets.teachers.weights import all_weights

    plain, qualified = [], []
    for entry in all_weights():
        for item in entry.used_by.split(","):
            match = _USED_BY.match(item)
            if not match or match.group(1) != name or match.group(2) not in (None, variant):
                continue
            if match.group(3) is None:
                plain.append(entry)
            elif all(str(options.get(k.strip())) == v.strip()
                     for k, _, v in (pair.partition("=") for pair in match.group(3).split(";"))):
                qualified.append(entry)
    return qualified or plain


def _missing_weights(name: str, variant: str, options: dict[str, Any], weights_dir: Any) -> list[str]:
    from mvm_targets.teachers.weights import resolve_weights_dir

    entries = teacher_weights(name, variant, options)
    root = resolve_weights_dir(Path(weights_dir) if weights_dir else None)
    if not entries or any(entry.present(root) for entry in entries):
        return []
    wanted = " or ".join(str(entry.path(root)) for entry in entries)
    return [f"{name}:{variant} needs teacher weights {wanted} (from {entries[0].source}; `mvmtargets weights` "
            f"lists them; cache.weights: random for a smoke test)"]


# ----------------------------------------------------------------------------------------------
# Cache and frame counts


def _cache_geometry(config: RunConfig, job: CacheJob | None) -> tuple[tuple[int, int, str] | None, list[str]]:
    """((T, S, "where they come from") of the frames the run will read, or None if unknown), problems."""
    from mvm_targets.errors import MvmTargetsError
    from mvm_targets.store.layout import dataset_caches, open_clip_cache

    if job is not None and job.source is not None:
        from mvm_targets.video.decode import SamplingConfig

        problems = []
        problem = source_problem(job)
        if problem:
            problems.append(problem)
        try:
            sampling = SamplingConfig(num_frames=job.num_frames, size=job.size,
                                      short_videos=job.settings.get("short_videos", "skip"))
        except ValueError as error:
            return None, problems + [f"cache: {error}"]
        present = [c.root.name for c in dataset_caches(job.cache_root, job.dataset)]
        problem = frames_id_problem(job, sampling.frames_id, present)
        if problem:
            problems.append(problem)
        return (job.num_frames, job.size, "the cache section extracts"), problems
    from mvm_targets.targets.registry import parse_target_ref

    try:
        clip_cache = open_clip_cache(Path(config.data.cache), config.data.dataset, config.data.frames_id)
    except MvmTargetsError as error:
        return None, [f"no cache section to extract from, and {error}"]
    problems = []
    from mvm_targets.targets.registry import derived_spec

    for ref in config.mvm.targets:
        if derived_spec(ref) is not None:
            continue  # never stored: the trainer derives it from the cached frames
        try:
            clip_cache.resolve_target(ref)
        except MvmTargetsError as error:
            try:
                parse_target_ref(ref)
            except MvmTargetsError:
                continue  # not a target at all: _target_problems says so
            problems.append(f"no cache section to extract from, and {error}")
    match = _FRAMES_ID.match(clip_cache.root.name)
    if not match:
        return None, problems
    return (int(match.group(1)), int(match.group(2)), f"the cache {clip_cache.root} holds"), problems


def source_problem(job: CacheJob) -> str | None:
    """Why the job's source can be neither read nor synthesised, or None."""
    assert job.source is not None
    if job.source.exists():
        return None
    if not job.synth:
        return (f"cache: source {job.source} does not exist (add cache.synth: {{clips: N, seed: S}} to "
                "synthesise it)")
    if job.source.name != "captions.csv":
        return f"cache: synth writes <folder>/captions.csv, but source is {job.source}"
    return None


def _frame_problems(config: RunConfig, frames: int, size: int, where: str) -> list[str]:
    problems = []
    if config.data.num_frames > frames:
        problems.append(f"data.num_frames={config.data.num_frames} but {where} {frames} frames per clip")
    finetune = config.downstream.num_frames or config.data.num_frames
    if config.downstream.tasks and finetune > frames:
        key = "downstream.num_frames" if config.downstream.num_frames else "data.num_frames (finetuning)"
        problems.append(f"{key}={finetune} but {where} {frames} frames per clip")
    if config.downstream.tasks and finetune > config.model.max_frames:
        problems.append(f"downstream.num_frames={finetune} exceeds model.max_frames={config.model.max_frames}")
    if config.data.size > size:
        problems.append(f"data.size={config.data.size} but {where} {size}-px frames")
    return problems


# ----------------------------------------------------------------------------------------------
# Model weights, tokenizer, task files


def _model_file_problems(config: RunConfig) -> list[str]:
    from violet_core.data.tokenizer import BERT_FILES

    problems = []
    backbone = config.model.backbone_weights
    if backbone and not Path(backbone).is_file():
        problems.append(f"model.backbone_weights: no such file {backbone}")
    text = config.model.text_weights
    if text:
        folder = Path(text)
        if not (folder / "config.json").is_file() or not any((folder / f).is_file() for f in BERT_WEIGHT_FILES):
            problems.append(f"model.text_weights: {folder} is not a BERT folder (config.json and "
                            f"{' or '.join(BERT_WEIGHT_FILES[:2])})")
    tokenizer = config.data.tokenizer
    if tokenizer and not any((Path(tokenizer) / f).is_file() for f in BERT_FILES):
        problems.append(f"data.tokenizer: {tokenizer} is not a folder with {' or '.join(BERT_FILES)}")
    return problems


def _task_file_problems(config: RunConfig, job: CacheJob | None) -> list[str]:
    from violet_core.downstream.adapters import TASK_KINDS

    problems = []
    source = Path(config.data.source)
    synthesised = (job is not None and job.source is not None and bool(job.synth) and not job.source.exists()
                   and source.resolve() == job.source.parent.resolve())
    for task in config.downstream.tasks:
        if task not in DOWNSTREAM_TASKS:
            continue  # the config's own validation names it
        for role in ("train", "eval"):
            key = f"{task}_{role}"
            spec = config.downstream.files.get(key)
            if spec is not None:
                kind, _, path = spec.partition(":")
                if kind not in TASK_KINDS:
                    problems.append(f"downstream.files.{key}: unknown kind '{kind}' (kinds: {', '.join(TASK_KINDS)})")
                elif not Path(path).is_file():
                    problems.append(f"downstream.files.{key}: no such file {path}")
                continue
            if synthesised:
                continue
            for group in SYNTHETIC_FILES[task][role]:
                if not any((source / name).is_file() for name in group):
                    problems.append(f"downstream {task} ({role}) reads {source / group[0]}, which does not exist "
                                    f"(or name a benchmark file in downstream.files.{key})")
                    break
    return problems


# ----------------------------------------------------------------------------------------------
# Helpers


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
