"""The registry imports only the module of the target it is asked about (named after it), and every
module for listings and other names, so a host without one target's dependencies can use the others."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

SCRIPT = """
import sys
from mvm_targets.targets import registry
from mvm_targets.targets.spec import augmentation_for

def loaded():
    return sorted(m.rsplit(".", 1)[1] for m in sys.modules
                  if m.startswith("mvm_targets.targets.") and m.rsplit(".", 1)[1] not in ("spec", "registry"))

print(registry.derived_spec("pixel").name, augmentation_for({"name": "pixel", "variant": "rgb"}).flip.value,
      registry.is_default_variant("pixel", "rgb"), loaded())
print(registry.canonical_name("2d_feature"), loaded())
print(registry.derived_spec("no_such_target"), "hog" in loaded() and "flow" in loaded())
"""


def test_one_target_imports_its_own_module_and_other_names_discover_all():
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    pixel, alias, unknown = done.stdout.strip().splitlines()
    assert pixel == "pixel exact True ['pixel']"
    assert alias.startswith("sif ") and "hog" not in alias and "flow" not in alias  # sif's own imports only
    assert unknown == "None True"  # an unknown name looks everywhere before it is called unknown
