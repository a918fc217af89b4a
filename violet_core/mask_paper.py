"""Paper mode: one step's masks as the released VIOLETv2 code draws them (`mask.paper: true`).

The released `masking()` always runs with p_mask = 0.15 (`PAPER_RATIO`) for video and text; RM is
Bernoulli, BM a union of T cuboids, text gets no at-least-one guarantee, and AM is one draw over
video cells and text tokens together (`joint_attended_mask`). `paper_step_masks` puts them together
for the samples of a step once `masking.MaskSampler` has chosen each sample's strategy.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from violet_core.mask_draws import check_ratio, keep_top, rows_by_strategy
from violet_core.mask_text import mask_tokens, text_mask
from violet_core.mask_video import AM_EPSILON, block_mask, check_scores, random_mask

PAPER_RATIO = 0.15  # the released `masking()` is always called with its default p_mask


def joint_attended_count(frames: int, h: int, w: int, length: int, ratio: float) -> int:
    """Positions the released AM draws per sample: int(ratio * (T*(1+h*w) + L)), per-frame CLS and
    special text tokens included in the total (they are never drawn themselves)."""
    return int((frames * (1 + h * w) + length) * check_ratio(ratio))


def joint_attended_mask(video_scores: torch.Tensor, text_scores: torch.Tensor, special: torch.Tensor, ratio: float,
                        generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Attended masking as released: one draw over video cells and text tokens together.

    video_scores (B, T, h, w) >= 0: attention each video patch receives; text_scores (B, L) >= 0:
    attention each text token receives; special (B, L) bool: tokens never masked ([CLS], [SEP],
    [PAD]). Draws `joint_attended_count(T, h, w, L, ratio)` positions per sample without replacement,
    with probability proportional to the received attention, over the T*h*w video cells and the
    non-special text tokens (per-frame CLS slots count in the total but are never drawn, as the
    released code zeroes their attention). Returns (video mask (B, T, h, w) bool, text chosen (B, L) bool).
    """
    if video_scores.dim() != 4 or text_scores.dim() != 2 or special.shape != text_scores.shape:
        raise ValueError(f"joint AM needs video scores (B, T, h, w), text scores (B, L) and special (B, L), got "
                         f"{tuple(video_scores.shape)}, {tuple(text_scores.shape)} and {tuple(special.shape)}")
    if video_scores.shape[0] != text_scores.shape[0]:
        raise ValueError(f"joint AM: {video_scores.shape[0]} video rows for {text_scores.shape[0]} text rows")
    batch, frames, h, w = video_scores.shape
    length = text_scores.shape[1]
    flat = torch.cat([video_scores.detach().float().flatten(1), text_scores.detach().float()], dim=1)
    flat = flat.to(generator.device)
    check_scores(flat)
    drawable = torch.cat([torch.ones(batch, frames * h * w, dtype=torch.bool),
                          ~special.bool().cpu()], dim=1).to(generator.device)
    flat = flat.masked_fill(~drawable, 0.0)
    # the released draw fails (and falls back to RM) when it asks for more positions than exist;
    # here a sample with fewer drawable positions simply has all of them masked
    need = torch.clamp(drawable.sum(dim=1), max=joint_attended_count(frames, h, w, length, ratio))
    total = flat.sum(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
    probs = flat / total + AM_EPSILON  # as `attended_mask`: zero attention stays drawable, just very unlikely
    # Gumbel top-k: the k largest log p + Gumbel noise are a draw of k positions without replacement
    # with the same law as torch.multinomial's sequential draw, and it takes a count per row
    uniform = torch.rand(flat.shape, generator=generator, device=generator.device).clamp_min(1e-30)
    keys = (probs.log() - (-uniform.log()).log()).masked_fill(~drawable, -math.inf)
    chosen = keep_top(keys, need) & drawable
    video = chosen[:, :frames * h * w].reshape(batch, frames, h, w).to(video_scores.device)
    return video, chosen[:, frames * h * w:].to(text_scores.device)


def check_joint_attention(video_attention: torch.Tensor | None, text_attention: torch.Tensor | None,
                          batch: int, frames: int, h: int, w: int, length: int) -> None:
    """Paper-mode AM needs video attention (B, T, h, w) and text attention (B, L); a one-line error otherwise."""
    if video_attention is None or text_attention is None:
        raise ValueError("paper-mode masking strategy 'am' needs video attention (B, T, h, w) and text "
                         "attention (B, L); got None")
    if video_attention.shape != (batch, frames, h, w) or text_attention.shape != (batch, length):
        raise ValueError(f"attention must be {(batch, frames, h, w)} and {(batch, length)}, got "
                         f"{tuple(video_attention.shape)} and {tuple(text_attention.shape)}")


def paper_step_masks(strategies: Sequence[str], choice: torch.Tensor, ids: torch.Tensor, special: torch.Tensor,
                     mask_token_id: int, frames: int, h: int, w: int, generator: torch.Generator, mask_video: bool,
                     video_attention: torch.Tensor | None,
                     text_attention: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One paper-mode step -> (video mask (B, T, h, w) bool, masked ids (B, L), labels (B, L)).

    choice (B,) long: the index into `strategies` each sample drew. RM / BM samples mask text by
    coin flips; AM samples by `joint_attended_mask` (text hits become MLM labels, video hits are
    zeroed when the video is masked). An AM sample whose draw holds no text token while the video is
    masked falls back to RM, as the released code does.
    """
    batch = ids.shape[0]
    dev = generator.device
    video = torch.zeros(batch, frames, h, w, dtype=torch.bool, device=dev)
    coins = text_mask(ids, special, PAPER_RATIO, mask_token_id, generator, paper=True)[1] != -100
    chosen = coins.clone()
    for name, rows in rows_by_strategy(strategies, choice):
        if name == "am":
            part, text = joint_attended_mask(video_attention[rows.to(video_attention.device)],
                                             text_attention[rows.to(text_attention.device)],
                                             special[rows.to(special.device)], PAPER_RATIO, generator)
            chosen[rows.to(chosen.device)] = text.to(chosen.device)
            if not mask_video:
                continue
            video[rows] = part.to(dev)
            failed = rows[~text.any(dim=1).to(rows.device)]
            if failed.numel():  # no MLM label drawn: the released code redraws the sample as RM
                redrawn = random_mask(failed.numel(), frames, h, w, PAPER_RATIO, generator, paper=True)
                video[failed] = redrawn.to(dev)
                chosen[failed.to(chosen.device)] = coins[failed.to(coins.device)]
        elif mask_video:
            draw = random_mask if name == "rm" else block_mask
            video[rows] = draw(rows.numel(), frames, h, w, PAPER_RATIO, generator, paper=True).to(dev)
    masked_ids, labels = mask_tokens(ids, chosen, mask_token_id)
    return video, masked_ids, labels
