"""The software a run was trained with, recorded in final.json so a report can tell runs apart.

The same config and seed can give a different model on another install: kernels, initialisers
and tokenisers change between releases, and a small model trained from scratch amplifies any
difference (a tiny-preset baseline moved by about 10 AveR points between two fresh installs,
docs/performance.md). The code version alone cannot show that, so each run also records these.
"""

from __future__ import annotations

import platform
from importlib import metadata

import torch

# Distributions whose version can change a trained model's numbers (kernels, init, tokenisation, I/O).
TRACKED_DISTRIBUTIONS = ("transformers", "tokenizers", "numpy", "timm", "h5py")


def software_versions() -> dict[str, str]:
    """{"python": "3.11.7", "torch": "2.13.0+cpu", ..., "cuda": "12.8"}; absent distributions are left out."""
    # torch's own version string keeps the local build tag (+cpu, +cu128), which matters here
    versions = {"python": platform.python_version(), "torch": torch.__version__}
    for name in TRACKED_DISTRIBUTIONS:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    if torch.version.cuda:
        versions["cuda"] = torch.version.cuda
    if torch.backends.cudnn.is_available():
        versions["cudnn"] = str(torch.backends.cudnn.version())
    return versions
