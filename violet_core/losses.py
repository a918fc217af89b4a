"""The training losses as pure functions of predictions, targets and masks (docs/method.md §2, §4, §5).

Nothing here holds parameters or state: the heads that make the predictions are in violet_core.heads,
and the MVM objective that pairs each target with its head is in violet_core.mvm.

Target layouts (violet_core/target_info.py), B prepended:
    DENSE (B, T', C, S, S) float   PATCH (B, T, h*w, D) float   TOKEN (B, T, S/8, S/8) int64

Precision: every loss runs in fp32 with autocast off (`full_precision`), whatever the trunk ran in.
Teacher targets keep their values (a float16 cache is widened, never narrowed to bf16, whose step
is 0.06 near 10), and a bf16 loss or logit would quantise the comparisons runs are judged on.
"""

from __future__ import annotations

import contextlib
import itertools
from typing import Mapping

import torch
import torch.nn.functional as F

from violet_core.mask_pixels import upsample_mask
from violet_core.target_info import TargetInfo

NORMALIZATIONS = ("mean", "paper")
CONTRASTIVE_REDUCTIONS = ("mean", "sum")
# `mvm_<key>/<i>`: the i-th declared loss term of a target (`loss_terms`), logged next to its total
# `mvm_<key>`, which already sums it: the training loss adds every named loss except these parts.
PART = "/"

# Paper mode scales each target's loss as the released `calc_mvm_loss` did. The numbers are declared
# by each target's module (`TargetSpec.paper_scaling`, stamped into its shards): reduction "mean"
# averages over masked elements (positions x channels), "sum" sums over the feature dimension of
# each masked position and averages over positions, and the factor multiplies the result. A target
# that declares none gets the plain masked mean (`paper_scaling_note` in violet_core.mvm says so).


def full_precision(device: torch.device | str) -> contextlib.AbstractContextManager:
    """Autocast off on `device`: inside, ops run in the dtype of their inputs (callers pass fp32)."""
    return torch.autocast(device_type=torch.device(device).type, enabled=False)


def term_name(total: str, index: int) -> str:
    """The logged name of term `index` of the loss `total`: `mvm_hog` -> `mvm_hog/0`."""
    return f"{total}{PART}{index}"


def total_loss(losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The training loss: the sum of the named losses, each once. A term (`term_name`) is part of
    another entry that already counts it, and is logged only (docs/method.md §2)."""
    return sum(value for name, value in losses.items() if PART not in name)


def fp32_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, **options) -> torch.Tensor:
    """`F.cross_entropy` of fp32 logits outside autocast; logits (N, C) or (N, C, ...), labels long."""
    with full_precision(logits.device):
        return F.cross_entropy(logits.float(), labels.long(), **options)


# --- MVM: one target at its masked positions ---------------------------------------------------


def is_classification(info: TargetInfo) -> bool:
    return info.loss == "ce"


def _scaling(info: TargetInfo, normalization: str) -> tuple[str, float]:
    if normalization == "mean" or info.paper_scaling is None:
        return "mean", 1.0
    return info.paper_scaling.reduction, float(info.paper_scaling.factor)


def masked_regression(pred: torch.Tensor, target: torch.Tensor, where: torch.Tensor, kind: str,
                      reduction: str, factor: float, channel_dim: int) -> torch.Tensor:
    """Masked L1/L2/cosine. `where` is bool, shaped like pred but with size 1 on `channel_dim`.

    "mean": average over masked elements (positions x channels); "sum": summed over channels,
    averaged over masked positions. Cosine gives one value per position, 1 - cos(pred, target) over
    `channel_dim`, so both reductions average it over masked positions. Nothing masked gives an exact
    0 still attached to the graph.
    """
    with full_precision(pred.device):
        # both sides in fp32: the target is widened (float16 cache) and never narrowed to the prediction's dtype
        wide = target.to(device=pred.device, dtype=torch.float32)
        if kind == "cosine":
            err = 1 - F.cosine_similarity(pred.float(), wide, dim=channel_dim, eps=1e-8).unsqueeze(channel_dim)
        else:
            diff = pred.float() - wide
            err = diff.abs() if kind == "l1" else diff.square()
        # torch.where, not a product: a non-finite value at an unmasked position cannot leak in
        total = torch.where(where, err, torch.zeros((), dtype=err.dtype, device=err.device)).sum()
        positions = where.sum()
        count = positions * err.shape[channel_dim] if reduction == "mean" else positions
        return total / count.clamp_min(1) * factor


def masked_cross_entropy(logits: torch.Tensor, target: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    """Mean CE over positions where `where` is True; logits (..., V), target and where (...)."""
    target, where = target.to(logits.device).long(), where.to(logits.device)
    labels = torch.where(where, target, torch.full_like(target, -100))
    # reduction="sum" (not "mean") so that nothing masked gives 0, not 0/0
    total = fp32_cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100,
                               reduction="sum")
    return total / where.sum().clamp_min(1)


def target_loss(info: TargetInfo, prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                normalization: str = "mean", keep_pairs: torch.Tensor | None = None) -> torch.Tensor:
    """Scalar loss of one target at the masked positions: the sum of its terms (`target_terms`)."""
    return sum_terms(target_terms(info, prediction, target, mask, normalization, keep_pairs))


def sum_terms(terms: list[torch.Tensor]) -> torch.Tensor:
    """One target's loss from its terms: the single term itself, else their sum."""
    return terms[0] if len(terms) == 1 else torch.stack(terms).sum()


def feature_slices(info: TargetInfo) -> list[slice]:
    """The feature-axis slices scored as separate terms: one per declared width, else the whole axis."""
    if info.loss_terms is None:
        return [slice(None)]
    ends = itertools.accumulate(info.loss_terms)
    return [slice(end - width, end) for end, width in zip(ends, info.loss_terms)]


def target_terms(info: TargetInfo, prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                 normalization: str = "mean", keep_pairs: torch.Tensor | None = None) -> list[torch.Tensor]:
    """One scalar per loss term of one target at the masked positions (docs/method.md §2).

    prediction: the target's head output; target: its training layout; mask: (B, T, h, w) bool.
    keep_pairs: (B, T-1) bool for pair targets; False drops the whole pair (e.g. max(|u|, |v|) >= 50 px).
    A patch regression target that declares `loss_terms` gets one term per feature slice, each
    reduced and scaled as a whole target would be; every other target has a single term.
    """
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"unknown MVM loss normalization {normalization!r}; choose from {', '.join(NORMALIZATIONS)}")
    reduction, factor = _scaling(info, normalization)
    mask = mask.to(prediction.device).bool()
    if info.grid == "dense" and not is_classification(info):
        if target.dim() == 4 and prediction.shape[2] == 1:
            target = target.unsqueeze(2)  # single-channel targets may be stored without a channel axis
        _check_shape(info, target, prediction.shape)
        coarse = mask[:, :-1] | mask[:, 1:] if info.is_pair else mask  # a pair counts if either frame is masked
        if keep_pairs is not None:
            if keep_pairs.shape != coarse.shape[:2]:
                raise ValueError(f"target {info.ref!r}: pair keep mask must be {tuple(coarse.shape[:2])}, "
                                 f"got {tuple(keep_pairs.shape)}")
            coarse = coarse & keep_pairs.to(coarse.device).bool()[:, :, None, None]
        patch = prediction.shape[-1] // mask.shape[-1]
        pixels = upsample_mask(coarse, patch)[:, :, None]  # (B, T', 1, S, S)
        return [masked_regression(prediction, target, pixels, info.loss, reduction, factor, channel_dim=2)]
    if info.grid == "patch" and not is_classification(info):
        _check_shape(info, target, prediction.shape)
        where = mask.flatten(2)[..., None]
        return [masked_regression(prediction[..., part], target[..., part], where, info.loss, reduction, factor,
                                  channel_dim=-1) for part in feature_slices(info)]
    if info.grid == "patch":  # v1 VQ: one token per patch
        if target.dim() == 4:
            target = target.flatten(2)
        _check_shape(info, target, prediction.shape[:-1])
        return [masked_cross_entropy(prediction, target, mask.flatten(2)) * factor]
    _check_shape(info, target, prediction.shape[:-1])
    cells = prediction.shape[2] // mask.shape[2]
    return [masked_cross_entropy(prediction, target, upsample_mask(mask, cells)) * factor]


def _check_shape(info: TargetInfo, target: torch.Tensor, expected: torch.Size | tuple[int, ...]) -> None:
    if tuple(target.shape) != tuple(expected):
        raise ValueError(f"target {info.ref!r} has shape {tuple(target.shape)} but its head predicts "
                         f"{tuple(expected)}")


# --- text and matching -------------------------------------------------------------------------


def mlm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """logits (B, L, V), labels (B, L) with -100 unlabelled -> mean CE over labelled tokens (0 if none), fp32."""
    labelled = labels != -100
    total = fp32_cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100,
                               reduction="sum")
    return total / labelled.sum().clamp_min(1)


def vtm_loss(scores: torch.Tensor, temperature: float = 0.05) -> torch.Tensor:
    """scores (B, O): the positive text at index 0, O - 1 negatives -> CE of scores / temperature, fp32."""
    if scores.dim() != 2:
        raise ValueError(f"VTM scores must be (B, O), got {tuple(scores.shape)}")
    labels = torch.zeros(scores.shape[0], dtype=torch.long, device=scores.device)
    return fp32_cross_entropy(scores.float() / temperature, labels)


def symmetric_contrastive_loss(scores: torch.Tensor, temperature: float = 0.05,
                               reduction: str = "mean") -> torch.Tensor:
    """scores (B, B), row = video, column = text, diagonal positive -> CE over rows and over columns, fp32.

    reduction "mean" averages the two directions (a loss on the scale of one CE); "sum" adds them,
    as the official `NormSoftmaxLoss` (paper mode), which doubles the gradient of the retrieval loss.
    """
    if scores.dim() != 2 or scores.shape[0] != scores.shape[1]:
        raise ValueError(f"contrastive scores must be square (B, B), got {tuple(scores.shape)}")
    if reduction not in CONTRASTIVE_REDUCTIONS:
        raise ValueError(f"unknown contrastive reduction {reduction!r}; "
                         f"choose from {', '.join(CONTRASTIVE_REDUCTIONS)}")
    labels = torch.arange(scores.shape[0], device=scores.device)
    logits = scores.float() / temperature
    total = fp32_cross_entropy(logits, labels) + fp32_cross_entropy(logits.t(), labels)
    return total if reduction == "sum" else total / 2
