"""The MVM objective (docs/method.md §4, §5): one head and one loss per target on the fusion encoder's
video outputs, as the official VIOLETv2 code.

Features are the fusion outputs at the video positions with the per-frame CLS dropped, reshaped
to `(B, T, h, w, H)`. Each target gets its own head (violet_core.heads), chosen from its
`TargetInfo` and never from its name, and its loss (violet_core.losses) only at masked positions.

Precision: heads and losses run in fp32 with autocast off (`full_precision`), whatever the trunk ran
in: a bf16 prediction near a target of 10 is quantised in steps of 0.06.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from violet_core.heads import build_head
from violet_core.losses import NORMALIZATIONS, full_precision, sum_terms, target_terms, term_name
from violet_core.target_info import PATCH_PX, TargetInfo

logger = logging.getLogger(__name__)

MAX_MAGNITUDE = "max_magnitude"  # extra a motion target stores per pair, (B, T-1): marks it for the pair rule


def paper_scaling_note(infos: list[TargetInfo]) -> str:
    """One line for the run log: each target's paper-mode scaling, and which declare none."""
    parts = []
    for info in infos:
        scaling = info.paper_scaling
        parts.append(f"{info.ref}: {scaling.reduction} x {scaling.factor:.4g}" if scaling is not None
                     else f"{info.ref}: none declared, plain masked mean")
    return "paper MVM loss scaling: " + "; ".join(parts)


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
        """{info.key: prediction}, {info.key: target}, mask (B, T, h, w) -> {f"mvm_{key}": scalar}.

        A target with several loss terms also gets `mvm_{key}/{i}` per term, detached: its `mvm_{key}`
        is their sum and carries the gradient, and `total_loss` leaves the parts out, so each term
        counts once in the training loss."""
        extras = extras or {}
        out = {}
        for info in self.infos:
            if info.key not in targets:
                raise ValueError(f"MVM target {info.ref!r} (key {info.key!r}) is missing from the batch "
                                 f"(have {sorted(targets)})")
            terms = target_terms(info, predictions[info.key], targets[info.key], mask, self.normalization,
                                 self.kept_pairs(info, targets[info.key], extras))
            name = f"mvm_{info.key}"
            out[name] = sum_terms(terms)
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
        name = f"{info.key}/{MAX_MAGNITUDE}"
        if not info.is_pair or self.flow_max_magnitude is None or name not in extras:
            return None
        return pair_max_component(target) < self.flow_max_magnitude


def pair_max_component(target: torch.Tensor) -> torch.Tensor:
    """(B, T', C, S, S) -> (B, T') float32: the largest absolute value over channels and pixels of each pair."""
    if target.dim() != 5:
        raise ValueError(f"a pair target must be (B, T', C, S, S), got shape {tuple(target.shape)}")
    return target.detach().abs().flatten(2).amax(dim=-1).float()
