"""Make sure the shard store holds every MVM target a grid's runs read, extracting each once.

ablations/prepare_plan.py turns the grid's `cache` section and its runs into one `CacheJob` per
(data.cache, data.dataset, data.frames_id) and documents the section; this module carries the jobs
out: the source is synthesised when asked (ablations/prepare_source.py), each group is extracted in
one `mvm_targets.extract` call, and every run must then resolve its targets to the sets extracted
for it, as the trainer will. Without a cache section the targets must already be cached.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from ablations.grid import Grid
from ablations.prepare_plan import CacheJob, PrepareError, frames_id_problem, plan_cache
from ablations.prepare_source import ensure_source
from ablations.target_requests import TargetRequest, build_requests, distinct_targets, reading_problems

RUNTIME_KEYS = ("device", "weights", "weights_dir")  # passed to the target factories that accept them


@dataclass(frozen=True)
class PrepareResult:
    """What `prepare_cache` did for one job; `line` says it in one line."""

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
    synthesised = ensure_source(grid, job)
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
