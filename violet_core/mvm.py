"""MVM heads and losses on the fusion encoder's video outputs (as the official VIOLETv2 code), plus
the small VTM head and the MLM / VTM / retrieval losses.

Features are the fusion outputs at the video positions with the per-frame CLS dropped, reshaped
to `(B, T, h, w, H)`. Each target gets its own head, chosen from its `TargetInfo` (grid, width,
pair-ness) and never from its name, so the released code's shared-head bug (sif + tvf overwriting
one `fc_mvm`) cannot happen. Losses are computed only at masked positions.

Target layouts (violet_core/target_info.py), B prepended:
    DENSE (B, T', C, S, S) float   PATCH (B, T, h*w, D) float   TOKEN (B, T, S/8, S/8) int64

Precision: heads and losses run in fp32 with autocast off (`full_precision`), whatever the trunk ran
in. Teacher targets keep their values (a float16 cache is widened, never narrowed to bf16, whose
step is 0.06 near 10), and a bf16 loss or logit would quantise the comparisons runs are judged on.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from violet_core.masking import upsample_mask
from mvm_targets.targets.spec import REGRESSION_LOSSES, TOKEN_PX  # one DALL-E token per 8 x 8 pixels
from violet_core.target_info import DEFAULT_VOCAB, PATCH_PX, TargetInfo

logger = logging.getLogger(__name__)

NORMALIZATIONS = ("mean", "paper")
MAX_MAGNITUDE = "max_magnitude"  # extra a motion target stores per pair, (B, T-1): marks it for the pair rule
# `mvm_<key>/<i>`: the i-th declared loss term of a target (`loss_terms`), logged next to its total
# `mvm_<key>`, which already sums it: the training loss adds every named loss except these parts.
PART = "/"

# Paper mode scales each target's loss as the released `calc_mvm_loss` did. The numbers are declared
# by each target's module (`TargetSpec.paper_scaling`, stamped into its shards): reduction "mean"
# averages over masked elements (positions x channels), "sum" sums over the feature dimension of
# each masked position and averages over positions, and the factor multiplies the result. A target
# that declares none gets the plain masked mean (`paper_scaling_note` says so in the run log).


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

class DenseHead(nn.Module):
    """Per-token linear map to a patch x patch block of C channels (Conv1x1 + PixelShuffle).

    pair=True predicts one map per consecutive frame pair from the concatenated features of
    frames t and t+1 (flow).
    """

    def __init__(self, hidden: int, channels: int, pair: bool = False, patch: int = PATCH_PX) -> None:
        super().__init__()
        self.channels, self.pair, self.patch = channels, pair, patch
        self.proj = nn.Linear(2 * hidden if pair else hidden, channels * patch * patch)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(B, T, h, w, H) -> (B, T', C, h*patch, w*patch); T' = T - 1 when pair."""
        if self.pair:
            if features.shape[1] < 2:
                raise ValueError(f"a pair head needs at least 2 frames, got T={features.shape[1]}")
            features = torch.cat([features[:, :-1], features[:, 1:]], dim=-1)
        batch, frames, h, w, _ = features.shape
        out = self.proj(features).permute(0, 1, 4, 2, 3).reshape(batch * frames, -1, h, w)
        out = F.pixel_shuffle(out, self.patch)
        return out.view(batch, frames, self.channels, h * self.patch, w * self.patch)


class FeatureHead(nn.Module):
    """Dropout-Linear(H, 2H)-ReLU-Linear(2H, D) per token (SIF / TVF / MMF, and v1 VQ logits)."""

    def __init__(self, hidden: int, out_dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Dropout(0.1), nn.Linear(hidden, 2 * hidden), nn.ReLU(),
                                 nn.Linear(2 * hidden, out_dim))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(B, T, h, w, H) -> (B, T, h*w, D)."""
        return self.mlp(features).flatten(2, 3)


class TokenHead(nn.Module):
    """VQ v2 head: Linear(H, 2H), PixelShuffle(cells) to c = 2H / cells^2 channels per 8-px cell
    (96 at H = 768, as released), then Dropout-Linear(c, 2c)-ReLU-Linear(2c, vocab)."""

    def __init__(self, hidden: int, vocab: int, cells: int = PATCH_PX // TOKEN_PX) -> None:
        super().__init__()
        if (2 * hidden) % (cells * cells):
            raise ValueError(f"TokenHead needs 2*hidden divisible by cells^2, got hidden={hidden}, cells={cells}")
        self.cells, self.vocab = cells, vocab
        width = 2 * hidden // (cells * cells)
        self.proj = nn.Linear(hidden, 2 * hidden)
        self.mlp = nn.Sequential(nn.Dropout(0.1), nn.Linear(width, 2 * width), nn.ReLU(), nn.Linear(2 * width, vocab))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(B, T, h, w, H) -> logits (B, T, cells*h, cells*w, vocab)."""
        batch, frames, h, w, _ = features.shape
        out = self.proj(features).permute(0, 1, 4, 2, 3).reshape(batch * frames, -1, h, w)
        out = F.pixel_shuffle(out, self.cells).permute(0, 2, 3, 1)
        return self.mlp(out).view(batch, frames, h * self.cells, w * self.cells, self.vocab)


class VtmHead(nn.Module):
    """Video-text matching score from the fused [CLS]: Dropout-Linear(H, 2H)-ReLU-Linear(2H, 1)."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Dropout(0.1), nn.Linear(hidden, 2 * hidden), nn.ReLU(), nn.Linear(2 * hidden, 1))

    def forward(self, cls: torch.Tensor) -> torch.Tensor:
        """(..., H) -> (..., 1) scores; the trailing axis is kept, as Linear(2H, 1), so callers'
        `squeeze(-1)` never collapses a batch of one."""
        return self.mlp(cls)


def _is_classification(info: TargetInfo) -> bool:
    return info.loss == "ce"


def _vocab(info: TargetInfo) -> int:
    # `info.channels` of a patch-grid CE target (vq:v1) is the stored grid width, not the vocabulary
    return int(info.params.get("vocab_size", DEFAULT_VOCAB))


def build_head(info: TargetInfo, hidden: int, patch: int = PATCH_PX) -> nn.Module:
    """The head a target needs, from its grid, width and pair-ness."""
    if info.frames_needed not in (1, 2):
        raise ValueError(f"target {info.ref!r}: frames_needed={info.frames_needed} is not supported (1 or 2)")
    if info.loss not in (*REGRESSION_LOSSES, "ce"):
        raise ValueError(f"target {info.ref!r}: unknown loss {info.loss!r} ({', '.join(REGRESSION_LOSSES)} or ce)")
    if (info.loss == "cosine" or info.loss_terms is not None) and info.grid != "patch":
        raise ValueError(f"target {info.ref!r}: loss={info.loss} with loss_terms={info.loss_terms} needs the patch "
                         f"grid, got grid={info.grid!r}")
    if info.grid == "dense" and not _is_classification(info):
        return DenseHead(hidden, info.channels, pair=info.is_pair, patch=patch)
    if info.is_pair:
        raise ValueError(f"target {info.ref!r}: pair targets must be dense regression, got grid={info.grid!r}")
    if info.grid == "patch":
        return FeatureHead(hidden, _vocab(info) if _is_classification(info) else info.channels)
    if info.grid == "token" and _is_classification(info):
        return TokenHead(hidden, _vocab(info), cells=patch // TOKEN_PX)
    raise ValueError(f"target {info.ref!r}: no head for grid={info.grid!r} with loss={info.loss!r}")


def _scaling(info: TargetInfo, normalization: str) -> tuple[str, float]:
    if normalization == "mean" or info.paper_scaling is None:
        return "mean", 1.0
    return info.paper_scaling.reduction, float(info.paper_scaling.factor)


def paper_scaling_note(infos: list[TargetInfo]) -> str:
    """One line for the run log: each target's paper-mode scaling, and which declare none."""
    parts = []
    for info in infos:
        scaling = info.paper_scaling
        parts.append(f"{info.ref}: {scaling.reduction} x {scaling.factor:.4g}" if scaling is not None
                     else f"{info.ref}: none declared, plain masked mean")
    return "paper MVM loss scaling: " + "; ".join(parts)


def _masked_regression(pred: torch.Tensor, target: torch.Tensor, where: torch.Tensor, kind: str,
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


def target_loss(info: TargetInfo, prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                normalization: str = "mean", keep_pairs: torch.Tensor | None = None) -> torch.Tensor:
    """Scalar loss of one target at the masked positions: the sum of its terms (`target_terms`)."""
    return _summed(target_terms(info, prediction, target, mask, normalization, keep_pairs))


def _summed(terms: list[torch.Tensor]) -> torch.Tensor:
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
    if info.grid == "dense" and not _is_classification(info):
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
        return [_masked_regression(prediction, target, pixels, info.loss, reduction, factor, channel_dim=2)]
    if info.grid == "patch" and not _is_classification(info):
        _check_shape(info, target, prediction.shape)
        where = mask.flatten(2)[..., None]
        return [_masked_regression(prediction[..., part], target[..., part], where, info.loss, reduction, factor,
                                   channel_dim=-1) for part in feature_slices(info)]
    if info.grid == "patch":  # v1 VQ: one token per patch
        if target.dim() == 4:
            target = target.flatten(2)
        _check_shape(info, target, prediction.shape[:-1])
        return [_masked_ce(prediction, target, mask.flatten(2)) * factor]
    _check_shape(info, target, prediction.shape[:-1])
    cells = prediction.shape[2] // mask.shape[2]
    return [_masked_ce(prediction, target, upsample_mask(mask, cells)) * factor]


def _check_shape(info: TargetInfo, target: torch.Tensor, expected: torch.Size | tuple[int, ...]) -> None:
    if tuple(target.shape) != tuple(expected):
        raise ValueError(f"target {info.ref!r} has shape {tuple(target.shape)} but its head predicts "
                         f"{tuple(expected)}")


def _masked_ce(logits: torch.Tensor, target: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    """Mean CE over positions where `where` is True; logits (..., V), target and where (...)."""
    target, where = target.to(logits.device).long(), where.to(logits.device)
    labels = torch.where(where, target, torch.full_like(target, -100))
    # reduction="sum" (not "mean") so that nothing masked gives 0, not 0/0
    total = fp32_cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100,
                               reduction="sum")
    return total / where.sum().clamp_min(1)


class MvmObjective(nn.Module):
    """One head and one loss per MVM target; losses summed by the caller (all weights 1, as released)."""

    def __init__(self, infos: list[TargetInfo], hidden: int, normalization: str = "mean",
                 flow_max_magnitude: float | None = 50.0, patch: int = PATCH_PX) -> None:
        super().__init__()
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"unknown MVM loss normalization {normalization!r}; "
                             f"choose from {', '.join(NORMALIZATIONS)}")
        keys = [info.key for info in infos]
        if len(set(keys)) != len(keys):
            raise ValueError(f"MVM targets repeat a key: {keys}")
        self.infos = list(infos)
        self.hidden, self.normalization, self.flow_max_magnitude = hidden, normalization, flow_max_magnitude
        self.heads = nn.ModuleDict({info.key: build_head(info, hidden, patch) for info in self.infos})
        if normalization == "paper" and self.infos:
            logger.info(paper_scaling_note(self.infos))

    def predict(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        """features (B, T, h, w, H) -> {info.key: head output}."""
        if features.dim() != 5 or features.shape[-1] != self.hidden:
            raise ValueError(f"MVM features must be (B, T, h, w, {self.hidden}), got {tuple(features.shape)}")
        # heads in fp32 on fp32 features: a bf16 prediction near a target of 10 is quantised in steps of 0.06
        with full_precision(features.device):
            return {info.key: self.heads[info.key](features.float()) for info in self.infos}

    def losses(self, predictions: dict[str, torch.Tensor], targets: dict[str, torch.Tensor], mask: torch.Tensor,
               extras: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """{info.key: prediction}, {info.ref: target}, mask (B, T, h, w) -> {f"mvm_{key}": scalar}.

        A target with several loss terms also gets `mvm_{key}/{i}` per term, detached: its `mvm_{key}`
        is their sum and carries the gradient, and `total_loss` leaves the parts out, so each term
        counts once in the training loss."""
        extras = extras or {}
        out = {}
        for info in self.infos:
            if info.ref not in targets:
                raise ValueError(f"MVM target {info.ref!r} is missing from the batch (have {sorted(targets)})")
            terms = target_terms(info, predictions[info.key], targets[info.ref], mask, self.normalization,
                                 self.kept_pairs(info, targets[info.ref], extras))
            name = f"mvm_{info.key}"
            out[name] = _summed(terms)
            if len(terms) > 1:
                out.update({term_name(name, i): term.detach() for i, term in enumerate(terms)})
        return out

    def forward(self, features: torch.Tensor, targets: dict[str, torch.Tensor], mask: torch.Tensor,
                extras: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """features (B, T, h, w, H), mask (B, T, h, w) bool -> {f"mvm_{info.key}": scalar loss}."""
        if mask.shape != features.shape[:4]:
            raise ValueError(f"mask {tuple(mask.shape)} does not match features {tuple(features.shape)}")
        return self.losses(self.predict(features), targets, mask, extras)

    def kept_pairs(self, info: TargetInfo, target: torch.Tensor,
                   extras: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """(B, T-1) bool: False for a pair whose largest absolute component max(|u|, |v|), over all
        its pixels, reaches `flow_max_magnitude` (the official rule drops such a pair from the loss).

        target: the pair target as in the batch, (B, T-1, C, S, S), so the rule sees the crop and flip
        the model is trained on. It applies to pair targets that store the `max_magnitude` extra (the
        flow target's declaration that it is a motion field in pixels); that stored value is the
        Euclidean maximum and is not compared itself: max(|u|, |v|) <= |(u, v)| <= sqrt(2) max(|u|, |v|),
        so the two rules disagree on pairs moving between 50 and 70.7 px, and existing caches work as they are.
        """
        name = f"{info.ref}/{MAX_MAGNITUDE}"
        if not info.is_pair or self.flow_max_magnitude is None or name not in extras:
            return None
        return pair_max_component(target) < self.flow_max_magnitude


def pair_max_component(target: torch.Tensor) -> torch.Tensor:
    """(B, T', C, S, S) -> (B, T') float32: the largest absolute value over channels and pixels of each pair."""
    if target.dim() != 5:
        raise ValueError(f"a pair target must be (B, T', C, S, S), got shape {tuple(target.shape)}")
    return target.detach().abs().flatten(2).amax(dim=-1).float()


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


CONTRASTIVE_REDUCTIONS = ("mean", "sum")


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
