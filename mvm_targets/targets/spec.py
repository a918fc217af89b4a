"""The contract every MVM target follows: a frozen `TargetSpec` plus a `compute` method.

Frames reach a target as one decoded batch, `(B, T, S, S, 3)` uint8 RGB at the canonical geometry
(short side resized to S, centre-cropped S x S). A target returns a dict of arrays whose leading
axis is B: `"data"` is the regression/classification target itself, shaped `(B, *spec.clip_shape(T, S))`;
any other entry is a per-clip side statistic (for example the largest flow magnitude per pair) that
the trainer may use and the store keeps next to the data.
"""

from __future__ import annotations

import enum
import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Literal, Protocol, runtime_checkable

import numpy as np

PATCH_PX = 32  # VIOLETv2 predicts one 32 x 32 patch per video token (a 7 x 7 grid at 224^2)
TOKEN_PX = 8  # the DALL-E dVAE emits one token per 8 x 8 pixels (28 x 28 at 224^2)


class Grid(str, enum.Enum):
    """Which spatial grid a target is aligned to; the trainer's mask is expanded onto it."""

    DENSE = "dense"  # one value per pixel of the S x S frame
    PATCH = "patch"  # one vector per 32-px patch (7 x 7 at S=224)
    TOKEN = "token"  # one id per 8-px cell (28 x 28 at S=224)


LossKind = Literal["l1", "l2", "ce"]


@dataclass(frozen=True)
class TargetSpec:
    """Everything the store and the trainer need to know about a target, without running it.

    `clip_shape(T, S)` gives the shape of one clip's `"data"` array. `params` holds every setting
    that changes the values; it is hashed into the target id, so two configurations never share
    a shard set.
    """

    name: str  # registry name, one of the paper's eight (pixel, hog, depth, flow, vq, sif, tvf, mmf)
    variant: str  # e.g. "paper" / "maskfeat" for hog, "dis" / "raft" for flow
    version: int  # bump whenever the computed values change
    grid: Grid
    dtype: str  # numpy dtype name of the stored "data" array
    loss: LossKind
    clip_shape: Callable[[int, int], tuple[int, ...]] = field(compare=False, repr=False)
    frames_needed: int = 1  # 2 for targets defined on consecutive frame pairs
    stored: bool = True  # False for `pixel`, which is read back from the cached frames
    params: dict[str, Any] = field(default_factory=dict)
    model_id: str | None = None  # teacher weights id, when a model makes the target
    description: str = ""

    def config_hash(self) -> str:
        """Stable 8-hex digest of everything that changes the stored values."""
        payload = {"name": self.name, "variant": self.variant, "version": self.version,
                   "dtype": self.dtype, "params": self.params, "model_id": self.model_id}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:8]

    @property
    def target_id(self) -> str:
        """Directory name of this target's shard set, e.g. `hog-paper-1a2b3c4d`."""
        return f"{self.name}-{self.variant}-{self.config_hash()}"

    def to_json(self, num_frames: int, size: int) -> str:
        """The self-description stamped into every shard (shape resolved for T and S)."""
        record = {k: v for k, v in asdict(self).items() if k != "clip_shape"}
        record["grid"] = self.grid.value
        record["clip_shape"] = list(self.clip_shape(num_frames, size))
        record["target_id"] = self.target_id
        return json.dumps(record, sort_keys=True)


@runtime_checkable
class Target(Protocol):
    """A target turns a batch of canonical frames into arrays to store."""

    spec: TargetSpec

    def compute(self, frames: np.ndarray) -> dict[str, np.ndarray]:
        """frames: (B, T, S, S, 3) uint8 -> {"data": (B, *spec.clip_shape(T, S)), ...extras}."""
        ...


def check_clip_batch(frames: np.ndarray) -> tuple[int, int, int]:
    """Validate a target's input, `(B, T, S, S, 3)` uint8; return (B, T, S)."""
    if frames.ndim != 5 or frames.shape[-1] != 3 or frames.shape[2] != frames.shape[3]:
        raise ValueError(f"expected frames of shape (B, T, S, S, 3), got {frames.shape}")
    if frames.dtype != np.uint8:
        raise ValueError(f"expected uint8 frames, got {frames.dtype}")
    return frames.shape[0], frames.shape[1], frames.shape[2]
