"""Resumable checkpoints as plain data, read back with `torch.load(..., weights_only=True)`.

A checkpoint holds tensors and plain Python values only (ints, floats, strings, lists, dicts): no
pickled objects, so loading one never runs code. RNG states are stored as uint8 tensors (torch)
or lists of ints (Python `random`, numpy), and `FORMAT` tells a checkpoint this code can resume
exactly from one written before it could.
"""

from __future__ import annotations

import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

FORMAT = 2  # 1: before every RNG, the data position and the log window were saved (pickle-free or not)


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from; the message is one line: which file, why, what to do."""


def capture_rng(generators: dict[str, torch.Generator] | None = None) -> dict[str, Any]:
    """Every global RNG (Python, numpy, torch CPU and CUDA) plus the named `generators`, as plain data."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": [version, list(internal), gauss],
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "generators": {name: generator.get_state() for name, generator in (generators or {}).items()},
    }


def restore_rng(state: dict[str, Any], generators: dict[str, torch.Generator] | None = None) -> None:
    """Inverse of `capture_rng`. CUDA states are restored only where CUDA is available (a CPU resume of a
    GPU run has no CUDA generator to set)."""
    version, internal, gauss = state["python"]
    random.setstate((int(version), tuple(int(v) for v in internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), int(pos), int(has_gauss), float(cached)))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for name, generator in (generators or {}).items():
        generator.set_state(state["generators"][name])


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint without pickle; one that needs pickle or predates `FORMAT` is refused in one line."""
    restart = "delete it to restart the run from the beginning"
    try:
        saved = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(f"{path}: this checkpoint predates the safe format (it needs pickle to load); "
                              f"{restart}") from None
    except (RuntimeError, EOFError) as error:
        raise CheckpointError(f"{path}: unreadable checkpoint ({str(error).splitlines()[0]}); {restart}") from None
    found = saved.get("format", 1) if isinstance(saved, dict) else None
    if found != FORMAT:
        why = ("older ones lack the RNG and data-order state an exact resume needs" if isinstance(found, int)
               and found < FORMAT else "it was not written by this trainer or by a newer version")
        raise CheckpointError(f"{path}: checkpoint format {found}, this code resumes format {FORMAT} only ({why}); "
                              f"{restart}")
    return saved
