"""`mmf`: multimodal features from CLIP's image tower, one vector per 32-px patch (docs/method.md §4.8).

The official code never implemented MMF; the author describes it as "CLIP (ViT-B/32) grid
features", patch 32, so a 224^2 frame gives the 7 x 7 grid the student predicts (in a reply on
the VIOLET repository's tracker). The layer is not stated. This target takes transformers' `CLIPVisionModel`
`last_hidden_state` without the class token: the last encoder layer's patch tokens, BEFORE
`post_layernorm` (transformers applies that norm to the pooled class token only) and without the
512-d visual projection, i.e. 7 x 7 x 768 for ViT-B/32. `post_layernorm=True` applies the final
norm to the patch tokens too. This matches SIF's choice of pre-norm last-stage features.

Variants: `vit-b32` (the author's model) and `vit-b16` (14 x 14 tokens at 224, average-pooled to
7 x 7, recorded in the spec). Weights: a local copy of the Hugging Face repo folder
`<weights dir>/openai/clip-vit-base-patch32` (or `-patch16`), loaded with `local_files_only`.

Preprocessing: frames are already the canonical S x S centre crop; they are resized to the model's
`image_size` only when S differs, then normalised with the folder's `preprocessor_config.json`
mean/std when present, else CLIP's standard constants. `weights_sha256` hashes the checkpoint
file transformers loads (`model.safetensors`, else `pytorch_model.bin`), not the whole folder.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch

from mvm_targets._compat import import_torchvision
from mvm_targets.targets import patch_grid
from mvm_targets.targets.patch_grid import PatchFeatureTarget
from mvm_targets.targets.registry import UnknownTargetError, register_target
from mvm_targets.targets.spec import (Augmentation, CropRule, FlipRule, Grid, PaperScaling, TargetSpec,
                                      register_augmentation)
from mvm_targets.teachers import runtime
from mvm_targets.teachers.weights import PRETRAINED, RANDOM, MissingWeightsError, WeightsEntry, register_weights

VARIANTS = ("vit-b32", "vit-b16")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP's training statistics
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PATCH_SIZES = {"vit-b32": 32, "vit-b16": 16}
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
WEIGHTS = {
    variant: register_weights(WeightsEntry(
        weights_id=f"clip-vit-base-patch{patch}", relative_path=f"openai/clip-vit-base-patch{patch}",
        source=f"https://huggingface.co/openai/clip-vit-base-patch{patch}", used_by=f"mmf:{variant}",
        is_directory=True))
    for variant, patch in PATCH_SIZES.items()
}


def _transformers() -> Any:
    import_torchvision()  # transformers' image classes import torchvision, which needs the compat step
    import transformers

    return transformers


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence the load report (a full CLIP folder's text-tower keys are "unexpected" for the vision
    tower, by design) and the progress bars, restoring the caller's settings afterwards."""
    logging = _transformers().utils.logging
    verbosity, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()


@dataclass(frozen=True)
class ClipTeacher:
    """Everything that defines one loaded CLIP image tower; also its `load_teacher` key."""

    variant: str
    folder: str | None  # None for seeded random weights with ViT-B/`patch` defaults
    device: str

    def key(self) -> tuple:
        return ("mmf", self.variant, self.folder, self.device)

    def build(self) -> torch.nn.Module:
        transformers = _transformers()
        with _quiet_transformers():
            if self.folder is None:
                # CLIPVisionConfig's defaults are ViT-B/32 (768 wide, 12 layers, 224 px)
                config = transformers.CLIPVisionConfig(patch_size=PATCH_SIZES[self.variant])
                model = patch_grid.seeded_init(lambda: transformers.CLIPVisionModel(config))
            else:
                model = transformers.CLIPVisionModel.from_pretrained(self.folder, local_files_only=True,
                                                                     dtype=torch.float32)
        return model.to(self.device)

    def load(self) -> torch.nn.Module:
        return runtime.load_teacher(self.key(), self.build)


def weights_file(folder: Path, entry: WeightsEntry) -> Path:
    """The checkpoint transformers loads from the folder (safetensors first, as transformers does).

    Only this file is hashed for the provenance: its sha256 is the one the hub publishes, and a
    whole-folder hash would change with unrelated files (TF/Flax weights, download metadata).
    """
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    raise MissingWeightsError(f"{entry.used_by} needs {folder / WEIGHT_FILES[0]} (or {WEIGHT_FILES[1]}) "
                              f"and config.json: download them from {entry.source}")


def clip_statistics(folder: Path | None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) from the folder's preprocessor_config.json, else CLIP's standard constants."""
    config_file = folder / "preprocessor_config.json" if folder is not None else None
    if config_file is not None and config_file.is_file():
        config = json.loads(config_file.read_text())
        if "image_mean" in config and "image_std" in config:
            return tuple(map(float, config["image_mean"])), tuple(map(float, config["image_std"]))
    return CLIP_MEAN, CLIP_STD


class ClipExtractor(patch_grid.ReloadsModelWhenUnpickled):
    """CLIP's image tower as a feature map: (N, S, S, 3) uint8 -> (N, D, h, w) patch tokens."""

    def __init__(self, teacher: ClipTeacher, post_layernorm: bool,
                 mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        self.teacher, self.post_layernorm, self.mean, self.std = teacher, post_layernorm, mean, std
        self.device = teacher.device
        self.model = teacher.load()
        config = self.model.config
        self.input_size = int(config.image_size)
        side = self.input_size // int(config.patch_size)  # a stride-p convolution without padding
        self.native = (side, side)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(N, S, S, 3) uint8 on the teacher's device -> (N, D, h, w) last-layer patch tokens."""
        x = patch_grid.prepare_images(images, self.input_size, self.mean, self.std)
        tokens = self.model(pixel_values=x).last_hidden_state[:, 1:]  # drop the class token
        if self.post_layernorm:
            tokens = self.model.post_layernorm(tokens)
        return patch_grid.tokens_to_map(tokens, self.native)


@register_augmentation("mmf")
def mmf_augmentation(variant: str, params: Mapping[str, Any]) -> Augmentation:
    """Flips refused: CLIP's patch tokens of a mirrored frame are not its mirrored tokens (attention mixes
    every patch). Crops keep whole-frame tokens for the same reason."""
    return Augmentation(flip=FlipRule.REFUSE, crop=CropRule.CONTEXT,
                        note="CLIP's patch tokens of a mirrored frame are not its mirrored tokens")


@register_target("mmf", variants=VARIANTS)
def build_mmf(variant: str, device: str = "cpu", weights: str = PRETRAINED, weights_dir: Path | None = None,
              batch_size: int = 32, post_layernorm: bool | str = False, precision: str = "auto",
              compile: bool | str = False) -> PatchFeatureTarget:
    """`mmf:vit-b32` (the author's CLIP) or `mmf:vit-b16`; options `post_layernorm`, `precision`, `compile`
    (torch.compile the forward; speed only, not in the id).

    precision: "auto" (bf16 where the runtime says it helps, else fp32), "fp32" or "bf16"; the
    effective one is recorded in the spec, so it is part of the target id.
    """
    if variant not in VARIANTS:
        raise UnknownTargetError(f"unknown variant '{variant}' for target 'mmf'; known variants: {', '.join(VARIANTS)}")
    if weights not in (PRETRAINED, RANDOM):
        raise ValueError(f"weights must be '{PRETRAINED}' or '{RANDOM}', got '{weights}'")
    if isinstance(post_layernorm, str):  # CLI options arrive as strings
        post_layernorm = post_layernorm.strip().lower() in ("true", "1", "yes")
    device_name = str(runtime.resolve_device(device))
    precision = runtime.resolve_precision(precision, device_name)
    entry = WEIGHTS[variant]
    params: dict[str, Any] = {"model": entry.relative_path, "weights": weights}
    if weights == PRETRAINED:
        folder = entry.require(weights_dir)
        params["weights_sha256"] = patch_grid.weights_digest(str(weights_file(folder, entry)))
        model_id = entry.relative_path
        teacher = ClipTeacher(variant, str(folder), device_name)
    else:
        folder = None
        model_id = f"{RANDOM}:clip-vit-base-patch{PATCH_SIZES[variant]}"
        teacher = ClipTeacher(variant, None, device_name)
    mean, std = clip_statistics(folder)
    extractor = ClipExtractor(teacher, bool(post_layernorm), mean, std)
    dim, native = patch_grid.probe(extractor, extractor.input_size)
    params.update({
        "features": "last_hidden_state patch tokens after post_layernorm" if post_layernorm else
                    "last_hidden_state patch tokens (no class token, before post_layernorm, no projection)",
        "post_layernorm": bool(post_layernorm), "input_size": extractor.input_size,
        "resize": patch_grid.resize_note(extractor.input_size), "mean": list(mean), "std": list(std),
        "grid": patch_grid.grid_note(native),
        "precision": precision,  # bf16 changes the values, so it is part of the id
    })
    spec = TargetSpec(
        name="mmf", variant=variant, version=1, grid=Grid.PATCH, dtype="float16", loss="l1",
        clip_shape=patch_grid.PatchClipShape(dim), params=params, model_id=model_id,
        description=f"CLIP {entry.relative_path} last-layer patch tokens per frame on the 32-px patch grid, "
                    f"(T, (S/32)^2, {dim}) float16",
        augmentation=mmf_augmentation(variant, params),
        paper_scaling=PaperScaling("sum", 1 / 3, "not released; assumed to follow SIF"),
    )
    return PatchFeatureTarget(spec, extractor, batch_size, precision, compile=compile)
