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

import dataclasses
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


LossKind = Literal["l1", "l2", "ce", "cosine"]
LOSS_KINDS: tuple[str, ...] = ("l1", "l2", "ce", "cosine")
REGRESSION_LOSSES = ("l1", "l2", "cosine")  # the kinds a float target is regressed with (docs/method.md §2)


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
    from mvm_targets.targets.registry import load_target

    load_target(name)  # imports the target's module, which registers its builder
    builder = _AUGMENTATIONS.get(name)
    if builder is not None:
        return builder(variant, json.loads(params))
    crop, margin = stored
    if crop not in {c.value for c in CropRule} or (crop == CropRule.BORDER.value) != (margin > 0):
        crop, margin = CropRule.CONTEXT.value, 0
    return Augmentation(crop=CropRule(crop), crop_margin_px=margin,
                        note=f"no module here declares how target '{name}' follows a flip")


class ClipScope(str, enum.Enum):
    """What a target needs from a clip: it decides whether the target means anything on 1-frame images."""

    FRAME = "frame"  # each frame on its own (an image dataset works)
    PAIR = "pair"  # consecutive frame pairs (t, t+1)
    CLIP = "clip"  # the whole clip at once, e.g. a video teacher


@dataclass(frozen=True)
class PaperScaling:
    """How the released code scales a target's MVM loss (used when the trainer runs in paper mode).

    "mean" averages over masked elements (positions x channels); "sum" sums over the feature axis of
    each masked position and averages over positions. `factor` multiplies the result.
    """

    reduction: Literal["mean", "sum"]
    factor: float
    note: str = ""  # where the numbers come from, in a few words

    def __post_init__(self) -> None:
        if self.reduction not in ("mean", "sum"):
            raise ValueError(f"PaperScaling.reduction must be 'mean' or 'sum', got {self.reduction!r}")
        if not float(self.factor) > 0:
            raise ValueError(f"PaperScaling.factor must be positive, got {self.factor!r}")

    def record(self) -> dict[str, Any]:
        return {"reduction": self.reduction, "factor": float(self.factor), "note": self.note}


def parse_loss_terms(value: Any, name: str) -> tuple[int, ...] | None:
    """A `loss_terms` declaration (None, or widths as a tuple or a stored JSON list) -> a tuple of positive ints."""
    if value is None:
        return None
    widths = tuple(value) if isinstance(value, (tuple, list)) else None
    if not widths or not all(isinstance(w, (int, np.integer)) and not isinstance(w, bool) and w > 0 for w in widths):
        raise ValueError(f"target '{name}': loss_terms must be a non-empty list of positive widths, got {value!r}")
    return tuple(int(w) for w in widths)


def check_loss(name: str, grid: Grid, dtype: str, loss: str, loss_terms: tuple[int, ...] | None) -> None:
    """Refuse a loss kind the trainer has no meaning for on this grid and dtype (one line naming the target).

    Cosine compares whole vectors, so it needs a feature vector per position (PATCH) of floats; loss
    terms slice that vector, so they need a PATCH regression target too."""
    if loss not in LOSS_KINDS:
        raise ValueError(f"target '{name}': loss must be one of {', '.join(LOSS_KINDS)}, got {loss!r}")
    is_float = np.dtype(dtype).kind == "f"
    if loss == "cosine" and (Grid(grid) is not Grid.PATCH or not is_float):
        raise ValueError(f"target '{name}': the cosine loss needs a float patch-grid target, "
                         f"got grid={Grid(grid).value} dtype={dtype}")
    if loss_terms is not None and (Grid(grid) is not Grid.PATCH or loss not in REGRESSION_LOSSES or not is_float):
        raise ValueError(f"target '{name}': loss_terms need a float patch-grid target regressed with "
                         f"{', '.join(REGRESSION_LOSSES)}, got grid={Grid(grid).value} dtype={dtype} loss={loss}")


def check_term_widths(name: str, loss_terms: tuple[int, ...], clip_shape: tuple[int, ...] | list[int]) -> None:
    """The declared term widths must tile the feature axis D (the last axis of the clip shape) exactly."""
    width = int(clip_shape[-1])
    if sum(loss_terms) != width:
        raise ValueError(f"target '{name}': loss_terms {list(loss_terms)} sum to {sum(loss_terms)}, "
                         f"not the feature width {width}")


# One clip's canonical frames (T, S, S, 3) uint8 -> the target's data, shaped `clip_shape(T, S)`.
DeriveFromFrames = Callable[[np.ndarray], np.ndarray]
# One clip's data as stored (`clip_shape(T, S)`) and the frame side S -> one (S, S, 3) uint8 picture per
# frame (or per frame pair) for `mvmtargets show`.
PictureFunction = Callable[[np.ndarray, int], list[np.ndarray]]


@dataclass(frozen=True)
class TargetSpec:
    """Everything the store and the trainer need to know about a target, without running it.

    `clip_shape(T, S)` gives the shape of one clip's `"data"` array. `params` holds every setting
    that changes the values; it is hashed into the target id, so two configurations never share
    a shard set.
    """

    name: str  # registry name (the paper's eight, or any name a module registers)
    variant: str  # e.g. "paper" / "maskfeat" for hog, "dis" / "raft" for flow
    version: int  # bump whenever the computed values change
    grid: Grid
    dtype: str  # numpy dtype name of the stored "data" array
    loss: LossKind
    clip_shape: Callable[[int, int], tuple[int, ...]] = field(compare=False, repr=False)
    frames_needed: int = 1  # 2 for targets defined on consecutive frame pairs
    stored: bool = True  # False: never written; `derive` makes it from the cached frames
    params: dict[str, Any] = field(default_factory=dict)
    model_id: str | None = None  # teacher weights id, when a model makes the target
    description: str = ""
    # Declarations below change no stored value, so none of them is in `config_hash()`: adding or
    # changing one keeps every existing target id (and cache) valid.
    # how the target follows flips and crops (module docstring)
    augmentation: Augmentation = field(default_factory=Augmentation, compare=False, repr=False)
    # what the target needs from a clip; None = PAIR when frames_needed == 2, else FRAME
    clip_scope: ClipScope | None = field(default=None, compare=False)
    # the released code's loss scaling for this target; None = no paper scaling (plain masked mean)
    paper_scaling: PaperScaling | None = field(default=None, compare=False)
    # stored=False only: one clip's frames -> its data (the trainer and the reader call this)
    derive: DeriveFromFrames | None = field(default=None, compare=False, repr=False)
    # optional picture of one clip's data for `mvmtargets show`; None = the default of its grid
    picture: PictureFunction | None = field(default=None, compare=False, repr=False)
    # True: the trainer normalises the values as it normalises the video input (ImageNet mean and std
    # per channel of (T, 3, S, S) values in 0..255), e.g. a target that is the frames themselves
    normalize_as_input: bool = field(default=False, compare=False)
    # PATCH regression only: widths of consecutive slices of the feature axis, each scored as its own
    # loss term (e.g. one per teacher layer), summing to D; None = the whole vector is one term
    loss_terms: tuple[int, ...] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "grid", Grid(self.grid))
        object.__setattr__(self, "loss_terms", parse_loss_terms(self.loss_terms, self.name))
        check_loss(self.name, self.grid, self.dtype, self.loss, self.loss_terms)
        scope = self.clip_scope
        if scope is None:
            scope = ClipScope.PAIR if self.frames_needed == 2 else ClipScope.FRAME
        object.__setattr__(self, "clip_scope", ClipScope(scope))
        if self.stored == (self.derive is not None):
            raise ValueError(f"target '{self.name}': a TargetSpec has a derive function exactly when stored=False")

    def config_hash(self) -> str:
        """Stable 8-hex digest of everything that changes the stored values."""
        payload = {"name": self.name, "variant": self.variant, "version": self.version,
                   "dtype": self.dtype, "params": self.params, "model_id": self.model_id}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:8]

    @property
    def target_id(self) -> str:
        """Directory name of this target's shard set, e.g. `hog-paper-1a2b3c4d`."""
        return f"{self.name}-{self.variant}-{self.config_hash()}"

    def record(self, num_frames: int, size: int, default_variant: bool | None = None) -> dict[str, Any]:
        """The self-description stamped into every shard (shape resolved for T and S), as a JSON-able dict.

        `default_variant` says whether a bare name (`hog`) means this variant; None asks the registry.
        """
        skipped = ("clip_shape", "augmentation", "clip_scope", "paper_scaling", "derive", "picture",
                   "normalize_as_input", "loss_terms")
        record = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skipped}
        record.update(self.augmentation.record())
        record["grid"] = self.grid.value
        record["clip_shape"] = list(self.clip_shape(num_frames, size))
        record["target_id"] = self.target_id
        record["clip_scope"] = self.clip_scope.value
        record["paper_scaling"] = self.paper_scaling.record() if self.paper_scaling else None
        if default_variant is None:
            from mvm_targets.targets.registry import is_default_variant

            default_variant = is_default_variant(self.name, self.variant)
        record["default_variant"] = default_variant
        if self.normalize_as_input:  # written only when set, so other records keep their exact form
            record["normalize_as_input"] = True
        if self.loss_terms is not None:  # likewise
            check_term_widths(self.name, self.loss_terms, record["clip_shape"])
            record["loss_terms"] = list(self.loss_terms)
        return record

    def stored_spec(self, num_frames: int, size: int) -> "StoredSpec":
        """This spec as the store and the trainer see it at (T, S) (with `derive` for a non-stored one)."""
        return dataclasses.replace(StoredSpec.from_record(self.record(num_frames, size)), derive=self.derive)

    def to_json(self, num_frames: int, size: int) -> str:
        """The self-description stamped into every shard: `record()` as sorted JSON."""
        return json.dumps(self.record(num_frames, size), sort_keys=True)


@dataclass(frozen=True)
class StoredSpec:
    """A target as stamped into its shards (`TargetSpec.record`): what the store and the trainer read.

    Built from the stored record alone, so reading a cache imports no target module. Records written
    before a declaration existed lack it: `clip_scope` and `paper_scaling` are then taken from the
    target's registered module when there is one (else FRAME/PAIR from `frames_needed`, and none);
    a record without `loss_terms` scores its whole feature vector as one loss term.
    """

    name: str
    variant: str
    target_id: str
    grid: Grid
    dtype: str
    loss: str
    clip_shape: tuple[int, ...]  # one clip's data at the cached (T, S)
    frames_needed: int = 1
    clip_scope: ClipScope = ClipScope.FRAME
    stored: bool = True
    version: int = 0
    params: dict[str, Any] = field(default_factory=dict, compare=False)
    model_id: str | None = None
    description: str = field(default="", compare=False)
    paper_scaling: PaperScaling | None = None
    default_variant: bool | None = None  # None: written before records said it
    normalize_as_input: bool = False  # the trainer normalises the values as it normalises its input frames
    loss_terms: tuple[int, ...] | None = None  # widths of the feature slices scored apart; None: one term
    record: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    # stored=False only: the module's function from one clip's frames to its data (never in a record)
    derive: DeriveFromFrames | None = field(default=None, compare=False, repr=False)

    @classmethod
    def from_record(cls, record: Mapping[str, Any], declarations: bool = True) -> "StoredSpec":
        """Parse a stored record (`json.loads(attrs["target_spec"])`); a missing field is a one-line error.

        `declarations=False` never asks a target module for what an older record lacks (the store's
        resolution of references uses this, so reading a cache imports no target module)."""
        missing = [k for k in ("name", "variant", "target_id", "grid", "dtype", "clip_shape") if k not in record]
        if missing:
            raise ValueError(f"stored target spec of '{record.get('target_id', '?')}' lacks {', '.join(missing)}")
        frames_needed = int(record.get("frames_needed", 1) or 1)
        declared = None
        if declarations and ("clip_scope" not in record or "paper_scaling" not in record):
            declared = _declared_spec(str(record["name"]), str(record["variant"]), str(record["grid"]))
        if "clip_scope" in record:
            scope = ClipScope(record["clip_scope"])
        elif declared is not None:
            scope = declared.clip_scope
        else:
            scope = ClipScope.PAIR if frames_needed == 2 else ClipScope.FRAME
        if "paper_scaling" in record:
            raw = record["paper_scaling"]
            scaling = PaperScaling(raw["reduction"], float(raw["factor"]), str(raw.get("note", ""))) if raw else None
        else:
            scaling = declared.paper_scaling if declared is not None else None
        default = record.get("default_variant")
        terms = parse_loss_terms(record.get("loss_terms"), str(record["name"]))  # absent in older records: one term
        if terms is not None:
            check_loss(str(record["name"]), Grid(record["grid"]), str(record["dtype"]), str(record.get("loss", "")),
                       terms)
            check_term_widths(str(record["name"]), terms, record["clip_shape"])
        return cls(name=str(record["name"]), variant=str(record["variant"]), target_id=str(record["target_id"]),
                   grid=Grid(record["grid"]), dtype=str(record["dtype"]), loss=str(record.get("loss", "")),
                   clip_shape=tuple(int(n) for n in record["clip_shape"]), frames_needed=frames_needed,
                   clip_scope=scope, stored=bool(record.get("stored", True)), version=int(record.get("version", 0)),
                   params=dict(record.get("params") or {}), model_id=record.get("model_id"),
                   description=str(record.get("description", "")), paper_scaling=scaling,
                   default_variant=None if default is None else bool(default),
                   normalize_as_input=bool(record.get("normalize_as_input", False)), loss_terms=terms,
                   record=dict(record))

    @property
    def ref(self) -> str:
        """The canonical reference, `name:variant`."""
        return f"{self.name}:{self.variant}"

    @property
    def codec(self) -> str:
        """The storage codec of the set (`params["codec"]`, absent: the default; docs/method.md §8.1)."""
        from mvm_targets.store.codecs import codec_of_record

        return codec_of_record(self.record or {"params": self.params}).name

    @property
    def augmentation(self) -> Augmentation:
        """The declared flip and crop behaviour (`augmentation_for`)."""
        return augmentation_for(self.record)

    @property
    def needs_video(self) -> bool:
        """Whether the target means nothing on 1-frame images (pairs or a whole-clip teacher)."""
        return self.clip_scope is not ClipScope.FRAME

    def matches(self, ref: str) -> bool:
        """Whether `ref` names this set: its exact id, `name:variant`, or a bare name meaning its default
        variant. A bare name also matches a record that does not say whether it is the default
        (older caches); callers refuse it when several such sets share the name."""
        if ref == self.target_id:
            return True
        name, variant = split_ref(ref)
        if name != self.name:
            return False
        if variant is not None:
            return variant == self.variant
        return self.default_variant is not False


def with_codec(spec: TargetSpec, codec: str) -> TargetSpec:
    """`spec` stored with the codec named `codec` (docs/method.md §8.1): the codec becomes
    `params["codec"]`, so it is part of the target id, except the default codec, which leaves the params
    (and the id) as they are. A codec that does not fit the target is a one-line ValueError."""
    from mvm_targets.store.codecs import CODEC_PARAM, CodecError, codec_named

    try:
        chosen = codec_named(codec)
    except CodecError as error:
        raise ValueError(f"target '{spec.name}:{spec.variant}': {error}") from None
    problem = chosen.problem(spec.grid.value, spec.dtype, spec.stored)
    if problem:
        raise ValueError(f"target '{spec.name}:{spec.variant}': codec '{chosen.name}' {problem}")
    params = {k: v for k, v in spec.params.items() if k != CODEC_PARAM}
    if not chosen.is_default:
        params[CODEC_PARAM] = chosen.name
    return dataclasses.replace(spec, params=params)


def _declared_spec(name: str, variant: str, grid: str) -> "TargetSpec | None":
    from mvm_targets.errors import MvmTargetsError
    from mvm_targets.targets.registry import declared_spec

    try:
        return declared_spec(name, variant, grid)
    except (MvmTargetsError, ImportError):
        # the target modules cannot all be imported here (a missing optional dependency): a record
        # without declarations then keeps the defaults, as for a target no module here registers
        return None


def split_ref(ref: str) -> tuple[str, str | None]:
    """`"hog:maskfeat"` -> ("hog", "maskfeat"); `"hog"` -> ("hog", None). No registry lookup (aliases are
    resolved by `registry.parse_target_ref`)."""
    name, sep, variant = ref.partition(":")
    return name.strip(), (variant.strip() or None) if sep else None


def ref_key(ref: str) -> str:
    """The one file- and module-safe key of a target reference, used for batch entries, heads, loss and
    metric names (`mvm_<key>`): `hog` -> `hog`, `flow:dis` -> `flow_dis`, `hog-paper-1a2b3c4d` ->
    `hog_paper_1a2b3c4d`. It depends only on the reference as written, so a run keeps its metric names."""
    return "".join(c if c.isalnum() or c == "_" else "_" for c in ref.strip())


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
