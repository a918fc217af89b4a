"""`feat`: frozen token features of a timm model or a local Hugging Face model, on the 32-px patch grid.

`feat:timm`: `model=<timm name>` (DINOv2, SigLIP, EVA-02-CLIP, CLIP, ...), weights `<weights dir>/timm/<name>/model.
safetensors` as for `sif`. `feat:hf`: `model=<folder>`, `AutoModel.from_pretrained(folder, local_files_only=True)`
(a CLIP/SigLIP folder's vision tower). `layers` ("-1,-4,-7"): block outputs (no final norm), prefix tokens dropped,
each resampled from its grid (16 x 16 for /14 at 224) to the (S/32)^2 grid, concatenated: (T, (S/32)^2, L*D) fp16.
`loss_terms` = the layer widths: each layer is its own loss term, `loss` l2, l1 or cosine (docs/method.md §2).
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F

from mvm_targets._compat import import_torchvision
from mvm_targets.targets import patch_grid, sif
from mvm_targets.targets.registry import TargetUnavailableError, register_target
from mvm_targets.targets.spec import (PATCH_PX, Augmentation, CropRule, FlipRule, Grid, TargetSpec,
                                      register_augmentation)
from mvm_targets.teachers import runtime
from mvm_targets.teachers.weights import PRETRAINED, RANDOM, WeightsEntry, register_weights

NORMALIZE = {"none": lambda t: t, "layernorm": lambda t: F.layer_norm(t, t.shape[-1:], eps=1e-6),
             "l2": lambda t: F.normalize(t, dim=-1)}  # per stored vector (token), over its D features


def _entry(model: str) -> WeightsEntry:  # a timm model's file, in its folder laid out as for `sif`
    return WeightsEntry(weights_id=f"feat/timm/{model}", relative_path=f"timm/{model}/model.safetensors",
                        source=f"https://huggingface.co/timm/{model}", used_by=f"feat:timm (model={model})")


WEIGHTS = [register_weights(_entry(name)) for name in (  # DINOv2 B/14, SigLIP B/16, EVA-02-CLIP B/16, CLIP L/14
    "vit_base_patch14_dinov2.lvd142m", "vit_base_patch16_siglip_224.webli", "eva02_base_patch16_clip_224.merged2b",
    "vit_large_patch14_clip_224.openai")]


def parse_layers(value: int | str | tuple | list) -> tuple[int, ...]:
    """-1, "-1,-4,-7" (as a CLI option arrives) or [-1, -4] -> (-1, -4, ...); at least one, none twice."""
    items = str(value).strip("()[] ").split(",") if isinstance(value, (int, str)) else list(value)
    layers = tuple(int(str(i).strip()) for i in items if str(i).strip().lstrip("-").isdigit())
    if not layers or len(layers) != len(items) or len(set(layers)) != len(layers):
        raise ValueError(f"feat.layers must be distinct integers separated by commas, e.g. -1,-4,-7; got '{value}'")
    return layers


@dataclass(frozen=True)
class HfTeacher:
    """A local transformers model folder (its vision tower for CLIP / SigLIP); also its `load_teacher` key."""

    folder: str
    random: bool
    device: str

    def build(self) -> torch.nn.Module:
        import_torchvision()  # transformers' vision classes import torchvision
        from transformers import AutoConfig, AutoModel

        config = AutoConfig.from_pretrained(self.folder, local_files_only=True)
        model = (patch_grid.seeded_init(lambda: AutoModel.from_config(config)) if self.random else
                 AutoModel.from_pretrained(self.folder, local_files_only=True, dtype=torch.float32))
        return getattr(model, "vision_model", model).to(self.device)

    def load(self) -> torch.nn.Module:
        return runtime.load_teacher(("feat", self.folder, self.random, self.device), self.build)


class LayerFeatures(patch_grid.ReloadsModelWhenUnpickled):
    """Selected layers of a ViT as one map: (N, S, S, 3) uint8 -> (N, L * D, S/32, S/32)."""

    def __init__(self, teacher: Any, layers: tuple[int, ...], normalize: str, input_size: int,
                 mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        self.teacher, self.device, self.model = teacher, teacher.device, teacher.load()
        self.layers, self.normalize, self.input_size, self.mean, self.std = layers, normalize, input_size, mean, std

    def native(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(N, 3, s, s) model input -> one (N, D, h, w) map per layer, on the model's own patch grid."""
        if isinstance(self.teacher, sif.TimmTeacher):  # timm returns the layers in block order, each once
            order = [i + len(self.model.feature_info) if i < 0 else i for i in self.layers]
            maps = self.model.forward_intermediates(x, indices=order, intermediates_only=True)
            return [dict(zip(sorted(set(order)), maps))[i] for i in order]
        extra = {"interpolate_pos_encoding": True}  # CLIP / SigLIP at another input size; DINOv2 always does
        extra = extra if "interpolate_pos_encoding" in inspect.signature(self.model.forward).parameters else {}
        hidden = self.model(pixel_values=x, output_hidden_states=True, **extra).hidden_states  # [0]: embeddings
        side = x.shape[-1] // int(self.model.config.patch_size)
        return [patch_grid.tokens_to_map(hidden[i][:, -side * side:], (side, side)) for i in self.layers]

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(N, S, S, 3) uint8 -> (N, L * D, S/32, S/32): the layers on the patch grid, concatenated."""
        side = images.shape[1] // PATCH_PX
        layers = self.native(patch_grid.prepare_images(images, self.input_size, self.mean, self.std))
        tokens = [NORMALIZE[self.normalize](patch_grid.to_patch_grid(layer.float(), side)) for layer in layers]
        return patch_grid.tokens_to_map(torch.cat(tokens, dim=-1), (side, side))  # normalised after resampling


@register_augmentation("feat")
def feat_augmentation(variant: str, params: Mapping[str, Any]) -> Augmentation:
    """As `sif`: flips refused (features of a mirrored frame are not mirrored features), whole-frame crops."""
    return Augmentation(flip=FlipRule.REFUSE, crop=CropRule.CONTEXT, note="a ViT is not flip-equivariant")


@register_target("feat", variants=("timm", "hf"))
def build_feat(variant: str, model: str | None = None, layers: int | str | tuple = -1, normalize: str = "none",
               loss: str = "l2", input_size: int | None = None, device: str = "cpu", weights: str = PRETRAINED,
               weights_dir: Path | None = None, batch_size: int = 32,
               precision: str = "auto", compile: bool | str = False) -> patch_grid.PatchFeatureTarget:
    """`model=...`; `normalize`: none, layernorm (no affine), l2; `loss`: l2, l1 or cosine, each layer one term;
    `compile`: torch.compile the forward (speed only, not in the id)."""
    if not model:
        raise TargetUnavailableError(f"feat:{variant} needs model=... (-o feat.model=<timm name or folder>)")
    if weights not in (PRETRAINED, RANDOM) or normalize not in NORMALIZE or loss not in ("l1", "l2", "cosine"):
        raise ValueError(f"feat: weights, normalize and loss must be pretrained|random, {'|'.join(NORMALIZE)}, "
                         f"l1|l2|cosine; got {weights}, {normalize}, {loss}")
    layers, device = parse_layers(layers), str(runtime.resolve_device(device))
    precision = runtime.resolve_precision(precision, device)  # recorded: bf16 changes the values
    if variant == "timm":
        name = sif.resolve_model_name(model)  # a one-line error for an unknown name or tag
        weights_file = str(_entry(name).require(weights_dir)) if weights == PRETRAINED else None
        kwargs = json.dumps({"img_size": input_size} if input_size else {})  # timm resamples position embeddings
        teacher = sif.TimmTeacher(name, weights_file, device, kwargs)
        probe = sif.TimmExtractor(teacher, norm=False)  # the model's own input size and statistics
        extractor = LayerFeatures(teacher, layers, normalize, probe.input_size, probe.mean, probe.std)
    else:  # "hf"; the registry has checked the variant
        if not (folder := Path(model)).is_dir():
            raise TargetUnavailableError(f"feat:hf: model={model} is not a local Hugging Face model folder")
        name, weights_file = folder.name, str(folder)
        teacher = HfTeacher(str(folder.resolve()), weights == RANDOM, device)
        stats = {"image_mean": patch_grid.IMAGENET_MEAN, "image_std": patch_grid.IMAGENET_STD}  # unless the folder's
        if (folder / "preprocessor_config.json").is_file():
            stats.update(json.loads((folder / "preprocessor_config.json").read_text()))
        extractor = LayerFeatures(teacher, layers, normalize, input_size or int(teacher.load().config.image_size),
                                  tuple(stats["image_mean"]), tuple(stats["image_std"]))
    model_id = (f"timm/{name}" if variant == "timm" else name) if weights == PRETRAINED else f"{RANDOM}:{name}"
    with runtime.inference(runtime.resolve_device(device), bf16=False):  # a blank input: widths, native grid
        maps = extractor.native(torch.zeros((1, 3, extractor.input_size, extractor.input_size), device=device))
    params: dict[str, Any] = {
        "model": name, "weights": weights, "layers": list(layers), "layer_dims": [int(m.shape[1]) for m in maps],
        "layout": "layers concatenated on the feature axis, in order", "normalize": normalize, "precision": precision,
        "input_size": extractor.input_size, "mean": list(extractor.mean), "std": list(extractor.std),
        "grid": patch_grid.grid_note(maps[0].shape[-2:]),
        **({"weights_sha256": patch_grid.weights_digest(weights_file)} if weights == PRETRAINED else {})}
    spec = TargetSpec(name="feat", variant=variant, version=1, grid=Grid.PATCH, dtype="float16", loss=loss,
                      clip_shape=patch_grid.PatchClipShape(sum(params["layer_dims"])), params=params, model_id=model_id,
                      augmentation=feat_augmentation(variant, params), loss_terms=tuple(params["layer_dims"]))
    return patch_grid.PatchFeatureTarget(spec, extractor, batch_size, precision, compile=compile)
