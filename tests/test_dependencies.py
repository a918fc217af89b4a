"""Every module imports and every registered target builds, so a missing dependency fails here, by name.

A dependency that the machine happens to have (installed for something else) hides an undeclared one;
CI runs this in a fresh virtualenv, where only what the package declares is present.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from pathlib import Path

import pytest

PACKAGES = ("mvm_targets", "violet_core", "ablations")
# Variants that cannot be built without a setting of their own (an open-ended model choice).
REQUIRED_OPTIONS = {"sif:timm": {"model": "resnet18"}, "feat:timm": {"model": "test_vit.r160_in1k"},
                    "feat:hf": {"model": str(Path(__file__).parent / "data" / "tiny_dinov2_config")}}


def _all_modules() -> list[str]:
    names = []
    for package_name in PACKAGES:
        package = importlib.import_module(package_name)
        names.append(package_name)
        names += [info.name for info in pkgutil.walk_packages(package.__path__, prefix=f"{package_name}.")]
    return sorted(names)


def _all_target_refs() -> list[str]:
    from mvm_targets.targets import list_targets, list_variants

    return [f"{name}:{variant}" for name in list_targets() for variant in list_variants(name)]


@pytest.mark.parametrize("module", _all_modules())
def test_module_imports(module):
    try:
        importlib.import_module(module)
    except ImportError as error:  # name the module and the missing package, not only the import chain
        pytest.fail(f"{module} does not import: {error}")


def test_every_package_module_is_listed():
    # walk_packages silently skips a subpackage whose __init__ fails to import; count files instead.
    from pathlib import Path

    found = set(_all_modules())
    for package_name in PACKAGES:
        root = Path(importlib.import_module(package_name).__file__).parent
        for path in root.rglob("*.py"):
            parts = path.relative_to(root.parent).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            assert name in found, f"{name} was not discovered (does its package's __init__ import?)"


@pytest.mark.parametrize("ref", _all_target_refs())
def test_every_target_builds_with_random_weights(ref):
    from mvm_targets.targets import build_target
    from mvm_targets.targets.registry import factory_parameters

    accepted = factory_parameters(ref)
    options = {"weights": "random"} if "weights" in accepted else {}
    options.update(REQUIRED_OPTIONS.get(ref, {}))
    if "allow_pickle" in accepted:
        options["allow_pickle"] = False
    try:
        target = build_target(ref, **options)
    except ImportError as error:
        pytest.fail(f"target {ref} needs a package that is not installed: {error}")
    assert target.spec.name == ref.partition(":")[0]
    assert inspect.ismethod(target.compute) or callable(target.compute)
