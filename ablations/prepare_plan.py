"""Plan the extractions a grid needs: one `CacheJob` per store, dataset and sampling its runs read.

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

ablations/prepare.py carries the jobs out; `ablate check` reads them without extracting.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ablations.grid import Grid
from ablations.target_requests import RunRead, TargetRequest, requests_of, run_reads, section_options_problem
from violet_core.config import CACHED, target_source

CACHE_KEYS = ("source", "synth", "num_frames", "size", "device", "workers", "batch_size", "clips_per_shard",
              "short_videos", "weights", "weights_dir", "options")
SYNTH_KEYS = ("clips", "seed", "frames", "size", "fps", "object_scale")
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
