"""Video and text masking for MVM / MLM, as the official VIOLETv2 code's `masking` does it.

A video mask is a boolean `(B, T, h, w)` tensor on the grid of 32-px patches (h = w = S / 32), True
meaning masked. Masked patches are zeroed in ImageNet-normalised pixel space before the video
encoder (`apply_video_mask`); there is no learnable mask token.

Every sampler takes a `torch.Generator` and draws all of its randomness from it, so a seed fixes
the masks. Each has two modes:
  * default: the requested ratio is honoured exactly (round(ratio * cells) cells per sample); AM
    picks video cells only and text is masked by independent coin flips;
  * `paper=True`: the released code's behaviour (Bernoulli RM, T union-of-cuboids BM that ignores
    the ratio, no at-least-one guarantee for text, AM drawn jointly over video cells and text
    tokens: `joint_attended_mask`).

`MaskSampler.sample` makes one step's masks. Without an MVM target the video is left unmasked
(the official code masks video only when MVM is trained) unless the caller asks otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

STRATEGIES = ("rm", "bm", "am")
PAPER_RATIO = 0.15  # the released `masking()` is always called with its default p_mask
_AM_EPSILON = 1e-6  # added to normalised scores: zero-attention cells stay drawable, just very unlikely
_BM_ROUND = 16  # cuboids drawn per sample and round in default BM (a 0.15 ratio needs about 4)
_BM_MAX_CUBOIDS = 4096  # after this many, default BM tops up with random cells (only near ratio 1)


def _check_ratio(ratio: float, what: str = "mask ratio") -> float:
    ratio = float(ratio)
    if not 0.0 <= ratio <= 1.0 or math.isnan(ratio):
        raise ValueError(f"{what} must be in [0, 1], got {ratio}")
    return ratio


def _check_grid(batch: int, frames: int, h: int, w: int) -> None:
    if min(batch, frames, h, w) < 1:
        raise ValueError(f"mask grid needs positive sizes, got (B, T, h, w) = ({batch}, {frames}, {h}, {w})")


def target_count(ratio: float, cells: int) -> int:
    """Cells to mask per sample: round-half-up(ratio * cells), at least 1 when ratio > 0."""
    count = min(cells, int(math.floor(ratio * cells + 0.5)))
    return max(count, 1) if ratio > 0 else 0


def _keep_top(scores: torch.Tensor, count: torch.Tensor | int) -> torch.Tensor:
    """(B, N) scores -> (B, N) bool marking the `count` highest scores of each row (count per row or shared)."""
    order = scores.argsort(dim=-1, descending=True)
    rank = torch.empty_like(order)
    rank.scatter_(-1, order, torch.arange(scores.shape[-1], device=scores.device).expand_as(order))
    if isinstance(count, torch.Tensor):
        count = count.to(rank.device).unsqueeze(-1)
    return rank < count


def random_mask(batch: int, frames: int, h: int, w: int, ratio: float, generator: torch.Generator,
                paper: bool = False) -> torch.Tensor:
    """Random masking (RM) -> (B, T, h, w) bool.

    Default: exactly `target_count(ratio, T*h*w)` cells per sample, uniformly without replacement.
    paper=True: each cell independently with probability `ratio`, as the released code.
    """
    _check_grid(batch, frames, h, w)
    ratio = _check_ratio(ratio)
    noise = torch.rand(batch, frames * h * w, generator=generator, device=generator.device)
    if paper:
        flat = noise < ratio
    else:
        flat = _keep_top(noise, target_count(ratio, frames * h * w))
    return flat.view(batch, frames, h, w)


def _cuboid_ranges(frames: int, h: int, w: int) -> tuple[int, int, int]:
    """Largest cuboid extent per axis, as the released code: t < T (1 if T = 1), h, w < floor(2 h / 3)."""
    return max(1, frames - 1), max(1, (2 * h) // 3 - 1), max(1, (2 * w) // 3 - 1)


def _draw_cuboids(batch: int, count: int, frames: int, h: int, w: int,
                  generator: torch.Generator) -> torch.Tensor:
    """`count` random cuboids per sample -> (B, count, T, h, w) bool, one box per slot.

    Extents are uniform in [1, max] per axis and the corner uniform over every position where the
    box fits, which is what the released code's `np.random.randint` calls draw.
    """
    dev = generator.device
    u = torch.rand(batch, count, 6, generator=generator, device=dev)
    sizes, starts = [], []
    for axis, (length, largest) in enumerate(zip((frames, h, w), _cuboid_ranges(frames, h, w))):
        size = 1 + (u[..., axis] * largest).long()
        sizes.append(size)
        starts.append((u[..., 3 + axis] * (length - size + 1)).long())
    boxes = torch.ones(batch, count, frames, h, w, dtype=torch.bool, device=dev)
    for axis, length in enumerate((frames, h, w)):
        coord = torch.arange(length, device=dev)
        inside = (coord >= starts[axis][..., None]) & (coord < (starts[axis] + sizes[axis])[..., None])
        shape = [batch, count, 1, 1, 1]
        shape[2 + axis] = length
        boxes &= inside.view(shape)
    return boxes


def block_mask(batch: int, frames: int, h: int, w: int, ratio: float, generator: torch.Generator,
               paper: bool = False) -> torch.Tensor:
    """Blockwise (3-D cuboid) masking (BM) -> (B, T, h, w) bool.

    Default: cuboids are added until their union reaches `target_count(ratio, T*h*w)` cells; the
    cells that the last cuboid would add beyond the target are dropped at random, so the count is
    exact and the ratio is honoured (the released BM ignores it).
    paper=True: the union of exactly T cuboids, ratio ignored (about 15.1% of a 4 x 7 x 7 grid).
    """
    _check_grid(batch, frames, h, w)
    ratio = _check_ratio(ratio)
    if paper:
        return _draw_cuboids(batch, frames, frames, h, w, generator).any(dim=1)
    cells = frames * h * w
    need = target_count(ratio, cells)
    dev = generator.device
    union = torch.zeros(batch, cells, dtype=torch.bool, device=dev)
    done = torch.full((batch,), need == 0, dtype=torch.bool, device=dev)
    drawn = 0
    while not bool(done.all()) and drawn < _BM_MAX_CUBOIDS:
        boxes = _draw_cuboids(batch, _BM_ROUND, frames, h, w, generator).flatten(2)
        drawn += _BM_ROUND
        # union after each of this round's cuboids, (B, K, N)
        steps, acc = [], union
        for k in range(_BM_ROUND):
            acc = acc | boxes[:, k]
            steps.append(acc)
        grown = torch.stack(steps, dim=1)
        counts = grown.sum(dim=-1)
        reached = counts >= need
        hit = reached.any(dim=1) & ~done
        first = reached.int().argmax(dim=1)
        rows = torch.arange(batch, device=dev)
        before = torch.where((first > 0)[:, None], grown[rows, (first - 1).clamp_min(0)], union)
        new_cells = grown[rows, first] & ~before
        # keep a random subset of the last cuboid's new cells, just enough to reach the target
        noise = torch.rand(batch, cells, generator=generator, device=dev).masked_fill(~new_cells, -1.0)
        keep = _keep_top(noise, need - before.sum(dim=-1)) & new_cells
        union = torch.where(hit[:, None], before | keep, torch.where(done[:, None], union, grown[:, -1]))
        done |= hit
    if not bool(done.all()):
        # Safety net only: corner cells need a cuboid placed at the corner, which thousands of draws
        # give on any realistic grid even at ratio 1; this keeps the loop bounded regardless.
        short = need - union.sum(dim=-1)
        noise = torch.rand(batch, cells, generator=generator, device=dev).masked_fill(union, -1.0)
        union |= _keep_top(noise, short.clamp_min(0)) & ~union
    return union.view(batch, frames, h, w)


def attended_mask(scores: torch.Tensor, ratio: float, generator: torch.Generator) -> torch.Tensor:
    """Attended masking (AM): scores (B, T, h, w) >= 0 -> (B, T, h, w) bool.

    Draws exactly `target_count(ratio, T*h*w)` cells per sample without replacement, with
    probability proportional to the score (e.g. the fusion attention each video token receives).
    """
    if scores.dim() != 4:
        raise ValueError(f"attention scores must be (B, T, h, w), got shape {tuple(scores.shape)}")
    ratio = _check_ratio(ratio)
    flat = scores.detach().float().flatten(1).to(generator.device)
    if not bool(torch.isfinite(flat).all()) or bool((flat < 0).any()):
        raise ValueError("attention scores must be finite and >= 0")
    need = target_count(ratio, flat.shape[1])
    mask = torch.zeros_like(flat, dtype=torch.bool)
    if need:
        # normalised first so the epsilon means the same for any attention scale
        probs = flat / flat.sum(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny) + _AM_EPSILON
        picked = torch.multinomial(probs, need, replacement=False, generator=generator)
        mask.scatter_(1, picked, True)
    return mask.view(scores.shape).to(scores.device)


def joint_attended_count(frames: int, h: int, w: int, length: int, ratio: float) -> int:
    """Positions the released AM draws per sample: int(ratio * (T*(1+h*w) + L)), per-frame CLS and
    special text tokens included in the total (they are never drawn themselves)."""
    return int((frames * (1 + h * w) + length) * _check_ratio(ratio))


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
    if not bool(torch.isfinite(flat).all()) or bool((flat < 0).any()):
        raise ValueError("attention scores must be finite and >= 0")
    drawable = torch.cat([torch.ones(batch, frames * h * w, dtype=torch.bool),
                          ~special.bool().cpu()], dim=1).to(generator.device)
    flat = flat.masked_fill(~drawable, 0.0)
    # the released draw fails (and falls back to RM) when it asks for more positions than exist;
    # here a sample with fewer drawable positions simply has all of them masked
    need = torch.clamp(drawable.sum(dim=1), max=joint_attended_count(frames, h, w, length, ratio))
    total = flat.sum(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
    probs = flat / total + _AM_EPSILON  # as `attended_mask`: zero attention stays drawable, just very unlikely
    # Gumbel top-k: the k largest log p + Gumbel noise are a draw of k positions without replacement
    # with the same law as torch.multinomial's sequential draw, and it takes a count per row
    uniform = torch.rand(flat.shape, generator=generator, device=generator.device).clamp_min(1e-30)
    keys = (probs.log() - (-uniform.log()).log()).masked_fill(~drawable, -math.inf)
    chosen = _keep_top(keys, need) & drawable
    video = chosen[:, :frames * h * w].reshape(batch, frames, h, w).to(video_scores.device)
    return video, chosen[:, frames * h * w:].to(text_scores.device)


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
    ratio = _check_ratio(ratio, "text mask ratio")
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


def upsample_mask(mask: torch.Tensor, factor: int) -> torch.Tensor:
    """(B, T, h, w) -> (B, T, h * factor, w * factor): each cell becomes a factor x factor block."""
    if mask.dim() != 4:
        raise ValueError(f"mask must be (B, T, h, w), got shape {tuple(mask.shape)}")
    return mask.repeat_interleave(factor, dim=2).repeat_interleave(factor, dim=3)


def apply_video_mask(video: torch.Tensor, mask: torch.Tensor, patch: int = 32) -> torch.Tensor:
    """video (B, T, 3, S, S), mask (B, T, h, w) -> a copy with masked patches set to 0.

    0 in ImageNet-normalised space is the mean colour, which is what the encoder sees.
    """
    batch, frames, _, height, width = video.shape
    if mask.shape != (batch, frames, height // patch, width // patch) or height % patch or width % patch:
        raise ValueError(f"mask {tuple(mask.shape)} does not tile video {tuple(video.shape)} "
                         f"with {patch}-px patches")
    pixels = upsample_mask(mask.to(video.device), patch)
    return video.masked_fill(pixels[:, :, None], 0.0)


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
        self.ratio = _check_ratio(ratio, "video mask ratio")
        self.text_ratio = _check_ratio(text_ratio, "text mask ratio")
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
        _check_grid(batch, frames, h, w)
        if self.needs_attention:
            if attention is None:
                raise ValueError("masking strategy 'am' needs attention scores of shape (B, T, h, w); got None")
            if attention.shape != (batch, frames, h, w):
                raise ValueError(f"attention must be {(batch, frames, h, w)}, got {tuple(attention.shape)}")
        choice = torch.randint(len(self.strategies), (batch,), generator=generator, device=generator.device)
        mask = torch.zeros(batch, frames, h, w, dtype=torch.bool, device=generator.device)
        for index, name in enumerate(self.strategies):
            rows = (choice == index).nonzero().flatten()
            if rows.numel() == 0:
                continue
            if name == "rm":
                part = random_mask(rows.numel(), frames, h, w, self.video_ratio, generator, paper=self.paper)
            elif name == "bm":
                part = block_mask(rows.numel(), frames, h, w, self.video_ratio, generator, paper=self.paper)
            else:
                part = attended_mask(attention[rows.to(attention.device)], self.video_ratio, generator)
            mask[rows] = part.to(mask.device)
        return mask, [self.strategies[i] for i in choice.tolist()]

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
        Default mode: video strategies as `sample_video`, text by `sample_text`. Paper mode: RM / BM
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
                _check_grid(batch, frames, h, w)
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
        _check_grid(batch, frames, h, w)
        if self.needs_attention:
            if video_attention is None or text_attention is None:
                raise ValueError("paper-mode masking strategy 'am' needs video attention (B, T, h, w) and text "
                                 "attention (B, L); got None")
            if video_attention.shape != (batch, frames, h, w) or text_attention.shape != (batch, length):
                raise ValueError(f"attention must be {(batch, frames, h, w)} and {(batch, length)}, got "
                                 f"{tuple(video_attention.shape)} and {tuple(text_attention.shape)}")
        choice, used = self._choose(batch, generator)
        dev = generator.device
        video = torch.zeros(batch, frames, h, w, dtype=torch.bool, device=dev)
        coins = text_mask(ids, special, PAPER_RATIO, mask_token_id, generator, paper=True)[1] != -100
        chosen = coins.clone()
        for index, name in enumerate(self.strategies):
            rows = (choice == index).nonzero().flatten()
            if rows.numel() == 0:
                continue
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
        return StepMasks(video, masked_ids, labels, used)
