"""What the trainer needs to know about one MVM target, read from the shard store's self-description.

The trainer never builds a teacher: the head, the loss and the augmentation of a target follow
from its stored `TargetSpec` (grid, loss, clip shape, frames needed). That keeps violet_core
independent of which network made a target, and lets any registered target, including test-only
ones, be trained without code changes here.

Training-time tensor layout of a target, per clip (B is prepended by the collate):
    DENSE  -> (T', C, S, S) float32, T' = T - frames_needed + 1 (flow: T - 1 pairs), C >= 1
    PATCH  -> (T, h * w, D) float32, h = w = S / 32
    TOKEN  -> (T, S / 8, S / 8) int64 class ids
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mvm_targets.store.reader import CacheReader
from mvm_targets.targets.spec import PATCH_PX  # noqa: F401  (one video token predicts one 32 x 32 patch)
DEFAULT_VOCAB = 8192  # the DALL-E dVAE codebook


@dataclass(frozen=True)
class TargetInfo:
    """One MVM target as the trainer sees it.

    `ref` is the reference written in the run config (e.g. "hog", "flow:dis", "hog:maskfeat") and is
    the key of the target in batches, heads and loss names. `key` is `ref` made safe for module
    names and metric keys ("hog:maskfeat" -> "hog_maskfeat").
    """

    ref: str
    name: str  # registry name: pixel, hog, depth, flow, vq, sif, tvf, mmf, or a test-only name
    variant: str
    target_id: str
    grid: str  # "dense" | "patch" | "token"
    loss: str  # "l1" | "l2" | "ce"
    clip_shape: tuple[int, ...]  # stored per-clip shape at the cached (T, S)
    frames_needed: int = 1  # 2 for pair targets (flow)
    teacher_weights: str = ""  # "pretrained" | "random" | "" (no teacher)
    params: dict[str, Any] = field(default_factory=dict, compare=False)
    # the stored spec as read from the cache (empty for pixel and hand-built infos); it carries the
    # target's declared flip/crop behaviour (mvm_targets.targets.spec.augmentation_for)
    spec: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def key(self) -> str:
        return self.ref.replace(":", "_").replace("-", "_").replace(".", "_")

    @property
    def channels(self) -> int:
        """Output width of the head: channels for DENSE, feature dim for PATCH, vocabulary for TOKEN."""
        if self.grid == "dense":
            # (T', C, S, S) or (T, S, S) when stored without a channel axis (hog:paper, depth)
            return self.clip_shape[1] if len(self.clip_shape) == 4 else 1
        if self.grid == "patch":
            return self.clip_shape[-1]
        return int(self.params.get("vocab_size", DEFAULT_VOCAB))

    @property
    def is_pair(self) -> bool:
        return self.frames_needed == 2

    @property
    def needs_video(self) -> bool:
        """Pair targets and clip-level teachers mean nothing on a 1-frame image."""
        return self.is_pair or self.name == "tvf"


def pixel_info(num_frames: int, size: int) -> TargetInfo:
    """The pixel target is the cached frames themselves (ImageNet-normalised by the dataset)."""
    return TargetInfo(ref="pixel", name="pixel", variant="rgb", target_id="pixel", grid="dense", loss="l1",
                      clip_shape=(num_frames, 3, size, size))


def read_target_infos(reader: CacheReader, refs: list[str] | tuple[str, ...]) -> list[TargetInfo]:
    """TargetInfo for each configured ref, from the stamped spec of its shard set."""
    sampling = reader.attrs("frames")["sampling"]  # stamped into every frames shard
    infos = []
    for ref in refs:
        if ref == "pixel":
            infos.append(pixel_info(sampling["num_frames"], sampling["size"]))
            continue
        attrs = reader.attrs(ref)
        spec = attrs["target_spec"]
        infos.append(TargetInfo(
            ref=ref, name=spec["name"], variant=spec["variant"], target_id=spec["target_id"],
            grid=spec["grid"], loss=spec["loss"], clip_shape=tuple(spec["clip_shape"]),
            frames_needed=int(spec.get("frames_needed", 1)),
            teacher_weights=str(attrs.get("teacher_weights", "") or ""), params=dict(spec.get("params") or {}),
            spec=dict(spec),
        ))
    return infos
