"""MLM masking of token ids: which tokens become [MASK], and the labels the MLM loss reads."""

from __future__ import annotations

import torch

from violet_core.mask_draws import check_ratio


def text_mask(ids: torch.Tensor, special: torch.Tensor, ratio: float, mask_token_id: int,
              generator: torch.Generator, paper: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """MLM masking: ids (B, L) long, special (B, L) bool -> (masked_ids, labels), both (B, L) long.

    Each non-special token becomes `mask_token_id` with probability `ratio` (no 80/10/10 rule, as
    the released code); labels hold the original id there and -100 elsewhere. By default a sample
    with any non-special token gets at least one masked token when ratio > 0, so its MLM loss is
    defined; paper=True drops that guarantee.
    """
    if ids.shape != special.shape or ids.dim() != 2:
        raise ValueError(f"ids and special must both be (B, L), got {tuple(ids.shape)} and {tuple(special.shape)}")
    ratio = check_ratio(ratio, "text mask ratio")
    candidates = ~special.bool().to(generator.device)
    noise = torch.rand(ids.shape, generator=generator, device=generator.device)
    chosen = (noise < ratio) & candidates
    if not paper and ratio > 0:
        empty = ~chosen.any(dim=1) & candidates.any(dim=1)
        pick = torch.rand(ids.shape, generator=generator, device=generator.device).masked_fill(~candidates, -1.0)
        forced = torch.zeros_like(chosen)
        forced.scatter_(1, pick.argmax(dim=1, keepdim=True), True)
        chosen |= forced & empty[:, None]
    return mask_tokens(ids, chosen, mask_token_id)


def mask_tokens(ids: torch.Tensor, chosen: torch.Tensor, mask_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """ids (B, L), chosen (B, L) bool -> (ids with [MASK] where chosen, labels: the id there, -100 elsewhere)."""
    chosen = chosen.to(ids.device).bool()
    return ids.masked_fill(chosen, mask_token_id), ids.masked_fill(~chosen, -100)
