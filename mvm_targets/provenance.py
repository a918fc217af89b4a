"""The version of this project a result was made with: recorded in every shard and every run.

It lives here, below both the store and the trainer, so that `mvm_targets.store`, `violet_core`
and `ablations` all read the same definition without importing each other.
"""

from __future__ import annotations

import functools
import os
import subprocess
from pathlib import Path

# Pins the version for a whole process tree: an install without a git checkout that knows its
# own commit, or a test that must not see the tree change while it runs.
CODE_VERSION_ENV = "MVM_TARGETS_CODE_VERSION"


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """Package version, plus the git commit (and '-dirty') when running from a checkout.

    `MVM_TARGETS_CODE_VERSION`, when set and not empty, is returned as is.
    """
    pinned = os.environ.get(CODE_VERSION_ENV, "").strip()
    if pinned:
        return pinned
    from mvm_targets import __version__

    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=10", "HEAD"],
                                capture_output=True, text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return __version__
    return f"{__version__}+g{commit}{'-dirty' if dirty else ''}"
