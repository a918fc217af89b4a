"""Which cached set of a target a run's per-target options select (docs/method.md §8.1).

A run names its targets by reference (`hog`, `flow:dis`) and may give each of them options, keyed by
the reference or by the target name: `{"hog": {"codec": "int8"}}`. Extraction turns the same options
into a spec (mvm_targets/targets/build.py): the store's `codec` becomes `params["codec"]` (absent for
the default codec, so existing ids do not move), and a factory option lands in the params under
whatever key its target records, or nowhere when it changes no stored value (a worker count).
Resolution has to find the set those options would have written, reading only the stamped specs, with
no teacher weights and without computing a clip.

Two ways offer themselves, and neither is robust alone. Rebuilding the spec the options give and
comparing target ids fails for teachers: their id holds the weights' identity (`model_id`, a weights
digest), which a spec-only build cannot know without the weight files. Comparing the stored params
with the options by name fails where an option is not recorded under its own name: the default codec
leaves no param, and an option such as `num_workers` leaves none at all. So `OptionMatch` takes the
part of each that is exact:

- the codec is compared exactly, from the record (`params["codec"]`, absent = the default), which
  needs no target module;
- every other option: the target is built twice without weights (`registry.build_without_weights`:
  `weights="random"` where its factory takes it), with and without the options, and the params the
  options control are those the two specs disagree on, plus every option the spec records under its
  own name (so an option equal to its default still pins that value). The stored set must agree with
  the optioned spec on exactly those keys. Keys that follow the weights are the same in both
  weight-free builds, so they never take part; an option that changes no param selects nothing,
  since every candidate holds the values it asks for.
- a target that cannot be built without options (one that must be told which model to load) is
  compared on the params its options are recorded under, as the optioned build records them;
- a target this install cannot build (no module registers it, or it is unavailable here) has each
  option compared with the stored param of the same name.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any, Mapping

from mvm_targets.errors import InputError, MvmTargetsError
from mvm_targets.store.codecs import CODEC_PARAM, DEFAULT_CODEC, CodecError, codec_named
from mvm_targets.targets.registry import ALIASES  # a constant: importing it loads no target module
from mvm_targets.targets.spec import StoredSpec, split_ref

CODEC_OPTION = CODEC_PARAM  # the store's option: how the values are stored, not how they are computed


class TargetOptionsError(InputError):
    """An option a target does not take, or a value it refuses (one line naming the target)."""


class _Absent:
    """The value of a param the matching set must not have (a marker no JSON value can equal)."""

    def __repr__(self) -> str:
        return "<absent>"


_ABSENT = _Absent()


def options_for(options: Mapping[str, Mapping[str, Any]] | None, ref: str) -> dict[str, Any] | None:
    """The options that apply to `ref` among a run's per-target options: the entry keyed by the reference
    as written (`flow:dis`), else the one keyed by its target name (`flow`, aliases allowed); None when
    neither exists (or `options` is None). Reads no target module."""
    if not options:
        return None
    if ref in options:
        return dict(options[ref] or {})
    name, _ = split_ref(ref)
    name = ALIASES.get(name, name)
    for key, value in options.items():
        key_name, key_variant = split_ref(str(key))
        if key_variant is None and ALIASES.get(key_name, key_name) == name:
            return dict(value or {})
    return None


def describe_options(options: Mapping[str, Any]) -> str:
    """`{"codec": "int8", "preset": "fast"}` -> "codec=int8, preset=fast"; {} -> "default options"."""
    return ", ".join(f"{k}={v}" for k, v in sorted(options.items())) or "default options"


@dataclass(frozen=True)
class OptionMatch:
    """What a target's options pin in a stored spec: its codec, and the params the options control."""

    codec: str
    params: tuple[tuple[str, Any], ...]  # (key, JSON value), or (key, _ABSENT) for a param the set must lack

    def accepts(self, spec: StoredSpec) -> bool:
        if spec.codec != self.codec:
            return False
        stored = {k: _plain(v) for k, v in spec.params.items()}
        return all(key not in stored if value is _ABSENT else stored.get(key, _ABSENT) == value
                   for key, value in self.params)


def option_match(name: str, variant: str, options: Mapping[str, Any]) -> OptionMatch:
    """The match of `options` for target `name:variant`; a bad codec or option is a one-line TargetOptionsError."""
    options = dict(options)
    try:
        codec = codec_named(options.pop(CODEC_OPTION, DEFAULT_CODEC)).name
    except CodecError as error:
        raise TargetOptionsError(f"target '{name}:{variant}': {error}") from None
    if not options:
        return OptionMatch(codec, ())
    encoded = json.dumps(options, sort_keys=True, default=str)
    return OptionMatch(codec, _controlled_params(ALIASES.get(name, name), variant, encoded))


@functools.lru_cache(maxsize=64)
def _controlled_params(name: str, variant: str, encoded: str) -> tuple[tuple[str, Any], ...]:
    """(key, value) of every param the options (JSON, codec left out) decide, from two weight-free builds."""
    options = json.loads(encoded)
    try:
        with_options = _weightless_params(name, variant, options)
    except TargetOptionsError:
        raise
    except MvmTargetsError:
        # not buildable here: the best evidence left is a param recorded under the option's own name
        return tuple(sorted((k, _plain(v)) for k, v in options.items()))
    keys = {k for k in options if k in with_options}  # as the target records them ("-1,-2" -> [-1, -2])
    try:
        without = _weightless_params(name, variant, {})
    except MvmTargetsError:
        without = None  # a target that cannot be built without options (a model to name): their own keys only
    if without is not None:
        keys |= {k for k in set(with_options) | set(without)
                 if with_options.get(k, _ABSENT) != without.get(k, _ABSENT)}
    return tuple(sorted((k, with_options.get(k, _ABSENT)) for k in keys))


def _weightless_params(name: str, variant: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The spec params `name:variant` records with `options`, built without teacher weights."""
    from mvm_targets.targets.registry import build_without_weights

    ref = f"{name}:{variant}"
    try:
        target = build_without_weights(ref, **options)
    except MvmTargetsError:
        raise  # an unknown target, or one that cannot be built here: the caller falls back to names
    except (TypeError, ValueError) as error:  # an option the factory does not take, or a value it refuses
        raise TargetOptionsError(f"target '{ref}': option(s) {describe_options(options)}: {error}") from None
    return {k: _plain(v) for k, v in target.spec.params.items()}


def _plain(value: Any) -> Any:
    """A param as its JSON record holds it (tuples as lists), so built and stored values compare equal."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))
