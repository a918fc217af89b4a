"""Heads on the fusion encoder's outputs (as the official VIOLETv2 code): one MVM head per target,
and the small VTM head that scores a video-text pair.

The model (violet_core.model) holds the heads' parameters; the functions here read the fused sequence
with them, in fp32. MVM heads read the fusion outputs at the video positions with the per-frame CLS
dropped, shaped `(B, T, h, w, H)`. Each target's head is chosen from its `TargetInfo` (grid, width, pair-ness) and
never from its name, so the released code's shared-head bug (sif + tvf overwriting one `fc_mvm`)
cannot happen. The losses on their outputs are in violet_core.losses.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from mvm_targets.targets.spec import REGRESSION_LOSSES, TOKEN_PX  # one DALL-E token per 8 x 8 pixels
from violet_core.losses import full_precision, is_classification
from violet_core.target_info import DEFAULT_VOCAB, PATCH_PX, TargetInfo

if TYPE_CHECKING:  # the model imports its heads from here
    from violet_core.model import VideoGrid


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


def pair_score(head: VtmHead, fused: torch.Tensor, grid: VideoGrid) -> torch.Tensor:
    """(B, Lv + L, H) -> (B,) float32 video-text match score from the first text token ([CLS]).

    fp32 under any autocast: retrieval ranks and QA choices compare these scores, and bf16 has
    8 significant bits, which turns close scores into ties.
    """
    with full_precision(fused.device):
        return head(fused[:, grid.tokens].float()).squeeze(-1)


def mlm_logits(head: nn.Module, fused: torch.Tensor, grid: VideoGrid) -> torch.Tensor:
    """(B, Lv + L, H) -> (B, L, V) float32 under any autocast (MLM loss, open-ended QA answers)."""
    with full_precision(fused.device):
        return head(fused[:, grid.tokens:].float())


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
    if info.grid == "dense" and not is_classification(info):
        return DenseHead(hidden, info.channels, pair=info.is_pair, patch=patch)
    if info.is_pair:
        raise ValueError(f"target {info.ref!r}: pair targets must be dense regression, got grid={info.grid!r}")
    if info.grid == "patch":
        return FeatureHead(hidden, _vocab(info) if is_classification(info) else info.channels)
    if info.grid == "token" and is_classification(info):
        return TokenHead(hidden, _vocab(info), cells=patch // TOKEN_PX)
    raise ValueError(f"target {info.ref!r}: no head for grid={info.grid!r} with loss={info.loss!r}")
