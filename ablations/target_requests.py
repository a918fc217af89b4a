"""Which cached target sets a grid's runs read, with which per-target options (docs/method.md §8.1).

A run reads each cached target of `mvm.targets` with the options of its own `mvm.options`; the grid's
cache section may add options for every run's extraction (`cache.options`, keyed by target name). What
a run needs extracted is its reference with the two merged, key by key, the run's winning:
a `TargetRequest`. Runs that ask for the same (reference, options) share one request, so each
distinct set is extracted once; a set that several requests write (options that change no stored
value, or a codec restated at its default) is extracted once too (`build_requests` keeps one target
per target id).

The trainer resolves a reference with the run's own `mvm.options` only (mvm_targets/store/selection.py):
options the cache section adds are invisible to it. `reading_problems` says when that would make a
run read another set than the one extracted for it, before any run starts.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from violet_core.config import CACHED, target_source


@dataclass(frozen=True)
class TargetRequest:
    """One cached target to extract: a reference and the options it is extracted with (canonical JSON)."""

    ref: str
    options_json: str = "{}"

    @property
    def options(self) -> dict[str, Any]:
        return json.loads(self.options_json)

    def __str__(self) -> str:
        """`hog (codec=int8)`, or the bare reference without options."""
        from mvm_targets.store.selection import describe_options

        return f"{self.ref} ({describe_options(self.options)})" if self.options else self.ref


@dataclass(frozen=True)
class RunRead:
    """How one run reads one cached target: the run's alias, its own `mvm.options` (what the trainer
    resolves the reference with, canonical JSON) and the request the grid extracts for it."""

    alias: str
    run_options_json: str
    request: TargetRequest

    @property
    def run_options(self) -> dict[str, dict[str, Any]]:
        return json.loads(self.run_options_json)


def canonical(options: Mapping[str, Any] | None) -> str:
    return json.dumps(dict(options or {}), sort_keys=True, separators=(",", ":"), default=str)


def section_options_problem(options: Any) -> str | None:
    """Why a cache section's `options` is not a mapping of target name -> {option: value}, or None."""
    if options is None:
        return None
    if not isinstance(options, Mapping) or not all(isinstance(v, Mapping) for v in options.values()):
        return f"options must map a target name to its settings, e.g. {{<name>: {{<key>: value}}}}, got {options!r}"
    return None


def run_reads(alias: str, config: Mapping[str, Any], section_options: Mapping[str, Any] | None) -> list[RunRead]:
    """The cached targets one run (its resolved config as a dict) reads, each with what to extract for it."""
    from mvm_targets.store.selection import options_for

    mvm = config["mvm"]
    own = dict(mvm.get("options") or {})
    reads = []
    for ref in mvm["targets"]:
        if target_source(mvm.get("source", CACHED), ref) != CACHED:
            continue  # computed in the training step: never read from the cache
        merged = {**(options_for(section_options, ref) or {}), **(options_for(own, ref) or {})}
        reads.append(RunRead(alias, canonical(own), TargetRequest(ref, canonical(merged))))
    return reads


def requests_of(reads: Iterable[RunRead]) -> tuple[TargetRequest, ...]:
    """The distinct requests of some reads, sorted by reference then options."""
    return tuple(sorted({read.request for read in reads}, key=lambda r: (r.ref, r.options_json)))


def build_requests(requests: Iterable[TargetRequest], runtime: Mapping[str, Any]) -> dict[TargetRequest, Any]:
    """mvm_targets Target objects for each request. A reference is built once per set of options other
    than the codec, and each codec asked for gets a copy of it with its spec stored that way, so a
    teacher is loaded once whatever codecs the grid compares.

    Raises:
        TargetOptionError: an option a target does not take, or a codec that does not fit it.
        MvmTargetsError: an unknown target, or one that cannot be built here.
    """
    from mvm_targets.store.selection import CODEC_OPTION
    from mvm_targets.targets.build import TargetOptionError, build_targets
    from mvm_targets.targets.registry import parse_target_ref
    from mvm_targets.targets.spec import with_codec

    bases: dict[tuple[str, str], Any] = {}
    built: dict[TargetRequest, Any] = {}
    for request in requests:
        options = request.options
        codec = options.pop(CODEC_OPTION, None)
        key = (request.ref, canonical(options))
        if key not in bases:
            per_name = {parse_target_ref(request.ref)[0]: options} if options else None
            (bases[key],) = build_targets([request.ref], runtime, per_name)
        target = bases[key]
        if codec is not None:
            target = copy.copy(target)  # shares the teacher; only the stored spec differs
            try:
                target.spec = with_codec(bases[key].spec, str(codec))
            except ValueError as error:
                raise TargetOptionError(str(error)) from None
        built[request] = target
    return built


def distinct_targets(built: Mapping[TargetRequest, Any]) -> list[Any]:
    """One target per target id, in request order (two requests may write the same set)."""
    by_id: dict[str, Any] = {}
    for target in built.values():
        by_id.setdefault(target.spec.target_id, target)
    return list(by_id.values())


def reading_problems(clip_cache: Any, reads: Iterable[RunRead], extracted: Mapping[TargetRequest, str]) -> list[str]:
    """The runs that would read another set than the one extracted for them (`extracted`: request ->
    target id, stored targets only), each a one-line reason; the trainer resolves with the run's options."""
    from mvm_targets.errors import MvmTargetsError
    from mvm_targets.store.selection import describe_options

    problems = []
    for read in reads:
        wanted = extracted.get(read.request)
        if wanted is None:
            continue  # derived from the frames: no set of its own
        try:
            got = clip_cache.resolve_target(read.request.ref, read.run_options).set_id
        except MvmTargetsError as error:
            problems.append(f"run '{read.alias}': {error}")
            continue
        if got != wanted:
            problems.append(
                f"run '{read.alias}' would read {read.request.ref} from {got}, not from {wanted}, which the grid "
                f"extracts for it with {describe_options(read.request.options)}: the trainer sees only the run's "
                f"mvm.options, so state these options there (e.g. in the grid's base) rather than in cache.options")
    return problems


def static_option_problems(request: TargetRequest) -> list[str]:
    """Why a request's options cannot be extracted, found without teacher weights: an unknown codec or
    one that does not fit the target, an option its factory does not take (checked by building it
    without weights when the request has such options)."""
    from mvm_targets.errors import MvmTargetsError
    from mvm_targets.store.selection import CODEC_OPTION, TargetOptionsError, option_match
    from mvm_targets.targets.registry import declared_spec, parse_target_ref
    from mvm_targets.targets.spec import with_codec

    try:
        name, variant = parse_target_ref(request.ref)
    except MvmTargetsError:
        return []  # not a registered target: `check_targets.target_problems` says so
    try:
        option_match(name, variant, request.options)
    except TargetOptionsError as error:
        return [f"options of {request.ref}: {error}"]
    codec = request.options.get(CODEC_OPTION)
    spec = declared_spec(name, variant) if codec is not None else None
    if spec is not None:
        try:
            with_codec(spec, str(codec))
        except ValueError as error:
            return [f"options of {request.ref}: {error}"]
    return []
