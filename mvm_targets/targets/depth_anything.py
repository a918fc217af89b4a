"""`depthany`: relative inverse depth from a frozen Depth Anything V2, with transformers' classes.

Depth Anything V2 (a DINOv2 encoder with a DPT decoder) is published for transformers as
`depth-anything/Depth-Anything-V2-{Small,Base,Large}-hf` and loads with
`DepthAnythingForDepthEstimation.from_pretrained(folder, local_files_only=True)`. Its image processor
resizes to a multiple of 14 with a 518-px lower bound (518 x 518 for square frames; bicubic) and
normalises with ImageNet's mean and std; the frame is fed that way here (`input_size`, default 518,
any multiple of 14). Output: `predicted_depth` (relative disparity, larger is nearer, no scale or
shift applied) resized bilinearly to S x S, stored as (T, S, S) float16 per clip, regressed with L1
as `depth` is. The decoding and resizing are `depth`'s own (`depth.preprocess`, `depth._dpt_forward`).
A separate name from `depth`, whose variants all run DPT; the two compare as teachers of one kind.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from mvm_targets.targets import depth
from mvm_targets.targets.registry import register_target
from mvm_targets.targets.spec import Grid, TargetSpec, check_clip_batch, register_augmentation
from mvm_targets.teachers.weights import (PRETRAINED, RANDOM, WeightsEntry, WeightsMode, check_teacher_options,
                                          register_weights)

VARIANTS = ("v2-small", "v2-base", "v2-large")
DEFAULT_INPUT_SIZE = 518  # the image processor's lower bound on each side
PATCH = 14  # DINOv2's patch
REPOS = {variant: f"depth-anything/Depth-Anything-V2-{variant[3:].title()}-hf" for variant in VARIANTS}
WEIGHTS = {variant: register_weights(WeightsEntry(
    weights_id=f"depth-anything-{variant}", used_by=f"depthany:{variant}", is_directory=True,
    relative_path=f"huggingface/{repo}", source=f"https://huggingface.co/{repo}")) for variant, repo in REPOS.items()}
# Architecture fields of the published config.json files, for `weights="random"` only.
RANDOM_CONFIGS: dict[str, dict[str, Any]] = {
    "v2-small": dict(hidden=384, layers=12, heads=6, out=(3, 6, 9, 12), neck=(48, 96, 192, 384), fusion=64),
    "v2-base": dict(hidden=768, layers=12, heads=12, out=(3, 6, 9, 12), neck=(96, 192, 384, 768), fusion=128),
    "v2-large": dict(hidden=1024, layers=24, heads=16, out=(5, 12, 18, 24), neck=(256, 512, 1024, 1024), fusion=256),
}


def random_config(variant: str) -> Any:
    """The DepthAnythingConfig of a variant's architecture (DINOv2 backbone, DPT neck and head)."""
    from transformers import DepthAnythingConfig, Dinov2Config

    arch = RANDOM_CONFIGS[variant]
    backbone = Dinov2Config(hidden_size=arch["hidden"], num_hidden_layers=arch["layers"],
                            num_attention_heads=arch["heads"], intermediate_size=4 * arch["hidden"],
                            patch_size=PATCH, image_size=DEFAULT_INPUT_SIZE, layer_norm_eps=1e-6,
                            out_indices=list(arch["out"]), reshape_hidden_states=False)
    return DepthAnythingConfig(backbone_config=backbone, patch_size=PATCH, reassemble_hidden_size=arch["hidden"],
                               neck_hidden_sizes=list(arch["neck"]), fusion_hidden_size=arch["fusion"])


class DepthAnythingTarget:
    """Depth Anything V2 disparity: (B, T, S, S, 3) uint8 -> {"data": (B, T, S, S) float16}.

    The network is loaded on the first `compute` (once per process), so the target pickles cheaply.
    """

    def __init__(self, variant: str, *, device: str = "cpu", weights: WeightsMode = PRETRAINED,
                 weights_dir: Path | None = None, batch_size: int = 8, input_size: int = DEFAULT_INPUT_SIZE,
                 precision: str = "auto", channels_last: bool | str | None = None, compile: bool | str = False) -> None:
        from mvm_targets.teachers.runtime import as_flag, resolve_channels_last, resolve_device, resolve_precision

        check_teacher_options("depthany", variant, VARIANTS, weights, batch_size)
        if input_size < PATCH or input_size % PATCH:
            raise ValueError(f"depthany: input_size must be a positive multiple of {PATCH}, got {input_size}")
        self.variant, self.input_size, self.batch_size = variant, int(input_size), batch_size
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        # speed only (layout of the DPT head's convolutions, torch.compile): not in params or the id
        self.channels_last = resolve_channels_last(channels_last, self.device)
        self.compile = as_flag(compile, "compile")
        # resolved now, so that a missing folder fails when the target is built, not mid-run
        self.weights_path = WEIGHTS[variant].require(weights_dir) if weights == PRETRAINED else None
        params: dict[str, Any] = {
            "input": f"{self.input_size} bicubic-antialias", "normalisation": "imagenet",
            "output": "predicted_depth, bilinear to S", "precision": self.precision, "weights": weights,
        }
        if self.weights_path is not None:
            params["weights_sha256"] = depth._sha256_once(str(self.weights_path))
        self.spec = TargetSpec(
            name="depthany", variant=variant, version=1, grid=Grid.DENSE, dtype="float16", loss="l1",
            clip_shape=depth.depth_clip_shape, params=params,
            model_id=REPOS[variant] if self.weights_path else f"{RANDOM}:depth-anything-{variant}",
            description="Depth Anything V2 relative inverse depth (un-normalised), (T, S, S) float16",
            augmentation=depthany_augmentation(variant, params),
            paper_scaling=None,  # the paper had no such teacher: the plain masked mean in every mode
        )

    def model(self) -> Any:
        """The DepthAnythingForDepthEstimation module, built once per process (and per device / weights)."""
        from mvm_targets.teachers.runtime import load_teacher

        key = ("depthany", self.variant, str(self.weights_path) if self.weights_path else RANDOM, str(self.device))
        return load_teacher(key, self._build, channels_last=self.channels_last)

    def compute(self, frames: np.ndarray) -> dict[str, np.ndarray]:
        """frames: (B, T, S, S, 3) uint8 -> {"data": (B, T, S, S) float16}."""
        import torch

        from mvm_targets.teachers.runtime import run_batched

        batch, num_frames, size = check_clip_batch(frames)
        flat = torch.from_numpy(np.ascontiguousarray(frames).reshape(batch * num_frames, size, size, 3))
        forward = functools.partial(depth._dpt_forward, self.model(), self.input_size, True)  # ImageNet statistics
        # clipped to float16's largest value in `_dpt_forward`, then cast to float16 on the device
        disparity = run_batched(forward, flat, self.batch_size, self.device, bf16=self.precision == "bf16",
                                out_dtype=torch.float16, compile=self.compile).numpy()
        return {"data": disparity.reshape(batch, num_frames, size, size)}

    def _build(self) -> Any:
        import torch

        from mvm_targets._compat import import_torchvision

        import_torchvision()  # transformers' vision classes import torchvision
        from transformers import DepthAnythingForDepthEstimation

        if self.weights_path is not None:
            model = DepthAnythingForDepthEstimation.from_pretrained(self.weights_path, local_files_only=True,
                                                                    dtype=torch.float32)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(depth.RANDOM_SEED)  # "random" weights are the same in every process
                model = DepthAnythingForDepthEstimation(random_config(self.variant))
        return model.to(self.device)


@register_augmentation("depthany")
def depthany_augmentation(variant: str, params: Mapping[str, Any]) -> Any:
    """As `depth`: flips refused (a network's depth of a mirrored frame is not its mirrored depth), and
    crops keep whole-frame depth (the ViT sees the whole frame)."""
    return depth.depth_augmentation(variant, params)


@register_target("depthany", variants=VARIANTS)
def build_depthany(variant: str, device: str = "cpu", weights: WeightsMode = PRETRAINED,
                   weights_dir: Path | None = None, batch_size: int = 8, input_size: int = DEFAULT_INPUT_SIZE,
                   precision: str = "auto", channels_last: bool | str | None = None,
                   compile: bool | str = False) -> DepthAnythingTarget:
    """`depthany:v2-small` (default), `:v2-base` or `:v2-large`; options as `depth`'s (input_size: a multiple of 14)."""
    return DepthAnythingTarget(variant, device=device, weights=weights, weights_dir=weights_dir,
                               batch_size=batch_size, input_size=int(input_size), precision=precision,
                               channels_last=channels_last, compile=compile)
