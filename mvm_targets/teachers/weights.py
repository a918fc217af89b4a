"""Local teacher weights: what each teacher expects, where to get it, and whether it is here.

The product never downloads. A user fetches each file once on a connected machine and puts it
under the weights folder: `--weights-dir`, else `$MVM_WEIGHTS`, else `~/.cache/mvm_targets/weights`.
`mvmtargets weights` lists every entry with its expected path, source and presence.

`weights="random"` builds a teacher's architecture with seeded random weights instead, for smoke
tests; targets made that way say so in their id and provenance, so a report can refuse to mix
them with real teachers.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from mvm_targets.errors import MvmTargetsError

WEIGHTS_ENV = "MVM_WEIGHTS"
RANDOM = "random"
PRETRAINED = "pretrained"
WeightsMode = Literal["pretrained", "random"]


class MissingWeightsError(MvmTargetsError):
    """A teacher's weight file or folder is not where it is expected."""


@dataclass(frozen=True)
class WeightsEntry:
    """One teacher checkpoint: a file, or a model folder (Hugging Face layout)."""

    weights_id: str  # e.g. "raft_large", "dpt-large"
    relative_path: str  # under the weights folder, e.g. "torchvision/raft_large_C_T_SKHT_V2-ff5fadd5.pth"
    source: str  # where to download it
    used_by: str  # target reference(s), e.g. "flow:raft"
    sha256: str | None = None  # of the official file, when published; None when unknown
    is_directory: bool = False

    def path(self, weights_dir: Path | None = None) -> Path:
        return resolve_weights_dir(weights_dir) / self.relative_path

    def present(self, weights_dir: Path | None = None) -> bool:
        path = self.path(weights_dir)
        return path.is_dir() and any(path.iterdir()) if self.is_directory else path.is_file()

    def require(self, weights_dir: Path | None = None) -> Path:
        """The local path, or a one-line error naming the file and where to get it."""
        path = self.path(weights_dir)
        if not self.present(weights_dir):
            kind = "folder" if self.is_directory else "file"
            raise MissingWeightsError(f"{self.used_by} needs the {kind} {path}: download it from {self.source} "
                                      f"(or set --weights-dir / ${WEIGHTS_ENV}; --weights random for a smoke test)")
        return path


_ENTRIES: dict[str, WeightsEntry] = {}


def register_weights(entry: WeightsEntry) -> WeightsEntry:
    _ENTRIES[entry.weights_id] = entry
    return entry


def weights_entry(weights_id: str) -> WeightsEntry:
    return _ENTRIES[weights_id]


def all_weights() -> list[WeightsEntry]:
    from mvm_targets.targets.registry import list_targets

    list_targets()  # importing the target modules registers their weights
    return sorted(_ENTRIES.values(), key=lambda e: (e.used_by, e.weights_id))


def resolve_weights_dir(weights_dir: Path | None = None) -> Path:
    if weights_dir is not None:
        return Path(weights_dir)
    return Path(os.environ.get(WEIGHTS_ENV) or Path.home() / ".cache" / "mvm_targets" / "weights")


def sha256_of(path: Path) -> str:
    """sha256 of a file; of a folder, over its files' relative paths and contents in sorted order."""
    digest = hashlib.sha256()
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode() + b"\0")
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def check_teacher_options(name: str, variant: str, variants: tuple[str, ...], weights: str, batch_size: int) -> None:
    """The checks every teacher constructor makes, with the same one-line messages."""
    from mvm_targets.targets.registry import UnknownTargetError

    if variant not in variants:
        raise UnknownTargetError(f"unknown variant '{variant}' for target '{name}'; known variants: "
                                 f"{', '.join(variants)}")
    if weights not in (PRETRAINED, RANDOM):
        raise ValueError(f"weights must be '{PRETRAINED}' or '{RANDOM}', got '{weights}'")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
