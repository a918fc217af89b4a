"""`sif`: spatial image features of a frozen image model, one vector per 32-px patch (docs/method.md §4.6).

The paper's winning target regresses, per frame, the last-stage features of Swin-B IN-22K: 7 x 7 x
1024 at 224^2. The official code read them from transformers' `SwinModel(...).hidden_states[-1]`,
the last stage output BEFORE the final LayerNorm; that is the default here too (`norm=False`).
`norm=True` takes them after the model's final norm instead (for ResNets, which have none, the two
are the same).

Any timm image model can be the teacher (`sif:timm`, `model="<timm name>"`), which covers the
paper's extractor comparison: ResNet-50 (7 x 7 x 2048), Swin-T/B/L (7 x 7), DeiT-B (14 x 14
patch tokens, class/distillation tokens dropped, average-pooled to 7 x 7). Features come from
timm's `forward_intermediates(x, indices=1, norm=..., intermediates_only=True)`.

Weights: timm's own loader with the pretrained-config overlay `file=<local file>`, so the checkpoint
filters that adapt official checkpoints (relative-position tables, position embeddings) still run,
and nothing is downloaded. The file lives in a folder laid out like the model's Hugging Face repo,
`<weights dir>/timm/<model name>/model.safetensors` (or `pytorch_model.bin`), i.e. a snapshot of
https://huggingface.co/timm/<model name>. A folder rather than a bare file because that is what
`huggingface-cli download timm/<name> --local-dir ...` produces, and it keeps the model's config next
to the weights. `weights_sha256` is the hash of the checkpoint file alone (the hub publishes it),
not of the folder, whose other files (download metadata) vary between copies.

Input: the model's own `pretrained_cfg` mean/std (ImageNet for most, CLIP's for CLIP-trained
models), and a resize to the model's input size (its `img_size`, else its training size) only when
S differs. The native grid is then resampled onto the patch grid (`patch_grid`); both are recorded.

Note on the teacher: the official code loaded `microsoft/swin-base-patch4-window7-224-in22k`
through transformers. timm's `swin_base_patch4_window7_224.ms_in22k` comes from Microsoft's release
file `swin_base_patch4_window7_224_22k.pth` (its pretrained_cfg url), which is what that hub model
was converted from; the two should give equal features up to float error (not checked here: no
real weights are available offline).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from mvm_targets._compat import import_torchvision
from mvm_targets.targets import patch_grid
from mvm_targets.targets.patch_grid import PatchFeatureTarget
from mvm_targets.targets.registry import TargetUnavailableError, UnknownTargetError, register_target
from mvm_targets.targets.spec import (Augmentation, CropRule, FlipRule, Grid, PaperScaling, TargetSpec,
                                      register_augmentation)
from mvm_targets.teachers import runtime
from mvm_targets.teachers.weights import (PRETRAINED, RANDOM, MissingWeightsError, WeightsEntry, register_weights)

VARIANTS = ("swin-b-in22k", "timm")
DEFAULT_MODEL = "swin_base_patch4_window7_224.ms_in22k"
# The extractors of the paper's comparison (docs/method.md §4.6), in its table order. ResNet-50 at 76.1%
# top-1 is torchvision's v1 recipe (`tv_in1k`); the table's DeiT at 83.4% is the distilled DeiT-B,
# although "DeiT-B" usually names the plain one (81.8%), so both are listed.
PAPER_EXTRACTORS = (
    "resnet50.tv_in1k",
    "swin_tiny_patch4_window7_224.ms_in1k",
    "deit_base_patch16_224.fb_in1k",
    "deit_base_distilled_patch16_224.fb_in1k",
    "swin_base_patch4_window7_224.ms_in1k",
    DEFAULT_MODEL,
    "swin_large_patch4_window7_224.ms_in22k",
)
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # timm's own preference order on the hub


def _timm() -> Any:
    import_torchvision()  # timm imports torchvision, which needs the compat step next to CPU torch
    import timm

    return timm


def weights_folder(model_name: str) -> str:
    """Relative weights folder of a timm model: its Hugging Face repo id, e.g. "timm/resnet50.tv_in1k"."""
    return f"timm/{model_name}"


def _used_by(model_name: str) -> str:
    return "sif:swin-b-in22k" if model_name == DEFAULT_MODEL else f"sif:timm (model={model_name})"


def _entry(model_name: str) -> WeightsEntry:
    folder = weights_folder(model_name)
    return WeightsEntry(weights_id=folder, relative_path=folder, source=f"https://huggingface.co/{folder}",
                        used_by=_used_by(model_name), is_directory=True)


for _name in PAPER_EXTRACTORS:
    register_weights(_entry(_name))


def resolve_model_name(name: str) -> str:
    """A timm name with its pretrained tag: "resnet50" -> "resnet50.a1_in1k" (timm's default tag)."""
    if ":" in name:
        # "hf-hub:" / "local-dir:" names make timm fetch configs or weights itself; this product never downloads
        raise UnknownTargetError(f"sif: give a plain timm model name, not '{name}'")
    timm = _timm()
    arch, tag = timm.models.split_model_name_tag(name)
    if not timm.is_model(arch):
        raise UnknownTargetError(f"sif: unknown timm model '{name}' (see timm.list_models())")
    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except RuntimeError as error:  # a known architecture with an unknown tag
        raise UnknownTargetError(f"sif: {error}") from None
    tag = tag or (cfg.tag if cfg is not None else "")
    return f"{arch}.{tag}" if tag else arch


def find_weights_file(model_name: str, weights_dir: Path | None) -> Path:
    """The checkpoint inside the model's folder, or MissingWeightsError naming where to get it."""
    entry = _entry(model_name)
    folder = entry.require(weights_dir)
    for file_name in WEIGHT_FILES:
        if (folder / file_name).is_file():
            return folder / file_name
    raise MissingWeightsError(f"{entry.used_by} needs {folder / WEIGHT_FILES[0]} (or {WEIGHT_FILES[1]}): "
                              f"download it from {entry.source}")


@dataclass(frozen=True)
class TimmTeacher:
    """Everything that defines one loaded timm teacher; also its `load_teacher` key."""

    model_name: str  # with tag
    weights_file: str | None  # None for seeded random weights
    device: str
    model_kwargs: str = "{}"  # JSON, so that the recipe is hashable

    def key(self) -> tuple:
        return ("sif", self.model_name, self.weights_file, self.device, self.model_kwargs)

    def build(self) -> torch.nn.Module:
        timm = _timm()
        kwargs = json.loads(self.model_kwargs)
        if self.weights_file is None:
            model = patch_grid.seeded_init(lambda: timm.create_model(self.model_name, pretrained=False, **kwargs))
        else:
            try:
                # the classifier is kept at the checkpoint's size so that timm loads strictly:
                # a wrong file fails here instead of leaving layers at random init
                model = timm.create_model(self.model_name, pretrained=True,
                                          pretrained_cfg_overlay=dict(file=self.weights_file), **kwargs)
            except RuntimeError as error:
                first = (str(error).splitlines() or [""])[0][:300]
                raise TargetUnavailableError(
                    f"sif: {self.weights_file} does not hold {self.model_name} weights: {first}") from None
        if hasattr(model, "reset_classifier"):
            model.reset_classifier(0)  # frees e.g. the 21,841-class IN-22K head; features never use it
        return model.to(self.device)

    def load(self) -> torch.nn.Module:
        return runtime.load_teacher(self.key(), self.build)


def _json_safe(value: Any) -> Any:
    return [_json_safe(v) for v in value] if isinstance(value, (list, tuple)) else value


class TimmExtractor(patch_grid.ReloadsModelWhenUnpickled):
    """A timm model as a feature map: (N, S, S, 3) uint8 -> (N, C, h, w) last-stage features."""

    def __init__(self, teacher: TimmTeacher, norm: bool) -> None:
        self.teacher, self.norm, self.device = teacher, norm, teacher.device
        self.model = teacher.load()
        config = _timm().data.resolve_model_data_config(self.model)
        patch_embed = getattr(self.model, "patch_embed", None)
        img_size = getattr(patch_embed, "img_size", None)
        # a ViT/Swin is built for one input size (also when made with img_size=); a CNN takes its training size
        self.input_size = int(img_size[0]) if img_size else int(config["input_size"][-1])
        # the model's own statistics: ImageNet for most, CLIP's for CLIP-trained timm models
        self.mean = tuple(float(m) for m in config["mean"])
        self.std = tuple(float(s) for s in config["std"])

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(N, S, S, 3) uint8 on the teacher's device -> (N, C, h, w) last-stage features."""
        x = patch_grid.prepare_images(images, self.input_size, self.mean, self.std)
        return self.model.forward_intermediates(x, indices=1, norm=self.norm, intermediates_only=True)[-1]


@register_augmentation("sif")
def sif_augmentation(variant: str, params: Mapping[str, Any]) -> Augmentation:
    """Flips refused: an image model's features of a mirrored frame are not its mirrored features. Crops
    keep whole-frame features: each patch's feature sees beyond the patch (and the frame is resized
    when S differs from the model's input size)."""
    return Augmentation(flip=FlipRule.REFUSE, crop=CropRule.CONTEXT,
                        note="an image model's features of a mirrored frame are not its mirrored features")


@register_target("sif", variants=VARIANTS)
def build_sif(variant: str, device: str = "cpu", weights: str = PRETRAINED, weights_dir: Path | None = None,
              batch_size: int = 32, model: str | None = None, norm: bool | str = False,
              model_kwargs: dict[str, Any] | None = None, precision: str = "auto",
              compile: bool | str = False) -> PatchFeatureTarget:
    """`sif:swin-b-in22k` (the paper's teacher) or `sif:timm` with `model="<timm name>"`.

    Options: `norm` (False: last stage before the final norm, as the official code; True: after it),
    `model_kwargs` (passed to `timm.create_model`, e.g. a smaller architecture for tests),
    `precision` ("auto": bf16 where the runtime says it helps, else fp32; "fp32"; "bf16"; the effective
    one is recorded in the spec, so it is part of the target id), `compile` (torch.compile the forward;
    speed only, not in the id). Weights: see the module docstring.
    """
    if variant == "swin-b-in22k":
        if model is not None and resolve_model_name(model) != DEFAULT_MODEL:
            raise ValueError(f"sif:swin-b-in22k is {DEFAULT_MODEL}; use sif:timm for model={model}")
        model_name = DEFAULT_MODEL
    elif variant == "timm":
        if not model:
            raise TargetUnavailableError("sif:timm needs a timm model name, e.g. model=resnet50.tv_in1k "
                                         "(-o sif.model=...)")
        model_name = resolve_model_name(model)
    else:
        raise UnknownTargetError(f"unknown variant '{variant}' for target 'sif'; known variants: {', '.join(VARIANTS)}")
    if weights not in (PRETRAINED, RANDOM):
        raise ValueError(f"weights must be '{PRETRAINED}' or '{RANDOM}', got '{weights}'")
    norm = _as_bool(norm, "norm")
    device_name = str(runtime.resolve_device(device))
    precision = runtime.resolve_precision(precision, device_name)
    kwargs_json = json.dumps({k: _json_safe(v) for k, v in (model_kwargs or {}).items()}, sort_keys=True)

    params: dict[str, Any] = {"model": model_name, "weights": weights}
    if weights == PRETRAINED:
        weights_file = find_weights_file(model_name, weights_dir)
        params["weights_sha256"] = patch_grid.weights_digest(str(weights_file))
        model_id = weights_folder(model_name)
        teacher = TimmTeacher(model_name, str(weights_file), device_name, kwargs_json)
    else:
        model_id = f"{RANDOM}:{model_name.split('.')[0]}"
        teacher = TimmTeacher(model_name, None, device_name, kwargs_json)
    extractor = TimmExtractor(teacher, norm)
    if not hasattr(extractor.model, "forward_intermediates"):
        raise TargetUnavailableError(f"sif: timm model {model_name} has no forward_intermediates()")
    dim, native = patch_grid.probe(extractor, extractor.input_size)
    params.update({
        "features": "last stage after the final norm" if norm else
                    "last stage before the final norm (transformers SwinModel hidden_states[-1])",
        "norm": norm, "input_size": extractor.input_size, "resize": patch_grid.resize_note(extractor.input_size),
        "mean": list(extractor.mean), "std": list(extractor.std), "grid": patch_grid.grid_note(native),
        "precision": precision,  # bf16 changes the values, so it is part of the id
    })
    if model_kwargs:
        params["model_kwargs"] = json.loads(kwargs_json)
    spec = TargetSpec(
        name="sif", variant=variant, version=1, grid=Grid.PATCH, dtype="float16", loss="l1",
        clip_shape=patch_grid.PatchClipShape(dim), params=params, model_id=model_id,
        description=f"{model_name} last-stage features per frame on the 32-px patch grid, "
                    f"(T, (S/32)^2, {dim}) float16",
        augmentation=sif_augmentation(variant, params),
        paper_scaling=PaperScaling("sum", 1 / 3, "released code: sum over D per masked patch / 3"),
    )
    return PatchFeatureTarget(spec, extractor, batch_size, precision, compile=compile)


def _as_bool(value: bool | str, name: str) -> bool:
    # CLI options arrive as strings ("-o sif.norm=true")
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError(f"{name} must be true or false, got '{value}'")
        return lowered in ("true", "1", "yes")
    return bool(value)
