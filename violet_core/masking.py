"""Video and text masking for MVM / MLM (VIOLETv2 spec §5).

A video mask is a boolean `(B, T, h, w)` tensor on the grid of 32-px patches (h = w = S / 32), True
meaning masked. Masked patches are zeroed in ImageNet-normalised pixel space before the video
encoder (`apply_video_mask`); there is no learnable mask token.

Every sampler takes a `torch.Generator` and draws all of its randomness from it, so a seed fixes
the masks. Each has two modes:
  * default: the requested ratio is honoured exactly (round(ratio * cells) cells per sample);
  * `paper=True`: the released code's behaviour (Bernoulli RM, T union-of-cuboids BM that ignores
    the ratio, no at-least-one guarantee for text).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

STRATEGIES = ("rm", "bm", "am")
PAPER_RATIO = 0.15  # the released `masking()` is always called with its default p_mask (spec §5, §8.2)
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
    chosen = chosen.to(ids.device)
    masked_ids = ids.masked_fill(chosen, mask_token_id)
    labels = ids.masked_fill(~chosen, -100)
    return masked_ids, labels


def upsample_mask(mask: torch.Tensor, factor: int) -> torch.Tensor:
    """(B, T, h, w) -> (B, T, h * factor, w * factor): each cell becomes a factor x factor block."""
    if mask.dim() != 4:
        raise ValueError(f"mask must be (B, T, h, w), got shape {tuple(mask.shape)}")
    return mask.repeat_interleave(factor, dim=2).repeat_interleave(factor, dim=3)


def apply_video_mask(video: torch.Tensor, mask: torch.Tensor, patch: int = 32) -> torch.Tensor:
    """video (B, T, 3, S, S), mask (B, T, h, w) -> a copy with masked patches set to 0.

    0 in ImageNet-normalised space is the mean colour, which is what the encoder sees (spec §3).
    """
    batch, frames, _, height, width = video.shape
    if mask.shape != (batch, frames, height // patch, width // patch) or height % patch or width % patch:
        raise ValueError(f"mask {tuple(mask.shape)} does not tile video {tuple(video.shape)} "
                         f"with {patch}-px patches")
    pixels = upsample_mask(mask.to(video.device), patch)
    return video.masked_fill(pixels[:, :, None], 0.0)


class MaskSampler:
    """Per-sample mixture of video masking strategies plus the text masking of the same step.

    Each sample draws one of `strategies` uniformly (the released code's `random.choice`). In paper
    mode the ratios are the released code's hard-coded 0.15 and the samplers run in paper mode.
    """

    def __init__(self, strategies: Sequence[str] | str, ratio: float, text_ratio: float, paper: bool = False) -> None:
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

        attention: (B, T, h, w) scores, required when "am" is among the strategies.
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
