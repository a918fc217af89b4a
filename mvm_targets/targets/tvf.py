"""`tvf`: temporal-aware video features, the code's `3d_feature` (docs/method.md §4.7).

VIOLETv2 regresses the features of a frozen Video Swin-B (Kinetics-600, ImageNet-22K
pretraining: the same weights as the student's initial backbone) run on the whole unmasked clip
with the student's patch embedding (temporal stride 1, so one feature grid per frame), taken
after the final LayerNorm: (T, 7, 7, 1024) at 224^2, stored as (T, 49, 1024) float16 on the
32-px patch grid and regressed with L1 on masked patches.

Variants name the checkpoint: `k600` (the paper's) and `k400` (the Kinetics-400 model of the
same release). `weights="random"` builds the architecture with seeded random weights for smoke
tests; the spec then says so (`params["weights"] == "random"`, `model_id == "random:<arch>"`).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from mvm_targets.backbones.video_swin import SwinTransformer3D, build_video_swin, video_swin_config
from mvm_targets.backbones.video_swin_weights import load_official_checkpoint
from mvm_targets.targets.registry import UnknownTargetError, register_target
from mvm_targets.targets.spec import (Augmentation, ClipScope, CropRule, FlipRule, Grid, PATCH_PX, PaperScaling,
                                      TargetSpec, register_augmentation)
from mvm_targets.teachers.runtime import as_flag, load_teacher, resolve_device, resolve_precision, run_batched
from mvm_targets.teachers.weights import PRETRAINED, RANDOM, WeightsEntry, register_weights, sha256_of

_RELEASE = "https://github.com/SwinTransformer/storage/releases/download/v1.0.4/"
TVF_WEIGHTS = {
    "k600": register_weights(WeightsEntry(
        weights_id="video_swin_b_k600_22k",
        relative_path="video_swin/swin_base_patch244_window877_kinetics600_22k.pth",
        source=_RELEASE + "swin_base_patch244_window877_kinetics600_22k.pth",
        used_by="tvf:k600")),
    "k400": register_weights(WeightsEntry(
        weights_id="video_swin_b_k400_22k",
        relative_path="video_swin/swin_base_patch244_window877_kinetics400_22k.pth",
        source=_RELEASE + "swin_base_patch244_window877_kinetics400_22k.pth",
        used_by="tvf:k400")),
}
RANDOM_SEED = 0  # weights="random": the same architecture and the same weights in every process
TEMPORAL_STRIDE = 1  # VIOLETv2's patch embedding: one feature grid per input frame
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # the Kinetics models were trained on ImageNet-normalised RGB
IMAGENET_STD = (0.229, 0.224, 0.225)


def tvf_clip_shape(num_frames: int, size: int, channels: int) -> tuple[int, ...]:
    """One clip's data shape: (T, (S/32)^2, C_last), (T, 49, 1024) for Swin-B at 224^2.

    S must be a multiple of 32 so that each feature vector is exactly one 32-px patch of the
    trainer's mask grid (the network itself would pad other sizes). Used through
    functools.partial (channels depend on the architecture), which pickles.
    """
    if size <= 0 or size % PATCH_PX:
        raise ValueError(f"tvf needs the frame size S to be a positive multiple of {PATCH_PX} "
                         f"(one feature vector per {PATCH_PX}-px patch), got S={size}")
    cells = size // PATCH_PX
    return (num_frames, cells * cells, channels)


@functools.lru_cache(maxsize=None)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    # keyed by size and mtime as well, so a file replaced in place is hashed again
    return sha256_of(Path(path))


def weights_sha256(path: Path) -> str:
    """sha256 of a weights file, computed once per process (Swin-B's file is ~350 MB)."""
    stat = os.stat(path)
    return _file_sha256(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


class TVFTarget:
    """Video Swin features per frame: (B, T, S, S, 3) uint8 -> (B, T, (S/32)^2, C_last) float16."""

    def __init__(self, variant: str, model: SwinTransformer3D, device: torch.device, batch_size: int,
                 params: dict[str, Any], model_id: str, precision: str = "fp32", compile: bool = False) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.device = device
        self.batch_size = batch_size
        self.precision = resolve_precision(precision, device)
        self.compile = compile  # speed only: not in params, so not in the target id
        if params.get("precision") != self.precision:
            raise ValueError(f"params['precision'] must record the effective precision '{self.precision}', "
                             f"got {params.get('precision')!r}")
        channels = model.config.num_features
        self.spec = TargetSpec(
            name="tvf", variant=variant, version=1, grid=Grid.PATCH, dtype="float16", loss="l1",
            clip_shape=functools.partial(tvf_clip_shape, channels=channels), params=params, model_id=model_id,
            description=f"Video Swin ({params['arch']}, {params['weights']} weights) features after the final "
                        f"LayerNorm, temporal stride 1: (T, (S/32)^2, {channels}) float16 per clip",
            augmentation=tvf_augmentation(variant, params),
            clip_scope=ClipScope.CLIP,  # a video teacher: its features mean nothing on a 1-frame image
            paper_scaling=PaperScaling("sum", 1 / 3, "released code: identical to SIF"),
        )
        self._mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1, 1) * 255.0
        self._std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1, 1) * 255.0

    def compute(self, frames: np.ndarray) -> dict[str, np.ndarray]:
        """frames: (B, T, S, S, 3) uint8 RGB, S a multiple of 32 -> {"data": (B, T, (S/32)^2, C_last) float16}."""
        if frames.ndim != 5 or frames.shape[-1] != 3:
            raise ValueError(f"expected frames of shape (B, T, S, S, 3), got {frames.shape}")
        if frames.dtype != np.uint8:
            raise ValueError(f"expected uint8 frames, got {frames.dtype}")
        batch, num_frames, size = frames.shape[:3]
        shape = self.spec.clip_shape(num_frames, size)  # checks S
        if batch == 0:
            return {"data": np.zeros((0, *shape), np.float16)}
        # uint8 crosses to the device (4x less traffic than float32); normalisation happens there
        # ... and the features come back already cast to the stored float16 (half the bytes)
        features = run_batched(self._features, torch.from_numpy(np.ascontiguousarray(frames)), self.batch_size,
                               self.device, bf16=self.precision == "bf16", out_dtype=torch.float16,
                               compile=self.compile)  # (B, T, h, w, C) float16
        return {"data": features.reshape(batch, num_frames, -1, features.shape[-1]).numpy()}

    def _features(self, chunk: torch.Tensor) -> torch.Tensor:
        """(b, T, S, S, 3) uint8 -> (b, T, h, w, C)."""
        video = chunk.permute(0, 4, 1, 2, 3).float()  # (b, 3, T, S, S)
        return self.model((video - self._mean) / self._std)


@register_augmentation("tvf")
def tvf_augmentation(variant: str, params: Mapping[str, Any]) -> Augmentation:
    """Flips refused: Video Swin's features of a mirrored clip are not its mirrored features. Crops keep
    whole-clip features: shifted windows and the feature's receptive field cross every crop edge."""
    return Augmentation(flip=FlipRule.REFUSE, crop=CropRule.CONTEXT,
                        note="Video Swin's features of a mirrored clip are not its mirrored features")


@register_target("tvf", variants=("k600", "k400"))
def build_tvf(variant: str, device: str | torch.device = "cpu", weights: str = PRETRAINED,
              weights_dir: Path | str | None = None, batch_size: int = 8, arch: str = "swin-b",
              precision: str = "auto", allow_pickle: bool = False, compile: bool | str = False) -> TVFTarget:
    """`tvf:k600` (the paper's teacher) or `tvf:k400`.

    weights: "pretrained" loads the official checkpoint from the weights folder (MissingWeightsError
    naming the file and its download URL when absent); "random" uses seeded random weights.
    arch: a Video Swin preset (`swin-b` is the paper's; `tiny` is for tests). batch_size: clips per
    forward pass. precision: "auto" (bf16 where the runtime says it is fast, else fp32), "fp32" or
    "bf16"; the effective one is recorded in the spec, so it is part of the target id.
    allow_pickle: read a checkpoint whose metadata the safe tensor-only reader refuses (runs code
    from the file; only for files you trust). compile: torch.compile the forward (speed only, not in the id).
    """
    if variant not in TVF_WEIGHTS:
        raise UnknownTargetError(f"unknown variant '{variant}' for target 'tvf'; known variants: "
                                 f"{', '.join(TVF_WEIGHTS)}")
    if weights not in (PRETRAINED, RANDOM):
        raise ValueError(f"weights must be '{PRETRAINED}' or '{RANDOM}', got '{weights}'")
    config = video_swin_config(arch, temporal_stride=TEMPORAL_STRIDE)
    resolved = resolve_device(device)
    precision = resolve_precision(precision, resolved)
    params: dict[str, Any] = {"arch": arch, "weights": weights, "temporal_stride": TEMPORAL_STRIDE,
                              "input": "imagenet-normalised rgb", "layer": "final layernorm",
                              "precision": precision}  # bf16 changes the values, so it is part of the id
    if weights == RANDOM:
        params["seed"] = RANDOM_SEED
        model_id = f"random:{arch}"

        def build() -> SwinTransformer3D:
            return build_video_swin(config, seed=RANDOM_SEED).to(resolved)

        key: tuple = ("tvf", config, RANDOM, RANDOM_SEED, str(resolved))
    else:
        entry = TVF_WEIGHTS[variant]
        path = entry.require(None if weights_dir is None else Path(weights_dir))
        params["weights_sha256"] = weights_sha256(path)
        model_id = entry.weights_id

        def build() -> SwinTransformer3D:
            model = SwinTransformer3D(config)
            load_official_checkpoint(model, path, source=entry.source, allow_pickle=allow_pickle)
            return model.to(resolved)

        key = ("tvf", config, PRETRAINED, params["weights_sha256"], str(resolved))
    model = load_teacher(key, build)
    return TVFTarget(variant, model, resolved, batch_size, params, model_id, precision,  # type: ignore[arg-type]
                     compile=as_flag(compile, "compile"))
