"""The grid's video source: synthesised into its folder when absent and the cache section's `synth`
allows it, and an existing synthetic one checked against the arguments the grid asks for."""

from __future__ import annotations

from typing import Any

from ablations.grid import Grid
from ablations.prepare_plan import CacheJob, PrepareError


def ensure_source(grid: Grid, job: CacheJob) -> bool:
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
