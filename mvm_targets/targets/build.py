"""Targets from references: the one way the CLI, the ablation harness and any other caller build them.

A reference is `name[:variant]` (aliases allowed, a bare name meaning the default variant) plus
options for that target. `runtime` settings (device, weights, weights_dir, batch_size, ...) are the
caller's: each goes only to the factories whose signature takes it, and None means "not given".
Among them `compile` and `channels_last` (mvm_targets/teachers/runtime.py) change a teacher's speed,
not its values, so they reach the factories that take them without entering any target id.
Per-target `options` are keyed by target name (`{"flow": {"preset": "fast"}}`) and go to that
target's factory as they are, so a wrong one is an error naming the target and the option. One option
is the store's, not the factory's: `codec` (`{"hog": {"codec": "int8"}}`) picks how the target's values
are stored (mvm_targets/store/codecs.py, docs/method.md §8.1) and is recorded in its spec.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from mvm_targets.errors import MvmTargetsError
from mvm_targets.store.codecs import CodecError, codec_named
from mvm_targets.targets.registry import (build_target, canonical_name, factory_parameters, parse_target_ref,
                                          targets_for_all)
from mvm_targets.targets.spec import Target, with_codec

CODEC_OPTION = "codec"  # taken by every stored target, applied to its spec here rather than by its factory

ALL = "all"  # the reference that means every target that did not opt out of it


class TargetOptionError(MvmTargetsError, ValueError):
    """A per-target option the target's factory does not take."""


@dataclass(frozen=True)
class TargetRef:
    """A canonical target reference: `name:variant` plus the options given for it."""

    name: str
    variant: str
    options: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, ref: str, options: Mapping[str, Any] | None = None) -> "TargetRef":
        """`"hog"` -> hog:paper, `"optical_flow:dis"` -> flow:dis (unknown names and variants raise)."""
        name, variant = parse_target_ref(ref)
        return cls(name, variant, dict(options or {}))

    def __str__(self) -> str:
        return f"{self.name}:{self.variant}"


def expand_refs(refs: Sequence[str]) -> list[str]:
    """`refs` with "all" replaced by every target that did not opt out of it."""
    return targets_for_all() if ALL in refs else list(refs)


def build_targets(refs: Sequence[str], runtime: Mapping[str, Any] | None = None,
                  options: Mapping[str, Mapping[str, Any]] | None = None,
                  on_unavailable: Callable[[str, MvmTargetsError], None] | None = None) -> list[Target]:
    """Build the targets of `refs` ("all" allowed).

    Args:
        refs: target references, e.g. ["hog", "flow:dis"] or ["all"].
        runtime: caller settings, each passed to the factories that accept it (None values dropped).
        options: per-target options keyed by target name or alias.
        on_unavailable: with "all", called with (ref, error) for a target that cannot be built here
            (missing weights or backend), which is then left out; without "all" such errors raise.
    Raises:
        TargetOptionError: an option a target's factory does not take.
        MvmTargetsError: an unknown target or variant, or one that cannot be built here.
    """
    runtime = {k: v for k, v in (runtime or {}).items() if v is not None}
    per_name = {canonical_name(name): dict(values or {}) for name, values in (options or {}).items()}
    skip = ALL in refs and on_unavailable is not None
    targets = []
    for ref in expand_refs(refs):
        parsed = TargetRef.parse(ref, per_name.get(parse_target_ref(ref)[0]))
        accepted = factory_parameters(ref)
        kwargs = {k: v for k, v in runtime.items() if k in accepted}
        options = dict(parsed.options)
        codec = options.pop(CODEC_OPTION, None)
        if codec is not None:
            try:
                codec_named(codec)  # a misspelt codec fails before a teacher is built
            except CodecError as error:
                raise TargetOptionError(f"target '{ref}': {error}") from None
        kwargs.update(options)
        try:
            target = build_target(ref, **kwargs)
        except TypeError as error:  # an option the factory does not take
            raise TargetOptionError(f"target '{ref}' does not accept option(s) {sorted(options)}: "
                                    f"{error}") from None
        except MvmTargetsError as error:
            if not skip:
                raise
            on_unavailable(ref, error)  # type: ignore[misc]
            continue
        if codec is not None:
            try:
                target.spec = with_codec(target.spec, codec)
            except ValueError as error:
                raise TargetOptionError(str(error)) from None
        targets.append(target)
    return targets
