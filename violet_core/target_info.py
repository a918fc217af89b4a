"""What the trainer needs to know about one MVM target: a thin view on its stored spec.

The trainer never builds a teacher: the head, the loss, the paper scaling and the augmentation of a
target follow from the `StoredSpec` stamped into its shards (grid, loss, clip shape, clip scope,
declared scaling), or, for a target that is never stored, from the spec its module declares. That
keeps violet_core independent of which network made a target, and lets any registered target,
including test-only ones, be trained without code changes here.

Training-time tensor layout of a target, per clip (B is prepended by the collate):
    DENSE  -> (T', C, S, S) float32, T' = T - frames_needed + 1 (pairs: T - 1), C >= 1
    PATCH  -> (T, h * w, D) float32, h = w = S / 32
    TOKEN  -> (T, S / 8, S / 8) int64 class ids
"""

from __future__ import annotations

from typing import Any, Protocol

from mvm_targets.targets.registry import derived_spec
from mvm_targets.targets.spec import PATCH_PX, PaperScaling, StoredSpec, ref_key
from violet_core.config import CACHED, ONLINE

__all__ = ["DEFAULT_VOCAB", "PATCH_PX", "TargetInfo", "read_target_infos"]

DEFAULT_VOCAB = 8192  # the DALL-E dVAE codebook


class TargetInfo:
    """One MVM target as the trainer sees it: the reference written in the run config plus its stored spec.

    `ref` (e.g. "hog", "flow:dis", "hog:maskfeat") names the target in the run config; `key` is
    `ref_key(ref)`, the one file-safe form used for batch entries, heads and loss names (`mvm_<key>`).
    Every other property reads `spec`. Hand-built infos (tests, benchmarks) may pass the spec's fields
    as keywords instead of a spec. `source` says where the values come from: "cached" (the shard
    store, augmented with the frames) or "online" (computed in the training step from the augmented
    clip, violet_core.online_targets; docs/method.md §11).
    """

    __slots__ = ("ref", "spec", "teacher_weights", "source")

    def __init__(self, ref: str, spec: StoredSpec | None = None, teacher_weights: str = "", source: str = CACHED,
                 **fields: Any) -> None:
        if spec is None:
            record = {"target_id": fields.pop("target_id", ref), **fields}
            record.setdefault("dtype", "float32")
            record["grid"] = str(record.get("grid", ""))
            spec = StoredSpec.from_record(record)
        elif fields:
            raise TypeError(f"TargetInfo: pass either a spec or its fields, not both ({', '.join(fields)})")
        self.ref, self.spec, self.teacher_weights, self.source = ref, spec, teacher_weights or "", source

    def __repr__(self) -> str:
        return f"TargetInfo(ref={self.ref!r}, target_id={self.spec.target_id!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TargetInfo) and (self.ref, self.spec) == (other.ref, other.spec)

    def __hash__(self) -> int:
        return hash((self.ref, self.spec.target_id))

    @property
    def key(self) -> str:
        return ref_key(self.ref)

    name = property(lambda self: self.spec.name)
    variant = property(lambda self: self.spec.variant)
    target_id = property(lambda self: self.spec.target_id)
    grid = property(lambda self: self.spec.grid.value)  # "dense" | "patch" | "token"
    loss = property(lambda self: self.spec.loss)  # "l1" | "l2" | "cosine" | "ce"
    loss_terms = property(lambda self: self.spec.loss_terms)  # feature widths scored apart, or None (one term)
    clip_shape = property(lambda self: self.spec.clip_shape)  # stored per-clip shape at the cached (T, S)
    frames_needed = property(lambda self: self.spec.frames_needed)
    params = property(lambda self: self.spec.params)
    stored = property(lambda self: self.spec.stored)

    @property
    def online(self) -> bool:
        """Computed in the training step from the augmented clip: no flip or crop rule applies."""
        return self.source == ONLINE

    @property
    def paper_scaling(self) -> PaperScaling | None:
        return self.spec.paper_scaling

    @property
    def channels(self) -> int:
        """Output width of the head: channels for DENSE, feature dim for PATCH, vocabulary for TOKEN."""
        if self.grid == "dense":
            # (T', C, S, S) or (T, S, S) when stored without a channel axis
            return self.clip_shape[1] if len(self.clip_shape) == 4 else 1
        if self.grid == "patch":
            return self.clip_shape[-1]
        return int(self.params.get("vocab_size", DEFAULT_VOCAB))

    @property
    def is_pair(self) -> bool:
        return self.frames_needed == 2

    @property
    def needs_video(self) -> bool:
        """The spec's declaration: pair and whole-clip targets mean nothing on a 1-frame image."""
        return self.spec.needs_video


class SpecSource(Protocol):
    """What `read_target_infos` reads: a CacheReader (or a stand-in with the same two methods)."""

    def attrs(self, ref: str = "frames") -> dict: ...


def read_target_infos(reader: SpecSource, refs: list[str] | tuple[str, ...]) -> list[TargetInfo]:
    """TargetInfo for each configured ref: the stamped spec of its shard set, or, for a target the
    reader derives from the frames, its module's spec at the cached (T, S)."""
    infos = []
    for ref in refs:
        spec_of = getattr(reader, "spec", None)
        spec = spec_of(ref) if spec_of is not None else _spec_from_attrs(reader, ref)
        weights = str(reader.attrs(ref).get("teacher_weights", "") or "") if spec.stored else ""
        infos.append(TargetInfo(ref, spec, teacher_weights=weights))
    return infos


def _spec_from_attrs(reader: SpecSource, ref: str) -> StoredSpec:
    """For a reader that only exposes the stamped attributes: the set's spec, or the spec a target
    module declares for a target derived from the frames."""
    try:
        return StoredSpec.from_record(reader.attrs(ref)["target_spec"])
    except KeyError:
        derived = derived_spec(ref)
        if derived is None:
            raise
    sampling = reader.attrs("frames")["sampling"]
    return derived.stored_spec(int(sampling["num_frames"]), int(sampling["size"]))
