"""Video and text masking for MVM / MLM, as the official VIOLETv2 code's `masking` does it.

A video mask is a boolean `(B, T, h, w)` tensor on the grid of 32-px patches (h = w = S / 32), True
meaning masked. Masked patches are zeroed in ImageNet-normalised pixel space before the video
encoder (`mask_pixels.apply_video_mask`); there is no learnable mask token.

`MaskSampler.sample` makes one step's masks: each sample draws a strategy, and the strategies'
own modules draw the cells. Every draw takes a `torch.Generator` and draws all of its randomness
from it, so a seed fixes the masks. Two modes:
  * default: the requested ratio is honoured exactly (round(ratio * cells) cells per sample); AM
    picks video cells only and text is masked by independent coin flips (`mask_video`, `mask_text`);
  * `paper=True`: the released code's behaviour (Bernoulli RM, T union-of-cuboids BM that ignores
    the ratio, no at-least-one guarantee for text, AM drawn jointly over video cells and text
    tokens): `mask_paper`.

Without an MVM target the video is left unmasked (the official code masks video only when MVM is
trained) unless the caller asks otherwise. The shared checks and top-k draw are in `mask_draws`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from violet_core.mask_draws import check_grid, check_ratio, rows_by_strategy
from violet_core.mask_paper import PAPER_RATIO, check_joint_attention, paper_step_masks
from violet_core.mask_text import text_mask
from violet_core.mask_video import attended_mask, block_mask, random_mask

STRATEGIES = ("rm", "bm", "am")


@dataclass(frozen=True)
class StepMasks:
    """One step's masks from `MaskSampler.sample`."""

    video: torch.Tensor  # (B, T, h, w) bool, True = patch zeroed before the video encoder
    text_ids: torch.Tensor  # (B, L) long, [MASK] substituted
    labels: torch.Tensor  # (B, L) long, the original id at [MASK] positions, -100 elsewhere
    strategies: list[str]  # the strategy each sample drew


class MaskSampler:
    """Per-sample mixture of video masking strategies plus the text masking of the same step.

    Each sample draws one of `strategies` uniformly (the released code's `random.choice`). In paper
    mode the ratios are the released code's hard-coded 0.15 and the samplers run in paper mode.
    video_without_mvm: mask the video even when no MVM target is trained (the released code does
    not; the caller decides per step through `sample(mask_video=...)`, this only records the option).
    """

    def __init__(self, strategies: Sequence[str] | str, ratio: float, text_ratio: float, paper: bool = False,
                 video_without_mvm: bool = False) -> None:
        if isinstance(strategies, str):
            strategies = (strategies,)
        strategies = tuple(strategies)
        if not strategies:
            raise ValueError(f"need at least one masking strategy out of {', '.join(STRATEGIES)}")
        for name in strategies:
            if name not in STRATEGIES:
                raise ValueError(f"unknown masking strategy {name!r}; choose from {', '.join(STRATEGIES)}")
        if len(set(strategies)) != len(strategies):
            raise ValueError(f"masking strategies repeat a name: {strategies}")
        self.strategies = strategies
        self.ratio = check_ratio(ratio, "video mask ratio")
        self.text_ratio = check_ratio(text_ratio, "text mask ratio")
        self.paper = bool(paper)
        self.video_without_mvm = bool(video_without_mvm)

    def masks_video(self, has_mvm: bool) -> bool:
        """Whether the video is masked: always with an MVM target, otherwise only when asked."""
        return has_mvm or self.video_without_mvm

    def needs_attention_for(self, mask_video: bool) -> bool:
        """Whether `sample` needs attention scores: default AM picks video cells only (nothing to
        pick when the video stays unmasked), paper AM picks video cells and text tokens together."""
        return self.needs_attention and (mask_video or self.paper)

    @property
    def needs_attention(self) -> bool:
        return "am" in self.strategies

    @property
    def video_ratio(self) -> float:
        return PAPER_RATIO if self.paper else self.ratio

    @property
    def effective_text_ratio(self) -> float:
        return PAPER_RATIO if self.paper else self.text_ratio

    def sample_video(self, batch: int, frames: int, h: int, w: int, generator: torch.Generator,
                     attention: torch.Tensor | None = None) -> tuple[torch.Tensor, list[str]]:
        """-> (mask (B, T, h, w) bool, the strategy each sample used).

        attention: (B, T, h, w) scores, required when "am" is among the strategies. AM here picks
        video cells only, in either mode; paper mode's joint video-and-text draw is in `sample`.
        """
        check_grid(batch, frames, h, w)
        if self.needs_attention:
            if attention is None:
                raise ValueError("masking strategy 'am' needs attention scores of shape (B, T, h, w); got None")
            if attention.shape != (batch, frames, h, w):
                raise ValueError(f"attention must be {(batch, frames, h, w)}, got {tuple(attention.shape)}")
        choice, used = self._choose(batch, generator)
        mask = torch.zeros(batch, frames, h, w, dtype=torch.bool, device=generator.device)
        for name, rows in rows_by_strategy(self.strategies, choice):
            if name == "rm":
                part = random_mask(rows.numel(), frames, h, w, self.video_ratio, generator, paper=self.paper)
            elif name == "bm":
                part = block_mask(rows.numel(), frames, h, w, self.video_ratio, generator, paper=self.paper)
            else:
                part = attended_mask(attention[rows.to(attention.device)], self.video_ratio, generator)
            mask[rows] = part.to(mask.device)
        return mask, used

    def sample_text(self, ids: torch.Tensor, special: torch.Tensor, mask_token_id: int,
                    generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """`text_mask` at this sampler's text ratio and mode -> (masked_ids, labels), (B, L) each."""
        return text_mask(ids, special, self.effective_text_ratio, mask_token_id, generator, paper=self.paper)

    def sample(self, ids: torch.Tensor, special: torch.Tensor, mask_token_id: int, frames: int, h: int, w: int,
               generator: torch.Generator, mask_video: bool = True, video_attention: torch.Tensor | None = None,
               text_attention: torch.Tensor | None = None) -> StepMasks:
        """The masks of one step: ids / special (B, L), a (B, T, h, w) video grid.

        mask_video=False leaves every patch visible (no MVM target). Attention scores, when
        `needs_attention_for(mask_video)`: video_attention (B, T, h, w) and, in paper mode,
        text_attention (B, L), the attention each position receives in the fusion encoder.
        Default mode: video strategies as `sample_video`, text by `sample_text`. Paper mode
        (`mask_paper.paper_step_masks`): RM / BM
        samples mask text by coin flips, AM samples by `joint_attended_mask` (text hits become MLM
        labels, video hits are zeroed when the video is masked); an AM sample whose draw holds no
        text token while the video is masked falls back to RM, as the released code does.
        """
        batch = ids.shape[0]
        if ids.dim() != 2 or special.shape != ids.shape:
            raise ValueError(f"ids and special must both be (B, L), got {tuple(ids.shape)} and {tuple(special.shape)}")
        if not self.paper:
            if mask_video:
                video, used = self.sample_video(batch, frames, h, w, generator, attention=video_attention)
            else:
                check_grid(batch, frames, h, w)
                video, used = torch.zeros(batch, frames, h, w, dtype=torch.bool), self._choose(batch, generator)[1]
            masked_ids, labels = self.sample_text(ids, special, mask_token_id, generator)
            return StepMasks(video, masked_ids, labels, used)
        return self._sample_paper(ids, special, mask_token_id, frames, h, w, generator, mask_video,
                                  video_attention, text_attention)

    def _choose(self, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, list[str]]:
        choice = torch.randint(len(self.strategies), (batch,), generator=generator, device=generator.device)
        return choice, [self.strategies[i] for i in choice.tolist()]

    def _sample_paper(self, ids: torch.Tensor, special: torch.Tensor, mask_token_id: int, frames: int, h: int,
                      w: int, generator: torch.Generator, mask_video: bool, video_attention: torch.Tensor | None,
                      text_attention: torch.Tensor | None) -> StepMasks:
        batch, length = ids.shape
        check_grid(batch, frames, h, w)
        if self.needs_attention:
            check_joint_attention(video_attention, text_attention, batch, frames, h, w, length)
        choice, used = self._choose(batch, generator)
        video, masked_ids, labels = paper_step_masks(self.strategies, choice, ids, special, mask_token_id, frames, h,
                                                     w, generator, mask_video, video_attention, text_attention)
        return StepMasks(video, masked_ids, labels, used)
