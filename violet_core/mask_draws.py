"""The pieces every mask draw shares: argument checks, the exact per-sample count, top-k selection.

Used by the video strategies (`mask_video`), text masking (`mask_text`), the official code's joint
draw and step (`mask_paper`) and the sampler (`masking`), which also share `rows_by_strategy`.
"""

from __future__ import annotations

import math
from typing import Iterator, Sequence

import torch


def check_ratio(ratio: float, what: str = "mask ratio") -> float:
    """`ratio` as a float, or a one-line ValueError naming `what` when it is outside [0, 1] or NaN."""
    ratio = float(ratio)
    if not 0.0 <= ratio <= 1.0 or math.isnan(ratio):
        raise ValueError(f"{what} must be in [0, 1], got {ratio}")
    return ratio


def check_grid(batch: int, frames: int, h: int, w: int) -> None:
    """A ValueError unless every size of the (B, T, h, w) mask grid is positive."""
    if min(batch, frames, h, w) < 1:
        raise ValueError(f"mask grid needs positive sizes, got (B, T, h, w) = ({batch}, {frames}, {h}, {w})")


def target_count(ratio: float, cells: int) -> int:
    """Cells to mask per sample: round-half-up(ratio * cells), at least 1 when ratio > 0."""
    count = min(cells, int(math.floor(ratio * cells + 0.5)))
    return max(count, 1) if ratio > 0 else 0


def keep_top(scores: torch.Tensor, count: torch.Tensor | int) -> torch.Tensor:
    """(B, N) scores -> (B, N) bool marking the `count` highest scores of each row (count per row or shared)."""
    order = scores.argsort(dim=-1, descending=True)
    rank = torch.empty_like(order)
    rank.scatter_(-1, order, torch.arange(scores.shape[-1], device=scores.device).expand_as(order))
    if isinstance(count, torch.Tensor):
        count = count.to(rank.device).unsqueeze(-1)
    return rank < count


def rows_by_strategy(strategies: Sequence[str], choice: torch.Tensor) -> Iterator[tuple[str, torch.Tensor]]:
    """choice (B,) long, an index into `strategies` per sample -> (name, row indices) of each strategy
    some sample drew, in `strategies` order, so each strategy draws its rows' masks in one call."""
    for index, name in enumerate(strategies):
        rows = (choice == index).nonzero().flatten()
        if rows.numel():
            yield name, rows
