"""One registry for every target: `build_target("hog:maskfeat")` and friends.

Names follow the paper (pixel, hog, depth, flow, vq, sif, tvf, mmf); the official code's names
are accepted as aliases. A target module registers a factory with `@register_target(name)`; the
factory takes the variant and keyword options and returns an object satisfying `Target`.
"""

from __future__ import annotations

from typing import Any, Callable

from mvm_targets.errors import MvmTargetsError
from mvm_targets.targets.spec import Target

PAPER_TARGETS = ("pixel", "hog", "depth", "flow", "vq", "sif", "tvf", "mmf")
ALIASES = {
    "2d_feature": "sif",
    "3d_feature": "tvf",
    "2d_clip_feature": "mmf",
    "optical_flow": "flow",
}

TargetFactory = Callable[..., Target]
_FACTORIES: dict[str, TargetFactory] = {}
_DEFAULT_VARIANTS: dict[str, str] = {}
_VARIANTS: dict[str, tuple[str, ...]] = {}


class UnknownTargetError(MvmTargetsError, ValueError):
    """Raised for a target name or variant the registry does not know."""


class TargetUnavailableError(MvmTargetsError):
    """A known target that cannot be built here (a missing teacher, weights or backend)."""


def register_target(name: str, variants: tuple[str, ...]) -> Callable[[TargetFactory], TargetFactory]:
    """Register `factory(variant: str, **options) -> Target`; `variants[0]` is the default."""

    def decorator(factory: TargetFactory) -> TargetFactory:
        _FACTORIES[name] = factory
        _VARIANTS[name] = variants
        _DEFAULT_VARIANTS[name] = variants[0]
        return factory

    return decorator


def canonical_name(name: str) -> str:
    """Map an alias (`2d_feature`) to its paper name (`sif`) and check that it is known."""
    _load_builtin_targets()
    resolved = ALIASES.get(name, name)
    if resolved not in _FACTORIES:
        known = ", ".join(list_targets())
        aliases = ", ".join(f"{a}={p}" for a, p in ALIASES.items())
        if resolved in PAPER_TARGETS:
            raise UnknownTargetError(
                f"target '{name}' is one of the paper's targets but is not available in this build; "
                f"available targets: {known}")
        raise UnknownTargetError(f"unknown target '{name}'; known targets: {known} (aliases: {aliases})")
    return resolved


def parse_target_ref(ref: str) -> tuple[str, str]:
    """`"hog:maskfeat"` -> ("hog", "maskfeat"); `"hog"` -> ("hog", default variant)."""
    name, _, variant = ref.partition(":")
    name = canonical_name(name.strip())
    variant = variant.strip() or _DEFAULT_VARIANTS[name]
    if variant not in _VARIANTS[name]:
        raise UnknownTargetError(
            f"unknown variant '{variant}' for target '{name}'; known variants: {', '.join(_VARIANTS[name])}")
    return name, variant


def build_target(ref: str, **options: Any) -> Target:
    """Build a target from `name[:variant]`, e.g. `build_target("flow:dis", preset="fast")`."""
    name, variant = parse_target_ref(ref)
    return _FACTORIES[name](variant, **options)


def factory_parameters(ref: str) -> frozenset[str]:
    """Keyword options the factory of `ref`'s target accepts (runtime settings go only where taken)."""
    import inspect

    name, _ = parse_target_ref(ref)
    return frozenset(inspect.signature(_FACTORIES[name]).parameters)


def list_targets() -> list[str]:
    """Registered target names, in the paper's order."""
    _load_builtin_targets()
    order = {n: i for i, n in enumerate(PAPER_TARGETS)}
    return sorted(_FACTORIES, key=lambda n: (order.get(n, len(order)), n))


def list_variants(name: str) -> tuple[str, ...]:
    """All variants of a registered target; the first is the default."""
    return _VARIANTS[canonical_name(name)]


def _load_builtin_targets() -> None:
    # Importing the modules runs their @register_target decorators; done lazily so that
    # `spec`/`registry` stay importable from inside the target modules themselves.
    from mvm_targets.targets import depth, flow, hog, mmf, pixel, sif, tvf, vq  # noqa: F401
