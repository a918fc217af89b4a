"""The contract every MVM target follows: a frozen `TargetSpec` plus a `compute` method.

Frames reach a target as one decoded batch, `(B, T, S, S, 3)` uint8 RGB at the canonical geometry
(short side resized to S, centre-cropped S x S). A target returns a dict of arrays whose leading
axis is B: `"data"` is the regression/classification target itself, shaped `(B, *spec.clip_shape(T, S))`;
any other entry is a per-clip side statistic (for example the largest flow magnitude per pair) that
the trainer may use and the store keeps next to the data.

A target also declares how it follows the trainer's augmentations (`Augmentation`): under a
horizontal flip of the frames it is `exact` (a fixed transform of the stored target is the target of
the mirrored frames), `recompute` (only computing it again on the mirrored frames gives that) or
`refuse` (neither: a network's output on mirrored frames is not its mirrored output); under a
grid-aligned crop, the stored values restricted to the crop are the target of the cropped frames
everywhere (`exact`), except near the crop's edges inside the frame (`border`), or in general nowhere
(`context`). The declaration is stamped into every shard; `augmentation_for` reads it back, from the
target's own module when that is registered (so caches written before targets declared it still work).
"""

from __future__ import annotations

import enum
import functools
import hashlib
import json
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Literal, Mapping, Protocol, runtime_checkable

import numpy as np

PATCH_PX = 32  # VIOLETv2 predicts one 32 x 32 patch per video token (a 7 x 7 grid at 224^2)
TOKEN_PX = 8  # the DALL-E dVAE emits one token per 8 x 8 pixels (28 x 28 at 224^2)


class Grid(str, enum.Enum):
    """Which spatial grid a target is aligned to; the trainer's mask is expanded onto it."""

    DENSE = "dense"  # one value per pixel of the S x S frame
    PATCH = "patch"  # one vector per 32-px patch (7 x 7 at S=224)
    TOKEN = "token"  # one id per 8-px cell (28 x 28 at S=224)


LossKind = Literal["l1", "l2", "ce"]


class FlipRule(str, enum.Enum):
    """How a target follows a horizontal flip of the frames it was computed on."""

    EXACT = "exact"  # a fixed transform of the stored target is the target of the mirrored frames
    RECOMPUTE = "recompute"  # only computing it again from the mirrored frames gives that; cheap enough per item
    REFUSE = "refuse"  # no way short of running the teacher again: mirroring the stored target approximates


class CropRule(str, enum.Enum):
    """What a grid-aligned crop of the stored target (computed on the whole frame) is, compared with
    the target computed on the cropped frames."""

    EXACT = "exact"  # equal for every grid-aligned crop
    BORDER = "border"  # equal except within `crop_margin_px` of a crop edge that lies inside the frame
    CONTEXT = "context"  # values depend on the whole frame: the crop keeps full-frame values, which differ


# One clip's stored target and its extras (bare names, e.g. "max_magnitude") -> the same after a transform.
ClipTransform = Callable[[np.ndarray, dict[str, np.ndarray]], tuple[np.ndarray, dict[str, np.ndarray]]]


@dataclass(frozen=True)
class Augmentation:
    """A target's declared behaviour under the trainer's horizontal flip and grid-aligned crop.

    `mirror` (EXACT only): one clip's stored target and extras -> those of the mirrored frames.
    `recompute` (RECOMPUTE only): one clip's frames (T, S, S, 3) uint8 -> {"data": the clip's target,
        its extras}, exactly what `compute` stores for that clip.
    `crop_extras`: a cropped clip's target and its extras -> its extras (default: kept as they are).
    The default, for a target that declares nothing, refuses flips and promises nothing about crops.
    """

    flip: FlipRule = FlipRule.REFUSE
    crop: CropRule = CropRule.CONTEXT
    crop_margin_px: int = 0  # BORDER: how far from an inner crop edge values may differ
    mirror: ClipTransform | None = field(default=None, compare=False, repr=False)
    recompute: Callable[[np.ndarray], dict[str, np.ndarray]] | None = field(default=None, compare=False, repr=False)
    crop_extras: ClipTransform | None = field(default=None, compare=False, repr=False)
    note: str = ""  # why, in a few words (shown in errors and docs)

    def __post_init__(self) -> None:
        object.__setattr__(self, "flip", FlipRule(self.flip))
        object.__setattr__(self, "crop", CropRule(self.crop))
        if (self.flip is FlipRule.EXACT) != (self.mirror is not None):
            raise ValueError("an Augmentation has a mirror transform exactly when its flip is 'exact'")
        if (self.flip is FlipRule.RECOMPUTE) != (self.recompute is not None):
            raise ValueError("an Augmentation has a recompute function exactly when its flip is 'recompute'")
        if (self.crop is CropRule.BORDER) != (self.crop_margin_px > 0):
            raise ValueError("an Augmentation has a positive crop_margin_px exactly when its crop is 'border'")

    def record(self) -> dict[str, Any]:
        """What is stamped into the shards' spec."""
        return {"flip": self.flip.value, "crop": self.crop.value, "crop_margin_px": self.crop_margin_px}


AugmentationBuilder = Callable[[str, Mapping[str, Any]], Augmentation]
_AUGMENTATIONS: dict[str, AugmentationBuilder] = {}


def register_augmentation(name: str) -> Callable[[AugmentationBuilder], AugmentationBuilder]:
    """Register `builder(variant, params) -> Augmentation` for target `name`; its module uses the same
    builder for its spec, so the stamped declaration and the trainer's transforms agree."""

    def decorator(builder: AugmentationBuilder) -> AugmentationBuilder:
        _AUGMENTATIONS[name] = builder
        return builder

    return decorator


def augmentation_for(record: Mapping[str, Any]) -> Augmentation:
    """The Augmentation of a stored target spec (`json.loads(attrs["target_spec"])`, or any mapping
    with its "name", "variant", "params" and optionally "flip", "crop", "crop_margin_px").

    A target whose module is registered gets that module's declaration, also when the record has
    none (caches written before targets declared it). Any other target gets its stored declaration,
    except that it cannot be flipped exactly without its module's transform, so it refuses flips.
    """
    params = json.dumps(record.get("params") or {}, sort_keys=True, default=str)
    stored = (str(record.get("crop", CropRule.CONTEXT.value)), int(record.get("crop_margin_px", 0) or 0))
    return _augmentation(str(record["name"]), str(record.get("variant", "")), params, stored)


@functools.lru_cache(maxsize=None)
def _augmentation(name: str, variant: str, params: str, stored: tuple[str, int]) -> Augmentation:
    from mvm_targets.targets.registry import list_targets

    list_targets()  # imports the built-in target modules, which register their builders
    builder = _AUGMENTATIONS.get(name)
    if builder is not None:
        return builder(variant, json.loads(params))
    crop, margin = stored
    if crop not in {c.value for c in CropRule} or (crop == CropRule.BORDER.value) != (margin > 0):
        crop, margin = CropRule.CONTEXT.value, 0
    return Augmentation(crop=CropRule(crop), crop_margin_px=margin,
                        note=f"no module here declares how target '{name}' follows a flip")


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
    # how the target follows flips and crops (module docstring); not in the id: it changes no value
    augmentation: Augmentation = field(default_factory=Augmentation, compare=False, repr=False)

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
        record = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("clip_shape", "augmentation")}
        record.update(self.augmentation.record())
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
