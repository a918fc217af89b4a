"""The run directory: everything a run leaves behind, written by rank 0 only.

    <run>/config.yaml         resolved config (every field)
    <run>/metrics.jsonl       one JSON object per logged step or evaluation
    <run>/final.json          headline metrics, chance levels, targets, code version, timing
    <run>/failure.json        written instead of final.json when the run fails (class, message, step)
    <run>/tokenizer/          the tokenizer, so resumed and downstream phases reuse it exactly
    <run>/checkpoints/        last.pt (resumable state, tensors and plain data: no pickle), pretrained.pt
                              (model after pretraining)
    <run>/downstream.json     results of downstream tasks already finished (resume skips them)
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch

from mvm_targets.store.diskspace import nbytes_of, raise_if_out_of_space
from violet_core.tracking import Tracker


class RunDir:
    def __init__(self, root: Path, writer: bool = True) -> None:
        self.root = Path(root)
        self.writer = writer
        if writer:
            (self.root / "checkpoints").mkdir(parents=True, exist_ok=True)

    @property
    def checkpoint(self) -> Path:
        return self.root / "checkpoints" / "last.pt"

    @property
    def pretrained(self) -> Path:
        return self.root / "checkpoints" / "pretrained.pt"

    @property
    def tokenizer(self) -> Path:
        return self.root / "tokenizer"

    # also receives every logged record (TensorBoard, progress bar): see violet_core.tracking
    tracker: "Tracker | None" = None

    def log(self, record: dict[str, Any]) -> None:
        if self.writer:
            with open(self.root / "metrics.jsonl", "a") as handle:
                handle.write(json.dumps(_finite(record)) + "\n")
            if self.tracker is not None:
                self.tracker.log(record)

    def truncate_log(self, phase: str, after_step: int) -> None:
        """Drop `phase`'s log lines past `after_step` (-1: all of them), which a resumed run is about to
        write again, so the curve has no duplicates; a line cut short by a kill goes too."""
        path = self.root / "metrics.jsonl"
        if not self.writer or not path.exists():
            return
        kept = [line for line in path.read_text().splitlines()
                if _parses(line) and not _is_after(json.loads(line), phase, after_step)]
        write_atomic(path, "".join(f"{line}\n" for line in kept))

    def read_json(self, name: str) -> dict | None:
        path = self.root / name
        return json.loads(path.read_text()) if path.exists() else None

    def write_json(self, name: str, record: dict[str, Any]) -> None:
        if self.writer:
            write_atomic(self.root / name, json.dumps(_finite(record), indent=2, sort_keys=True) + "\n")

    def save_checkpoint(self, path: Path, state: dict[str, Any]) -> None:
        """Atomic: a kill during the save leaves the previous checkpoint intact."""
        if not self.writer:
            return
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        try:
            with open(tmp, "wb") as handle:  # a Python file: a full disk is ENOSPC, not torch's opaque error
                torch.save(state, handle)
            os.replace(tmp, path)
        except (OSError, RuntimeError) as error:
            tmp.unlink(missing_ok=True)
            raise_if_out_of_space(error, path, nbytes_of(state), "free some space and rerun to resume")
            raise


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _parses(line: str) -> bool:
    """False for blank lines and for a line cut short by a kill during its write."""
    try:
        return isinstance(json.loads(line), dict)
    except json.JSONDecodeError:
        return False


def _is_after(record: dict, phase: str, step: int) -> bool:
    return record.get("phase") == phase and record.get("step", -1) > step


def _finite(value: Any) -> Any:
    """JSON has no NaN: non-finite numbers become null (with the raw text kept nowhere silently)."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
