"""`depth`: relative inverse depth from a frozen DPT (docs/method.md §4.3), with transformers' DPT.

VIOLETv2 regresses MiDaS v3.0 DPT-Large (`dpt_large-midas-2f21e586.pt`, ViT-L/16 at 384^2) on
every frame, un-normalised (no per-image scale/shift), densely at the frame resolution with L1.
The same network is published for transformers as `Intel/dpt-large`; `Intel/dpt-hybrid-midas` is
MiDaS v3.0 DPT-Hybrid (ViT-B/16 on a ResNet-50 stem), offered as a lighter alternative.

Variants:
- `dpt-large` (default): DPT-Large fed as it was trained: the frame resized (bicubic, antialiased)
  to `input_size`^2 (384 by default; frames are square) and normalised with mean = std = 0.5.
- `dpt-hybrid`: the same recipe with DPT-Hybrid (its position embeddings are fixed at 384^2).
- `paper`: DPT-Large fed as the official code did (docs/method.md §4.3): the S x S frame itself, ImageNet-
  normalised, no resize (the ViT position embeddings are interpolated). A known deviation from
  what DPT expects, kept so that the paper's target can be reproduced.

Output: `predicted_depth` (ReLU'd disparity, relative units) resized bilinearly to S x S, stored as
`(T, S, S)` float16 per clip (the channel axis of the official `[B, T, 1, H, W]` is dropped, as for
`hog`). Weights are a local Hugging Face model folder; transformers is imported on first use.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from mvm_targets.targets.registry import register_target
from mvm_targets.targets.spec import (Augmentation, CropRule, FlipRule, Grid, PaperScaling, TargetSpec,
                                      check_clip_batch, register_augmentation)
from mvm_targets.teachers.weights import (PRETRAINED, RANDOM, check_teacher_options, WeightsEntry, WeightsMode, register_weights,
                                          sha256_of)

if TYPE_CHECKING:
    import torch

DEPTH_VERSION = 1
VARIANTS = ("dpt-large", "dpt-hybrid", "paper")
DEFAULT_INPUT_SIZE = 384  # DPT's training resolution
SIZE_MULTIPLE = 32  # patch 16, and the reassemble stage halves the 1/16 map once more
HALF = (0.5, 0.5, 0.5)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
FLOAT16_MAX = 65504.0
RANDOM_SEED = 0

DPT_WEIGHTS = {
    "dpt-large": register_weights(WeightsEntry(
        weights_id="dpt-large", relative_path="huggingface/Intel/dpt-large",
        source="https://huggingface.co/Intel/dpt-large", used_by="depth:dpt-large, depth:paper",
        is_directory=True)),
    "dpt-hybrid": register_weights(WeightsEntry(
        weights_id="dpt-hybrid-midas", relative_path="huggingface/Intel/dpt-hybrid-midas",
        source="https://huggingface.co/Intel/dpt-hybrid-midas", used_by="depth:dpt-hybrid", is_directory=True)),
}
MODEL_IDS = {"dpt-large": "Intel/dpt-large", "dpt-hybrid": "Intel/dpt-hybrid-midas"}
# Architecture fields of the two published config.json files, for `weights="random"` only.
RANDOM_CONFIGS: dict[str, dict[str, Any]] = {
    "dpt-large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                      backbone_out_indices=(5, 11, 17, 23), neck_hidden_sizes=(256, 512, 1024, 1024)),
    "dpt-hybrid": dict(is_hybrid=True, backbone_out_indices=(2, 5, 8, 11), neck_hidden_sizes=(256, 512, 768, 768),
                       reassemble_factors=(1, 1, 1, 0.5)),
}


def depth_clip_shape(num_frames: int, size: int) -> tuple[int, ...]:
    """One clip's data shape: (T, S, S). A named function, not a lambda, so targets pickle."""
    return (num_frames, size, size)


class DepthTarget:
    """DPT relative inverse depth: (B, T, S, S, 3) uint8 -> {"data": (B, T, S, S) float16}.

    Built by `build_depth`; the network is loaded on the first `compute` (once per process), so the
    target pickles cheaply into worker processes.
    """

    def __init__(self, variant: str, *, device: str | torch.device = "cpu", weights: WeightsMode = PRETRAINED,
                 weights_dir: Path | None = None, batch_size: int = 16, input_size: int | None = None,
                 precision: str = "auto", channels_last: bool | str | None = None, compile: bool | str = False) -> None:
        from mvm_targets.teachers.runtime import as_flag, resolve_channels_last, resolve_device, resolve_precision

        check_teacher_options("depth", variant, VARIANTS, weights, batch_size)
        self.teacher = "dpt-large" if variant == "paper" else variant
        if variant == "paper":
            if input_size is not None:
                raise ValueError("depth:paper feeds the S x S frame as the official code did; "
                                 "input_size does not apply")
        else:
            input_size = DEFAULT_INPUT_SIZE if input_size is None else input_size
            if input_size < SIZE_MULTIPLE or input_size % SIZE_MULTIPLE:
                raise ValueError(f"input_size must be a positive multiple of {SIZE_MULTIPLE}, got {input_size}")
            if self.teacher == "dpt-hybrid" and input_size != DEFAULT_INPUT_SIZE:
                raise ValueError(f"depth:dpt-hybrid runs at {DEFAULT_INPUT_SIZE}^2 only (its position embeddings "
                                 f"are not interpolated), got input_size={input_size}")
        self.input_size = input_size
        self.device = resolve_device(device)
        self.batch_size = batch_size
        self.precision = resolve_precision(precision, self.device)
        # speed only (layout of the convolutions, torch.compile): not in params, so not in the target id
        self.channels_last = resolve_channels_last(channels_last, self.device)
        self.compile = as_flag(compile, "compile")
        # Resolved now, so that a missing folder fails when the target is built, not mid-run.
        self.weights_path = DPT_WEIGHTS[self.teacher].require(weights_dir) if weights == PRETRAINED else None

        params: dict[str, Any] = {
            "teacher": self.teacher,
            "input": "frame" if input_size is None else f"{input_size} bicubic-antialias",
            "normalisation": "imagenet" if variant == "paper" else "mean=std=0.5",
            "output": "predicted_depth, bilinear to S",
            "precision": self.precision,  # bf16 changes the values, so it is part of the id
            "weights": weights,
        }
        if self.weights_path is None:
            model_id = f"random:{self.teacher}"
        else:
            params["weights_sha256"] = _sha256_once(str(self.weights_path))
            model_id = MODEL_IDS[self.teacher]
        self.spec = TargetSpec(
            name="depth", variant=variant, version=DEPTH_VERSION, grid=Grid.DENSE, dtype="float16", loss="l1",
            clip_shape=depth_clip_shape, params=params, model_id=model_id,
            description="DPT relative inverse depth (MiDaS disparity, un-normalised), (T, S, S) float16",
            augmentation=depth_augmentation(variant, params),
            paper_scaling=PaperScaling("mean", 1 / 3, "released code: masked mean / 3"),
        )

    def model(self) -> torch.nn.Module:
        """The DPTForDepthEstimation module, built once per process (and per device / weights)."""
        from mvm_targets.teachers.runtime import load_teacher

        key = ("depth", self.teacher, str(self.weights_path) if self.weights_path else RANDOM, str(self.device))
        return load_teacher(key, self._build, channels_last=self.channels_last)

    def compute(self, frames: np.ndarray) -> dict[str, np.ndarray]:
        """frames: (B, T, S, S, 3) uint8 -> {"data": (B, T, S, S) float16}."""
        import torch

        from mvm_targets.teachers.runtime import run_batched

        batch, num_frames, size = check_clip_batch(frames)
        if self.input_size is None and size % SIZE_MULTIPLE:
            raise ValueError(f"depth:paper runs DPT on the frame itself, so S must be a multiple of "
                             f"{SIZE_MULTIPLE}; got S={size}")
        flat = torch.from_numpy(frames.reshape(batch * num_frames, size, size, 3))
        forward = functools.partial(_dpt_forward, self.model(), self.input_size, self.spec.variant == "paper")
        # cast to the stored float16 on the device (after `_dpt_forward`'s clip to its largest value)
        depth = run_batched(forward, flat, self.batch_size, self.device, bf16=self.precision == "bf16",
                            out_dtype=torch.float16, compile=self.compile).numpy()
        return {"data": depth.reshape(batch, num_frames, size, size)}

    def _build(self) -> torch.nn.Module:
        import torch

        from mvm_targets._compat import import_torchvision

        import_torchvision()  # transformers' vision classes import torchvision
        from transformers import DPTConfig, DPTForDepthEstimation

        if self.weights_path is not None:
            model = DPTForDepthEstimation.from_pretrained(self.weights_path, local_files_only=True,
                                                          dtype=torch.float32)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(RANDOM_SEED)  # "random" weights are the same in every process
                model = DPTForDepthEstimation(DPTConfig(**RANDOM_CONFIGS[self.teacher]))
        return model.to(self.device)


def preprocess(frames: torch.Tensor, input_size: int | None, imagenet: bool) -> torch.Tensor:
    """(N, S, S, 3) uint8 -> (N, 3, s, s) float32 DPT input: s = input_size (bicubic) or S (unresized).

    Resizing happens on [0, 1] floats without clamping (bicubic may overshoot slightly), as MiDaS's
    own cv2-based transform does.
    """
    import torch
    import torch.nn.functional as F

    images = frames.permute(0, 3, 1, 2).float() / 255
    if input_size is not None and images.shape[-1] != input_size:
        images = F.interpolate(images, size=(input_size, input_size), mode="bicubic", align_corners=False,
                               antialias=True)
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if imagenet else (HALF, HALF)
    mean_t = torch.tensor(mean, device=images.device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, device=images.device).view(1, 3, 1, 1)
    return (images - mean_t) / std_t


def _dpt_forward(model: torch.nn.Module, input_size: int | None, imagenet: bool, frames: torch.Tensor) -> torch.Tensor:
    """(N, S, S, 3) uint8 on the device -> (N, S, S) float32 relative inverse depth, <= FLOAT16_MAX."""
    import torch.nn.functional as F

    size = frames.shape[1]
    depth = model(pixel_values=preprocess(frames, input_size, imagenet)).predicted_depth.float()  # (N, s, s)
    if depth.shape[-1] != size:
        depth = F.interpolate(depth[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    # ReLU'd output is >= 0; the clip only stops a runaway random teacher from storing inf in float16.
    return depth.clamp_max(FLOAT16_MAX)


@functools.lru_cache(maxsize=None)
def _sha256_once(path: str) -> str:
    return sha256_of(Path(path))


@register_augmentation("depth")
def depth_augmentation(variant: str, params: Mapping[str, Any]) -> Augmentation:
    """Flips refused: DPT is not flip-equivariant, so the mirrored depth map is not DPT's depth of the
    mirrored frame. Crops keep whole-frame depth: the ViT sees the whole frame."""
    return Augmentation(flip=FlipRule.REFUSE, crop=CropRule.CONTEXT,
                        note="DPT's depth of a mirrored frame is not its mirrored depth map")


@register_target("depth", variants=VARIANTS)
def build_depth(variant: str, device: str = "cpu", weights: WeightsMode = PRETRAINED, weights_dir: Path | None = None,
                batch_size: int = 16, input_size: int | None = None, precision: str = "auto",
                channels_last: bool | str | None = None, compile: bool | str = False) -> DepthTarget:
    """`depth:dpt-large` (default), `depth:dpt-hybrid` or `depth:paper`; see the module docstring.

    Options: device, weights ("pretrained" | "random"), weights_dir, batch_size (frames per forward),
    input_size (DPT input side for dpt-large / dpt-hybrid, default 384), precision ("auto" follows
    the runtime's bf16 policy; "fp32"; "bf16"), channels_last (NHWC convolutions; default on CUDA) and
    compile (torch.compile the forward); the last two change speed only and are not in the target id.
    """
    return DepthTarget(variant, device=device, weights=weights, weights_dir=weights_dir, batch_size=batch_size,
                       input_size=input_size, precision=precision, channels_last=channels_last, compile=compile)
