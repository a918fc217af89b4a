"""Make sure the shard store holds every MVM target a grid's runs read, extracting each once.

The grid's `cache` section says where the videos come from and how they are sampled::

    cache:
      source: data/synthetic/captions.csv   # a captions table (or folder / path list) mvm_targets reads
      synth: {clips: 96, seed: 0}           # optional: synthesise the dataset into source's folder if absent
      num_frames: 4                         # default: the runs' largest data.num_frames
      size: 128                             # default: the runs' largest data.size (runs may crop smaller)
      # optional extraction settings: device, workers, batch_size, clips_per_shard, short_videos,
      # weights (pretrained | random), weights_dir, options: {<name>: {<key>: value}}

The store location and dataset name are NOT in this section: they are the runs' own `data.cache`
and `data.dataset`, so what is extracted is exactly what the trainer opens. Runs are grouped by
(cache, dataset, frames_id) and each group is extracted in one `mvm_targets.extract` call with the
union of its targets, so every clip is decoded once and every target computed once for the grid.
Each run's targets are extracted with the section's `options` merged with the run's own `mvm.options`
(the run's win), and each distinct (target, options) set once (ablations/target_requests.py); after
extracting, every run must resolve its targets to the sets extracted for it, as the trainer will.
A target its module declares as never stored (derived from the cached frames) needs no extraction of its own,
and neither does a target every run of the group computes online (`mvm.source: online`): those runs read
only the frames.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ablations.grid import Grid
from ablations.target_requests import (RunRead, TargetRequest, build_requests, distinct_targets, reading_problems,
                                       requests_of, run_reads, section_options_problem)
from violet_core.config import CACHED, target_source

CACHE_KEYS = ("source", "synth", "num_frames", "size", "device", "workers", "batch_size", "clips_per_shard",
              "short_videos", "weights", "weights_dir", "options")
SYNTH_KEYS = ("clips", "seed", "frames", "size", "fps", "object_scale")
RUNTIME_KEYS = ("device", "weights", "weights_dir")  # passed to the target factories that accept them
# cache-section key -> mvm_targets.settings rule, checked before anything is synthesised or decoded
SETTING_RULES = {"num_frames": "frames", "size": "size", "workers": "workers", "batch_size": "batch_size",
                 "clips_per_shard": "clips_per_shard", "short_videos": "short_videos", "weights": "weights"}


class PrepareError(ValueError):
    """The cache cannot be made ready for the grid; the message names the grid file and the reason."""


@dataclass(frozen=True)
class CacheJob:
    """One extraction: a dataset in a store, at one sampling, with the targets its runs need."""

    cache_root: Path
    dataset: str
    frames_id: str | None  # what the runs ask for (data.frames_id); None = the dataset's only sampling
    refs: tuple[str, ...]  # refs of mvm.targets some run reads from the cache, sorted, derived ones included
    runs: int  # how many runs read this group
    source: Path | None = None
    synth: dict[str, Any] | None = None
    num_frames: int = 4
    size: int = 224
    settings: dict[str, Any] = field(default_factory=dict)  # the optional extraction settings
    reads: tuple[RunRead, ...] = ()  # each run's cached targets, with the options extracted for each

    @property
    def requests(self) -> tuple[TargetRequest, ...]:
        """The distinct (ref, options) sets the job's runs read, each extracted once."""
        return requests_of(self.reads)

    @property
    def stored_refs(self) -> tuple[str, ...]:
        """The refs that have shard sets: every one but those derived from the frames (`stored=False`)."""
        from mvm_targets.targets.registry import derived_spec

        return tuple(r for r in self.refs if derived_spec(r) is None)


@dataclass(frozen=True)
class PrepareResult:
    job: CacheJob
    frames_id: str
    sets: list[str]
    extracted: int  # clips newly completed by this call
    already: int  # clips that were complete before
    failed: int
    seconds: float
    synthesised: bool

    def line(self) -> str:
        where = f"{self.job.cache_root / self.job.dataset / self.frames_id}"
        made = "synthesised the dataset, " if self.synthesised else ""
        failed = f", {self.failed} failed (see `mvmtargets info`)" if self.failed else ""
        if self.extracted == 0 and not self.failed:
            return f"cache {where}: up to date, nothing extracted ({self.already} clips; {', '.join(self.sets)})"
        return (f"cache {where}: {made}extracted {self.extracted} clips, {self.already} already cached{failed} "
                f"({', '.join(self.sets)}) in {self.seconds:.1f}s")


# ----------------------------------------------------------------------------------------------
# Planning


def plan_cache(grid: Grid) -> list[CacheJob]:
    """The extractions the grid needs, one per (data.cache, data.dataset, data.frames_id) of its runs."""
    section = dict(grid.cache or {})
    unknown = [k for k in section if k not in CACHE_KEYS]
    if unknown:
        raise PrepareError(f"{grid.path}: cache: unknown key '{unknown[0]}' (known: {', '.join(CACHE_KEYS)})")
    synth = section.get("synth")
    if synth is not None:
        bad = [k for k in synth if k not in SYNTH_KEYS]
        if bad:
            raise PrepareError(f"{grid.path}: cache: synth: unknown key '{bad[0]}' (known: {', '.join(SYNTH_KEYS)})")
    problem = section_options_problem(section.get("options"))
    if problem:
        raise PrepareError(f"{grid.path}: cache: {problem}")
    from mvm_targets.settings import setting_problem

    for key, rule in SETTING_RULES.items():
        problem = setting_problem(rule, section[key]) if section.get(key) is not None else None
        if problem:
            raise PrepareError(f"{grid.path}: cache.{key} {problem}")
    groups: dict[tuple[str, str, str | None], list[dict[str, Any]]] = {}
    reads: dict[tuple[str, str, str | None], list[RunRead]] = {}
    for spec in grid.runs:
        data = spec.config["data"]
        group = (data["cache"], data["dataset"], data.get("frames_id"))
        groups.setdefault(group, []).append(spec.config)
        reads.setdefault(group, []).extend(run_reads(spec.alias, spec.config, section.get("options")))
    jobs = []
    for (cache_root, dataset, frames_id), configs in groups.items():
        # a target every run computes online is never read from the cache
        refs = sorted({ref for config in configs for ref in config["mvm"]["targets"]
                       if target_source(config["mvm"].get("source", CACHED), ref) == CACHED})
        jobs.append(CacheJob(
            cache_root=Path(cache_root), dataset=dataset, frames_id=frames_id, refs=tuple(refs), runs=len(configs),
            source=Path(section["source"]) if section.get("source") else None,
            synth=dict(synth) if synth else None,
            num_frames=int(section.get("num_frames") or max(c["data"]["num_frames"] for c in configs)),
            size=int(section.get("size") or max(c["data"]["size"] for c in configs)),
            settings={k: section[k] for k in CACHE_KEYS if k in section and k not in ("source", "synth", "num_frames",
                                                                                      "size")},
            reads=tuple(reads[(cache_root, dataset, frames_id)])))
    return jobs


def describe_job(job: CacheJob) -> str:
    """One line for --dry-run; reads nothing but the file system's existence checks."""
    targets = ", ".join(str(r) for r in job.requests) or "none (frames only)"
    where = f"{job.cache_root / job.dataset} (T={job.num_frames}, S={job.size})"
    if job.source is None:
        source = "no cache section: the targets must already be cached"
    elif job.source.exists():
        source = f"source {job.source}"
    elif job.synth:
        source = f"source {job.source} (absent: would synthesise {job.synth.get('clips', 64)} clips)"
    else:
        source = f"source {job.source} (absent, no synth: the run would stop here)"
    return f"cache {where}: targets {targets}; {source}; read by {job.runs} run(s)"


# ----------------------------------------------------------------------------------------------
# Doing it


def prepare_cache(grid: Grid, say: Callable[[str], None] = print) -> list[PrepareResult]:
    """Extract whatever the grid's runs need and is not cached yet; returns one result per job."""
    results = []
    for job in plan_cache(grid):
        if job.source is None:
            _check_cached(grid, job)
            continue
        result = _extract(grid, job)
        say(result.line())
        results.append(result)
    return results


def _sampling(grid: Grid, job: CacheJob):
    from mvm_targets.video.decode import SamplingConfig

    try:
        return SamplingConfig(num_frames=job.num_frames, size=job.size,
                              short_videos=job.settings.get("short_videos", "skip"))
    except ValueError as error:
        raise PrepareError(f"{grid.path}: cache: {error}") from None


def _extract(grid: Grid, job: CacheJob) -> PrepareResult:
    from mvm_targets.errors import MvmTargetsError
    from mvm_targets.extract import ExtractConfig, extract
    from mvm_targets.interrupts import raise_if_interrupted
    from mvm_targets.store.layout import dataset_caches
    from mvm_targets.video.inputs import discover_inputs

    sampling = _sampling(grid, job)
    _check_frames_id(grid, job, sampling.frames_id, [c.root.name for c in dataset_caches(job.cache_root, job.dataset)])
    built = _build(grid, job)  # before synthesising: an unknown target should cost nothing
    targets = distinct_targets(built)
    synthesised = _ensure_source(grid, job)
    try:
        items = discover_inputs([job.source])
        config = ExtractConfig(
            cache_root=job.cache_root, dataset=job.dataset, sampling=sampling,
            batch_size=int(job.settings.get("batch_size", 8)), workers=int(job.settings.get("workers", 0)),
            clips_per_shard=int(job.settings.get("clips_per_shard", 64)))
        # between clips: a Ctrl-C swallowed inside a numba compile still stops the extraction
        summary = extract(items, targets, config, on_progress=raise_if_interrupted)
    except MvmTargetsError as error:
        raise PrepareError(f"{grid.path}: cache: {error}") from None
    _check_reads(grid, job, sampling.frames_id, built)
    return PrepareResult(job=job, frames_id=sampling.frames_id, sets=summary.sets, extracted=summary.done,
                         already=summary.already_done, failed=summary.failed + summary.failed_earlier,
                         seconds=summary.seconds, synthesised=synthesised)


def _check_frames_id(grid: Grid, job: CacheJob, frames_id: str, present: list[str]) -> None:
    problem = frames_id_problem(job, frames_id, present)
    if problem:
        raise PrepareError(f"{grid.path}: {problem}")


def frames_id_problem(job: CacheJob, frames_id: str, present: list[str]) -> str | None:
    """The runs must open the sampling this grid extracts; a mismatch would only surface in every run."""
    if job.frames_id is not None and job.frames_id != frames_id:
        return (f"the runs read data.frames_id={job.frames_id}, but the cache section "
                f"(num_frames={job.num_frames}, size={job.size}) extracts {frames_id}")
    others = [name for name in present if name != frames_id]
    if job.frames_id is None and others:
        return (f"{job.cache_root / job.dataset} already holds another sampling ({', '.join(others)}); set "
                f"data.frames_id: {frames_id} in the grid's base so the runs read the one this grid extracts")
    return None


def build_targets(grid: Grid, job: CacheJob) -> list[Any]:
    """mvm_targets Target objects for the job's requests, one per target id; unknown or unavailable
    targets and bad options are one-line errors."""
    return distinct_targets(_build(grid, job))


def _build(grid: Grid, job: CacheJob) -> dict[TargetRequest, Any]:
    from mvm_targets.errors import MvmTargetsError
    from mvm_targets.targets.build import TargetOptionError

    runtime = {k: job.settings[k] for k in RUNTIME_KEYS if job.settings.get(k) is not None}
    try:
        return build_requests(job.requests, runtime)
    except TargetOptionError as error:
        raise PrepareError(f"{grid.path}: options (cache.options, mvm.options): {error}") from None
    except MvmTargetsError as error:
        raise PrepareError(f"{grid.path}: mvm.targets: {error}") from None


def _check_reads(grid: Grid, job: CacheJob, frames_id: str, built: dict[TargetRequest, Any]) -> None:
    """Every run resolves its targets, with its own mvm.options as the trainer does, to the sets
    extracted for it; otherwise the first run that would not is a one-line error before any run starts."""
    from mvm_targets.store.layout import open_clip_cache

    extracted = {request: target.spec.target_id for request, target in built.items() if target.spec.stored}
    problems = reading_problems(open_clip_cache(job.cache_root, job.dataset, frames_id), job.reads, extracted)
    if problems:
        raise PrepareError(f"{grid.path}: {problems[0]}")


def _ensure_source(grid: Grid, job: CacheJob) -> bool:
    """Synthesise the dataset into the source's folder when it is absent and `synth` allows it."""
    assert job.source is not None
    if job.source.exists():
        _check_synthesised_as_asked(grid, job)
        return False
    if not job.synth:
        raise PrepareError(f"{grid.path}: cache: source {job.source} does not exist "
                           f"(add cache.synth: {{clips: N, seed: S}} to synthesise it)")
    if job.source.name != "captions.csv":
        raise PrepareError(f"{grid.path}: cache: synth writes <folder>/captions.csv, but source is {job.source}")
    from mvm_targets.synth import build_synthetic_dataset

    build_synthetic_dataset(job.source.parent, **_synth_arguments(job.synth))
    return True


def _synth_arguments(synth: dict[str, Any]) -> dict[str, Any]:
    return {"clips": int(synth.get("clips", 64)), "seed": int(synth.get("seed", 0)),
            "num_frames": int(synth.get("frames", 24)), "size": int(synth.get("size", 112)),
            "fps": int(synth.get("fps", 8)), "object_scale": float(synth.get("object_scale", 1.0))}


def _check_synthesised_as_asked(grid: Grid, job: CacheJob) -> None:
    """An existing synthetic source built with other arguments would silently train on other data."""
    if not job.synth:
        return
    from mvm_targets.synth.build import built_differences, dataset_manifest

    try:
        differences = built_differences(job.source.parent, dataset_manifest(**_synth_arguments(job.synth)))
    except ValueError as error:
        raise PrepareError(str(error)) from None
    if differences:
        raise PrepareError(f"{grid.path}: cache: {job.source.parent} was synthesised with other arguments "
                           f"({'; '.join(differences)}); delete it and its cache, or point cache.source elsewhere")


def _check_cached(grid: Grid, job: CacheJob) -> None:
    """Without a cache section nothing can be extracted: the runs' targets must already be there."""
    from mvm_targets.errors import MvmTargetsError
    from mvm_targets.store.layout import open_clip_cache

    stored = set(job.stored_refs)
    try:
        clip_cache = open_clip_cache(job.cache_root, job.dataset, job.frames_id)
        for read in job.reads:  # each resolved as the trainer will: with the run's own options
            if read.request.ref in stored:
                clip_cache.resolve_target(read.request.ref, read.run_options)
    except MvmTargetsError as error:
        raise PrepareError(f"{grid.path}: no 'cache' section to extract from, and {error}") from None
