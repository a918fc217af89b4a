"""`ablate check`, targets: every `mvm.targets` reference names a registered target (or an exact
cached set when there is no cache section), its options (the cache section's merged with the run's
`mvm.options`) are ones it takes, and the teacher weights a cache section's extraction would load are
present unless it asks for `weights: random`."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ablations.prepare_plan import CacheJob
from ablations.target_requests import TargetRequest, canonical, static_option_problems
from violet_core.config import CACHED, RunConfig

_USED_BY = re.compile(r"^\s*([\w.-]+)(?::([\w.-]+))?\s*(?:\((.*)\))?\s*$")


def target_problems(config: RunConfig, job: CacheJob | None) -> list[str]:
    """Unknown target references, options a target does not take, and teacher weights the cache
    section's extraction lacks."""
    from mvm_targets.errors import MvmTargetsError
    from mvm_targets.store.selection import options_for
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
        # a cached target is extracted with the section's options under the run's; an online one takes the run's
        section = options_for(job.settings.get("options"), ref) if extracts and config.mvm.source_of(ref) == CACHED \
            else None
        options = {**(section or {}), **(config.mvm.options_of(ref) or {})}
        problems += static_option_problems(TargetRequest(ref, canonical(options)))
        if extracts and str(job.settings.get("weights", "pretrained")) != "random":
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
