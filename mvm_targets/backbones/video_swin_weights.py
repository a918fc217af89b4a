"""Load Video Swin weights into `SwinTransformer3D`: the official release and torchvision's layout.

Official release (github.com/SwinTransformer/Video-Swin-Transformer, files such as
`swin_base_patch244_window877_kinetics600_22k.pth`): an mmcv checkpoint, a dict whose
`state_dict` holds the recogniser's weights; the backbone's are prefixed `backbone.` and use our
names as they are, the classifier's are `cls_head.*` and are ignored.

torchvision (`swin3d_t/s/b`): stages and patch merges alternate in one `features` Sequential
(`features.0` = stage 1 blocks, `features.1` = merge, `features.2` = stage 2, ...), and each MLP is
a Sequential (`mlp.0` = fc1, `mlp.3` = fc2); `head.*` is the classifier and is ignored.

Both loaders are strict: any backbone parameter missing from the file, any extra backbone key
and any shape mismatch raises `CheckpointMismatchError` listing them. The saved
`relative_position_index` buffers are not loaded (ours is computed from the window size) but are
checked against ours, which catches a checkpoint made for another window. VIOLETv2's temporal
stride change does not change any parameter shape, so the Kinetics checkpoints load into either.
"""

from __future__ import annotations

import logging
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mvm_targets.backbones.video_swin import SwinTransformer3D
from mvm_targets.errors import MvmTargetsError
from mvm_targets.teachers.weights import MissingWeightsError

OFFICIAL_RELEASES = "https://github.com/SwinTransformer/Video-Swin-Transformer#models (files under " \
                    "https://github.com/SwinTransformer/storage/releases/tag/v1.0.4)"
_NOT_LOADED = ("relative_position_index", "attn_mask")  # buffers derived from the window size
_MAX_LISTED = 8

log = logging.getLogger(__name__)


class CheckpointMismatchError(MvmTargetsError, ValueError):
    """A checkpoint that does not fit the model: missing, unexpected or mis-shaped keys."""


def read_checkpoint(path: Path | str, source: str = OFFICIAL_RELEASES, allow_pickle: bool = False) -> Any:
    """torch.load a checkpoint onto the CPU; a missing file raises `MissingWeightsError`.

    The file is first read with `weights_only=True` (tensors and plain containers only). mmcv
    checkpoints may also carry metadata (numpy scalars, for example) that the safe reader refuses;
    reading those needs full unpickling, which can run code from the file, so it happens only with
    `allow_pickle=True`.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingWeightsError(f"Video Swin checkpoint {path} not found: download it from {source}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if not allow_pickle:
            raise CheckpointMismatchError(
                f"{path} holds more than tensors and cannot be read safely ({str(error).splitlines()[0]}); "
                f"allow unpickling (allow_pickle=True / --allow-pickle) only if you trust the file") from None
        log.warning("reading %s with full unpickling (allow_pickle=True)", path)
        return torch.load(path, map_location="cpu", weights_only=False)


def official_backbone_state_dict(checkpoint: Mapping[str, Any]) -> tuple[dict[str, Tensor], list[str]]:
    """An official checkpoint (or its `state_dict`) -> (backbone weights without `backbone.`, ignored keys)."""
    state = checkpoint.get("state_dict", checkpoint)
    if not isinstance(state, Mapping):
        raise CheckpointMismatchError("the checkpoint's 'state_dict' is not a mapping of tensors")
    backbone, ignored = {}, []
    for key, value in state.items():
        stripped = key.removeprefix("module.")  # saved from a DistributedDataParallel wrapper
        if stripped.startswith("backbone."):
            backbone[stripped.removeprefix("backbone.")] = value
        else:
            ignored.append(key)  # cls_head.*, or anything else that is not the backbone
    if not backbone:
        sample = ", ".join(list(state)[:_MAX_LISTED])
        raise CheckpointMismatchError(f"no 'backbone.*' keys in the checkpoint (keys: {sample or 'none'}); "
                                      "expected the official Video Swin release layout")
    return backbone, ignored


def load_official_checkpoint(model: SwinTransformer3D, path: Path | str, source: str = OFFICIAL_RELEASES,
                             allow_pickle: bool = False) -> list[str]:
    """Load an official Video Swin release file into `model` (strict on the backbone).

    Returns the ignored non-backbone keys (e.g. `cls_head.fc_cls.weight`). Raises
    `MissingWeightsError` for a missing file and `CheckpointMismatchError` when the backbone keys
    or shapes do not fit `model`'s configuration.
    """
    checkpoint = read_checkpoint(path, source, allow_pickle)
    if not isinstance(checkpoint, Mapping):
        raise CheckpointMismatchError(f"{path}: expected a dict checkpoint, got {type(checkpoint).__name__}")
    backbone, ignored = official_backbone_state_dict(checkpoint)
    load_backbone_state_dict(model, backbone, origin=str(path))
    return ignored


_TV_STAGE = re.compile(r"^features\.(\d+)\.(.*)$")


def torchvision_to_official_keys(state_dict: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """torchvision `SwinTransformer3d` keys -> our (official) keys; returns (mapped, ignored `head.*` keys)."""
    mapped, ignored = {}, []
    for key, value in state_dict.items():
        match = _TV_STAGE.match(key)
        if match:
            index, rest = int(match.group(1)), match.group(2)
            stage = index // 2
            if index % 2 == 0:  # a stage: "<block>.<param...>"
                block, _, param = rest.partition(".")
                param = param.replace("mlp.0.", "mlp.fc1.").replace("mlp.3.", "mlp.fc2.")
                mapped[f"layers.{stage}.blocks.{block}.{param}"] = value
            else:  # the patch merge after stage `stage`
                mapped[f"layers.{stage}.downsample.{rest}"] = value
        elif key.startswith(("patch_embed.", "norm.")):
            mapped[key] = value
        else:
            ignored.append(key)  # head.weight / head.bias
    return mapped, ignored


def load_torchvision_state_dict(model: SwinTransformer3D, state_dict: Mapping[str, Tensor]) -> list[str]:
    """Load torchvision's `swin3d_t/s/b` (`SwinTransformer3d`) weights into `model`; returns the ignored
    head keys. torchvision's patch embedding is the original stride-2 one: compare outputs with a
    `temporal_stride=2` model."""
    mapped, ignored = torchvision_to_official_keys(state_dict)
    load_backbone_state_dict(model, mapped, origin="torchvision state dict")
    return ignored


def load_backbone_state_dict(model: SwinTransformer3D, state_dict: Mapping[str, Tensor], origin: str) -> None:
    """Strictly load backbone weights in our naming; `origin` names the source in errors."""
    ours = model.state_dict()
    weights, wrong_index = {}, []
    for key, value in state_dict.items():
        if key.rsplit(".", 1)[-1] in _NOT_LOADED:
            if not _derived_buffer_matches(model, key, value):
                wrong_index.append(key)
        else:
            weights[key] = value
    problems = []
    missing = sorted(set(ours) - set(weights))
    unexpected = sorted(set(weights) - set(ours))
    mis_shaped = [f"{k} {tuple(weights[k].shape)} vs model {tuple(ours[k].shape)}"
                  for k in sorted(set(ours) & set(weights)) if tuple(weights[k].shape) != tuple(ours[k].shape)]
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mis_shaped)):
        if keys:
            listed = ", ".join(keys[:_MAX_LISTED]) + (f", ... ({len(keys)} in all)" if len(keys) > _MAX_LISTED else "")
            problems.append(f"{label}: {listed}")
    if wrong_index:
        problems.append(f"relative_position_index differs from this model's in {len(wrong_index)} blocks, e.g. "
                        f"{wrong_index[0]} (a checkpoint made for another window size?)")
    if problems:
        raise CheckpointMismatchError(f"{origin} does not fit this Video Swin ({_describe(model)}): "
                                      + "; ".join(problems))
    model.load_state_dict(weights, strict=True)


def _derived_buffer_matches(model: SwinTransformer3D, key: str, value: Tensor) -> bool:
    if not key.endswith("relative_position_index"):
        return True  # attn_mask depends on the input size; nothing to compare
    try:
        expected = model.get_submodule(key.rsplit(".", 1)[0]).relative_position_index
    except AttributeError:
        return True  # that module's parameters are reported as unexpected
    return tuple(value.shape) == tuple(expected.shape) and torch.equal(value.to(expected.device).long(), expected)


def _describe(model: SwinTransformer3D) -> str:
    c = model.config
    return (f"embed_dim={c.embed_dim}, depths={c.depths}, num_heads={c.num_heads}, window={c.window_size}, "
            f"patch_norm={c.patch_norm}")
