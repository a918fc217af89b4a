"""The video masking strategies, each drawing one (B, T, h, w) bool mask on the 32-px patch grid.

  * RM, `random_mask`: cells uniformly at random;
  * BM, `block_mask`: a union of random 3-D cuboids;
  * AM, `attended_mask`: cells in proportion to the attention they receive.

RM and BM have two modes: by default the requested ratio is honoured exactly (`target_count`
cells per sample); `paper=True` is the released code's behaviour (Bernoulli RM, a union of T
cuboids for BM that ignores the ratio). AM here picks video cells only in either mode; the released
code's joint draw over video and text is `mask_paper.joint_attended_mask`. Every draw comes from
the `torch.Generator` passed in, so a seed fixes the masks.
"""

from __future__ import annotations

import torch

from violet_core.mask_draws import check_grid, check_ratio, keep_top, target_count

AM_EPSILON = 1e-6  # added to normalised scores: zero-attention cells stay drawable, just very unlikely
_BM_ROUND = 16  # cuboids drawn per sample and round in default BM (a 0.15 ratio needs about 4)
_BM_MAX_CUBOIDS = 4096  # after this many, default BM tops up with random cells (only near ratio 1)


def random_mask(batch: int, frames: int, h: int, w: int, ratio: float, generator: torch.Generator,
                paper: bool = False) -> torch.Tensor:
    """Random masking (RM) -> (B, T, h, w) bool.

    Default: exactly `target_count(ratio, T*h*w)` cells per sample, uniformly without replacement.
    paper=True: each cell independently with probability `ratio`, as the released code.
    """
    check_grid(batch, frames, h, w)
    ratio = check_ratio(ratio)
    noise = torch.rand(batch, frames * h * w, generator=generator, device=generator.device)
    if paper:
        flat = noise < ratio
    else:
        flat = keep_top(noise, target_count(ratio, frames * h * w))
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
    check_grid(batch, frames, h, w)
    ratio = check_ratio(ratio)
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
        keep = keep_top(noise, need - before.sum(dim=-1)) & new_cells
        union = torch.where(hit[:, None], before | keep, torch.where(done[:, None], union, grown[:, -1]))
        done |= hit
    if not bool(done.all()):
        # Safety net only: corner cells need a cuboid placed at the corner, which thousands of draws
        # give on any realistic grid even at ratio 1; this keeps the loop bounded regardless.
        short = need - union.sum(dim=-1)
        noise = torch.rand(batch, cells, generator=generator, device=dev).masked_fill(union, -1.0)
        union |= keep_top(noise, short.clamp_min(0)) & ~union
    return union.view(batch, frames, h, w)


def check_scores(flat: torch.Tensor) -> None:
    """Attention scores must be finite and >= 0 to be drawn in proportion to."""
    if not bool(torch.isfinite(flat).all()) or bool((flat < 0).any()):
        raise ValueError("attention scores must be finite and >= 0")


def attended_mask(scores: torch.Tensor, ratio: float, generator: torch.Generator) -> torch.Tensor:
    """Attended masking (AM): scores (B, T, h, w) >= 0 -> (B, T, h, w) bool.

    Draws exactly `target_count(ratio, T*h*w)` cells per sample without replacement, with
    probability proportional to the score (e.g. the fusion attention each video token receives).
    """
    if scores.dim() != 4:
        raise ValueError(f"attention scores must be (B, T, h, w), got shape {tuple(scores.shape)}")
    ratio = check_ratio(ratio)
    flat = scores.detach().float().flatten(1).to(generator.device)
    check_scores(flat)
    need = target_count(ratio, flat.shape[1])
    mask = torch.zeros_like(flat, dtype=torch.bool)
    if need:
        # normalised first so the epsilon means the same for any attention scale
        probs = flat / flat.sum(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny) + AM_EPSILON
        picked = torch.multinomial(probs, need, replacement=False, generator=generator)
        mask.scatter_(1, picked, True)
    return mask.view(scores.shape).to(scores.device)
