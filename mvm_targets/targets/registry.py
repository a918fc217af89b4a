"""One registry for every target: `build_target("hog:maskfeat")` and friends.

The paper's eight targets keep its names (pixel, hog, depth, flow, vq, sif, tvf, mmf) and the
official code's names are accepted as aliases. A target module registers a factory with
`@register_target(name)`; the factory takes the variant and keyword options and returns an object
satisfying `Target`. Every module of this package is discovered by itself, and other packages add
targets through the `mvm_targets.targets` entry-point group (each entry point names a module that
registers its targets on import). A name registered twice is an error.

Looking up one target imports as little as it can: the module of this package named after the target
(`pixel` -> targets/pixel.py) when that module registers it, and every module and plugin only for
other names and for listings. So a run that uses `pixel` and `sif` never imports hog's numba or
flow's OpenCV, and works on a host that lacks them. A plugin registering a built-in name is reported
once something lists the targets (or names one that is not a built-in).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
from typing import Any, Callable

from mvm_targets.errors import MvmTargetsError
from mvm_targets.targets.spec import Target, TargetSpec

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
_NOT_IN_ALL: set[str] = set()
_DISCOVERED = False
ENTRY_POINT_GROUP = "mvm_targets.targets"


class UnknownTargetError(MvmTargetsError, ValueError):
    """Raised for a target name or variant the registry does not know."""


class TargetUnavailableError(MvmTargetsError):
    """A known target that cannot be built here (a missing teacher, weights or backend)."""


def register_target(name: str, variants: tuple[str, ...],
                    in_all: bool = True) -> Callable[[TargetFactory], TargetFactory]:
    """Register `factory(variant: str, **options) -> Target`; `variants[0]` is the default.

    `in_all=False` keeps the target out of `--target all` (e.g. a control that only means something
    on the synthetic dataset).
    """

    def decorator(factory: TargetFactory) -> TargetFactory:
        existing = _FACTORIES.get(name)
        if existing is not None and _origin(existing) != _origin(factory):
            raise MvmTargetsError(f"target '{name}' is registered twice: by {_origin(existing)} and by "
                                  f"{_origin(factory)}; rename one of them")
        _FACTORIES[name] = factory
        _VARIANTS[name] = variants
        _DEFAULT_VARIANTS[name] = variants[0]
        if not in_all:
            _NOT_IN_ALL.add(name)
        return factory

    return decorator


def canonical_name(name: str) -> str:
    """Map an alias (`2d_feature`) to its paper name (`sif`) and check that it is known."""
    resolved = ALIASES.get(name, name)
    load_target(resolved)
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


def build_without_weights(ref: str, **options: Any) -> Target:
    """`build_target(ref, **options)` with random teacher weights (`weights="random"`) where the factory
    takes a `weights` option, so no weight file is read: what a spec declares and records never
    depends on the weights. Raises whatever the factory raises."""
    name, variant = parse_target_ref(ref)
    factory = _FACTORIES[name]
    runtime = {"weights": "random"} if "weights" in factory_parameters(ref) else {}
    return factory(variant, **runtime, **options)


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


def targets_for_all() -> list[str]:
    """What `--target all` means: every registered target that did not opt out of it."""
    return [name for name in list_targets() if name not in _NOT_IN_ALL]


def list_variants(name: str) -> tuple[str, ...]:
    """All variants of a registered target; the first is the default."""
    return _VARIANTS[canonical_name(name)]


def is_default_variant(name: str, variant: str) -> bool:
    """Whether a bare `name` means `variant` (the first variant registered). A target that no module
    registers (one built in code and handed to `extract`) has only the variant it was written with."""
    resolved = ALIASES.get(name, name)
    load_target(resolved)
    return resolved not in _DEFAULT_VARIANTS or _DEFAULT_VARIANTS[resolved] == variant


@functools.lru_cache(maxsize=None)
def declared_spec(name: str, variant: str, grid: str | None = None) -> TargetSpec | None:
    """The spec a registered target declares for `variant`, built without teacher weights (declarations
    such as `clip_scope`, `paper_scaling`, `derive` and `picture` never depend on weights).

    A variant this build does not register, with `grid` given, falls back to the first registered
    variant on that grid (a record from another build keeps its target's declarations). None when
    no module here registers the target, or no variant fits, or it cannot be built here.
    """
    name = ALIASES.get(name, name)
    load_target(name)
    if name not in _FACTORIES:
        return None
    if variant in _VARIANTS[name]:
        return _spec_without_weights(name, variant)
    if grid is None:
        return None
    for candidate in _VARIANTS[name]:
        spec = _spec_without_weights(name, candidate)
        if spec is not None and spec.grid.value == grid:
            return spec
    return None


def derived_spec(ref: str) -> TargetSpec | None:
    """The spec of `ref` when its target is never stored (its module derives it from the cached frames
    with `spec.derive`); None for a stored or unknown target."""
    try:
        spec = declared_spec(*parse_target_ref(ref))
    except MvmTargetsError:
        return None
    return spec if spec is not None and not spec.stored else None


def _spec_without_weights(name: str, variant: str) -> TargetSpec | None:
    try:
        return build_without_weights(f"{name}:{variant}").spec
    except Exception:  # noqa: BLE001 - a target that cannot be built here declares nothing here
        return None


def load_target(name: str) -> None:
    """Make sure the module registering target `name` (no alias) is imported: the module of this package
    named after it when that one registers it, else every module and plugin (`list_targets`). Unknown
    names raise nothing here; `canonical_name` says they are unknown."""
    if name in _FACTORIES:
        return
    if name.isidentifier():
        own = f"{__package__}.{name}"
        # only a module that exists is imported: a missing one is an unknown name, not an ImportError
        if importlib.util.find_spec(own) is not None:
            importlib.import_module(own)
            if name in _FACTORIES:
                return
    _load_builtin_targets()


def _load_builtin_targets() -> None:
    # Importing a module runs its @register_target decorators; done lazily (and once) so that
    # `spec`/`registry` stay importable from inside the target modules themselves.
    global _DISCOVERED
    if _DISCOVERED:
        return
    _DISCOVERED = True
    import pkgutil
    from importlib.metadata import entry_points

    import mvm_targets.targets as package

    try:
        for module in pkgutil.iter_modules(package.__path__, prefix=f"{package.__name__}."):
            importlib.import_module(module.name)
        for entry in entry_points(group=ENTRY_POINT_GROUP):
            try:
                entry.load()
            except Exception as error:  # a broken third-party plugin must say which one it is
                raise MvmTargetsError(f"target plugin '{entry.name}' ({entry.value}) failed to load: "
                                      f"{type(error).__name__}: {error}") from error
    except BaseException:
        _DISCOVERED = False  # let the next call report the same error instead of a partial registry
        raise


def _origin(factory: TargetFactory) -> str:
    return f"{factory.__module__}.{factory.__qualname__}"