"""`ablate check`, the cache: the frames a run will read (T frames of S px, from the cache on disk
or from what a cache section extracts), the section's source, and the run's frame counts and size
against them."""

from __future__ import annotations

import re
from pathlib import Path

from ablations.prepare_plan import CacheJob, frames_id_problem
from violet_core.config import RunConfig

_FRAMES_ID = re.compile(r"frames-t(\d+)-s(\d+)-")


def cache_geometry(config: RunConfig, job: CacheJob | None) -> tuple[tuple[int, int, str] | None, list[str]]:
    """((T, S, "where they come from") of the frames the run will read, or None if unknown), problems."""
    from mvm_targets.errors import MvmTargetsError
    from mvm_targets.store.layout import dataset_caches, open_clip_cache
    from mvm_targets.store.selection import TargetOptionsError

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

    for ref in config.mvm.cached_targets:  # an online target is computed in the step, never read from the cache
        if derived_spec(ref) is not None:
            continue  # never stored: the trainer derives it from the cached frames
        try:
            clip_cache.resolve_target(ref, config.mvm.options)  # as the trainer resolves it: with the run's options
        except TargetOptionsError:
            continue  # a bad option: check_targets.target_problems says so
        except MvmTargetsError as error:
            try:
                parse_target_ref(ref)
            except MvmTargetsError:
                continue  # not a target at all: check_targets.target_problems says so
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


def frame_problems(config: RunConfig, frames: int, size: int, where: str) -> list[str]:
    """The run's frame counts and size that exceed the `frames` x `size` px clips `where` names."""
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
