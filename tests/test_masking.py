"""Video and text masking (docs/method.md §3, §5): ratios, cuboid structure, attention preference, determinism."""

from __future__ import annotations

import pytest
import torch

from violet_core.mask_draws import target_count
from violet_core.mask_pixels import apply_video_mask, upsample_mask
from violet_core.mask_text import text_mask
from violet_core.mask_video import attended_mask, block_mask, random_mask
from violet_core.masking import MaskSampler

pytestmark = pytest.mark.usefixtures("one_torch_thread")
T, H, W = 4, 7, 7
CELLS = T * H * W  # 196


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def counts(mask: torch.Tensor) -> torch.Tensor:
    return mask.flatten(1).sum(dim=1)


def bounding_box_filled(cells: torch.Tensor) -> tuple[bool, tuple[int, int, int]]:
    """(T, h, w) bool with at least one True -> (is it exactly its bounding box, box extents)."""
    idx = cells.nonzero()
    lo, hi = idx.min(dim=0).values, idx.max(dim=0).values
    extent = tuple((hi - lo + 1).tolist())
    box = cells[lo[0]:hi[0] + 1, lo[1]:hi[1] + 1, lo[2]:hi[2] + 1]
    return bool(box.all()) and int(cells.sum()) == box.numel(), extent


def neighbour_rate(mask: torch.Tensor) -> float:
    """Fraction of masked cells' in-grid 6-neighbours that are masked too: high for clustered masks."""
    m = mask.float()
    hits, total = 0.0, 0.0
    for dim in (1, 2, 3):
        a, b = m.narrow(dim, 0, m.shape[dim] - 1), m.narrow(dim, 1, m.shape[dim] - 1)
        hits += 2 * float((a * b).sum())
        total += float(a.sum() + b.sum())
    return hits / total


def test_target_count_rounds_half_up_and_keeps_one_cell():
    assert target_count(0.3, 196) == 59  # 58.8
    assert target_count(0.15, 196) == 29  # 29.4
    assert target_count(0.25, 2) == 1  # 0.5 rounds up
    assert target_count(0.01, 10) == 1  # 0.1 would round to 0, but ratio > 0 keeps one
    assert target_count(0.0, 10) == 0
    assert target_count(1.0, 196) == 196


@pytest.mark.parametrize("ratio", [0.15, 0.3, 0.5])
def test_random_mask_default_masks_exact_count_uniformly(ratio):
    mask = random_mask(2000, T, H, W, ratio, gen())
    assert mask.shape == (2000, T, H, W) and mask.dtype == torch.bool
    assert torch.all(counts(mask) == target_count(ratio, CELLS))
    # every cell equally likely: per-cell frequency within 5 sigma of the ratio
    freq = mask.float().mean(dim=0)
    sigma = (ratio * (1 - ratio) / 2000) ** 0.5
    assert float((freq - target_count(ratio, CELLS) / CELLS).abs().max()) < 5 * sigma


def test_random_mask_paper_is_bernoulli():
    mask = random_mask(4000, T, H, W, 0.15, gen(1), paper=True)
    assert abs(float(mask.float().mean()) - 0.15) < 0.01
    per_sample = counts(mask)
    assert per_sample.unique().numel() > 10  # counts vary per sample, unlike the exact default
    assert not random_mask(50, T, H, W, 0.0, gen(), paper=True).any()
    assert random_mask(50, T, H, W, 1.0, gen(), paper=True).all()


@pytest.mark.parametrize("shape", [(4, 7, 7), (1, 7, 7), (5, 7, 7), (2, 3, 3)])
@pytest.mark.parametrize("ratio", [0.05, 0.15, 0.3, 0.6])
def test_block_mask_default_honours_ratio_exactly(shape, ratio):
    frames, h, w = shape
    mask = block_mask(300, frames, h, w, ratio, gen(2))
    assert mask.shape == (300, frames, h, w)
    assert torch.all(counts(mask) == target_count(ratio, frames * h * w))


def test_block_mask_default_extremes():
    assert not block_mask(8, T, H, W, 0.0, gen()).any()
    assert block_mask(8, T, H, W, 1.0, gen()).all()
    assert torch.all(counts(block_mask(8, T, H, W, 0.97, gen())) == target_count(0.97, CELLS))


def test_block_mask_default_tops_up_when_cuboid_budget_runs_out(monkeypatch):
    import violet_core.mask_video as mask_video

    monkeypatch.setattr(mask_video, "_BM_MAX_CUBOIDS", 16)  # one round: too few cuboids to cover the grid
    mask = block_mask(8, T, H, W, 1.0, gen())
    assert mask.all()
    assert torch.all(counts(block_mask(8, T, H, W, 0.9, gen())) == target_count(0.9, CELLS))


def test_block_mask_default_is_clustered_unlike_random():
    rm = random_mask(500, T, H, W, 0.3, gen(3))
    bm = block_mask(500, T, H, W, 0.3, gen(3))
    assert neighbour_rate(rm) < 0.35  # about 58 / 195 for independent cells
    assert neighbour_rate(bm) > 0.5


def test_block_mask_default_first_cuboid_trimmed_to_one_cell():
    # target 1 cell: the first cuboid is drawn and trimmed down to one random cell of it
    mask = block_mask(200, T, H, W, 0.001, gen(4))
    assert torch.all(counts(mask) == 1)
    assert mask.float().sum(dim=0).count_nonzero() > 50  # the kept cell moves around the grid


@pytest.mark.parametrize("frames, expected", [(4, 0.151), (5, 0.183), (1, 0.082)])
def test_block_mask_paper_ratio_matches_released_code(frames, expected):
    mask = block_mask(3000, frames, H, W, 0.3, gen(5), paper=True)
    assert abs(float(mask.float().mean()) - expected) < 0.01


def test_block_mask_paper_ignores_ratio():
    a = block_mask(20, T, H, W, 0.05, gen(6), paper=True)
    b = block_mask(20, T, H, W, 0.9, gen(6), paper=True)
    assert torch.equal(a, b)


def test_block_mask_paper_single_cuboid_is_a_box_within_released_ranges():
    # T = 1 draws exactly one cuboid per sample, extents in [1, floor(2 * 7 / 3) - 1] = [1, 3]
    mask = block_mask(600, 1, H, W, 0.3, gen(7), paper=True)
    heights, widths = set(), set()
    for sample in mask:
        is_box, (t, h, w) = bounding_box_filled(sample)
        assert is_box and t == 1
        heights.add(h)
        widths.add(w)
    assert heights == {1, 2, 3} and widths == {1, 2, 3}
    assert mask.any(dim=0).all()  # placement is uniform enough to reach every cell, corners included


def test_block_mask_paper_two_frames_draws_two_single_frame_cuboids():
    # T = 2: two cuboids with t in [1, T - 1] = {1} and h, w <= 3, so at most 2 x 9 cells, reached sometimes
    mask = block_mask(300, 2, H, W, 0.3, gen(8), paper=True)
    assert int(counts(mask).max()) == 2 * 9 and bool((counts(mask) >= 1).all())
    frames_hit = mask.flatten(2).any(dim=2).sum(dim=1)
    assert set(frames_hit.tolist()) == {1, 2}  # both cuboids in one frame, or one per frame


def test_attended_mask_exact_count_and_prefers_high_scores():
    scores = torch.ones(400, T, H, W)
    scores[:, 0] = 10.0  # frame 0 receives 10x the attention of the others
    mask = attended_mask(scores, 0.05, gen(9))
    assert torch.all(counts(mask) == target_count(0.05, CELLS))
    share = float(mask[:, 0].sum()) / float(mask.sum())
    assert share > 0.6  # uniform sampling would give 0.25


def test_attended_mask_zero_scores_remain_possible():
    scores = torch.zeros(20, T, H, W)
    scores[:, 1, 2, 3] = 5.0
    scores[:, 2, 0, 0] = 1.0
    small = attended_mask(scores, 0.005, gen(10))  # 1 cell: one of the two scored cells
    assert torch.all(counts(small) == 1)
    assert bool((small[:, 1, 2, 3] | small[:, 2, 0, 0]).all())
    big = attended_mask(scores, 0.3, gen(10))  # 59 cells: the scored ones plus zero-score cells
    assert torch.all(counts(big) == 59)
    assert bool(big[:, 1, 2, 3].all() and big[:, 2, 0, 0].all())


def test_attended_mask_rejects_bad_scores():
    with pytest.raises(ValueError, match=">= 0"):
        attended_mask(-torch.ones(1, T, H, W), 0.1, gen())
    with pytest.raises(ValueError, match=r"\(B, T, h, w\)"):
        attended_mask(torch.ones(T, H, W), 0.1, gen())


def text_batch(batch: int = 500, length: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(1000, 2000, (batch, length), generator=gen(11))
    special = torch.zeros(batch, length, dtype=torch.bool)
    special[:, 0] = special[:, -1] = True  # [CLS] ... [SEP]
    special[:, -4:] = True  # padding
    return ids, special


def test_text_mask_replaces_only_non_special_tokens():
    ids, special = text_batch()
    masked, labels = text_mask(ids, special, 0.3, 103, gen(12))
    chosen = masked == 103
    assert not chosen[special].any()
    assert torch.equal(masked[~chosen], ids[~chosen])
    assert torch.equal(labels[chosen], ids[chosen])
    assert torch.all(labels[~chosen] == -100)
    assert abs(float(chosen[~special].float().mean()) - 0.3) < 0.03
    assert torch.equal(ids, text_batch()[0])  # input untouched


def test_text_mask_default_guarantees_one_masked_token_paper_does_not():
    ids, special = text_batch()
    special[0] = True  # a sample with only specials gets nothing masked
    _, labels = text_mask(ids, special, 0.01, 103, gen(13))
    per_sample = (labels != -100).sum(dim=1)
    assert int(per_sample[0]) == 0 and bool((per_sample[1:] >= 1).all())
    _, paper_labels = text_mask(ids, special, 0.01, 103, gen(13), paper=True)
    assert int(((paper_labels != -100).sum(dim=1) == 0).sum()) > 300
    _, none = text_mask(ids, special, 0.0, 103, gen(13))
    assert bool((none == -100).all())


def test_masks_are_deterministic_per_seed():
    scores = torch.rand(6, T, H, W, generator=gen(14))
    ids, special = text_batch(6)
    sampler = MaskSampler(("rm", "bm", "am"), 0.3, 0.15)
    for draw in (
        lambda g: random_mask(6, T, H, W, 0.3, g),
        lambda g: random_mask(6, T, H, W, 0.3, g, paper=True),
        lambda g: block_mask(6, T, H, W, 0.3, g),
        lambda g: block_mask(6, T, H, W, 0.3, g, paper=True),
        lambda g: attended_mask(scores, 0.3, g),
        lambda g: text_mask(ids, special, 0.3, 103, g)[1],
        lambda g: sampler.sample_video(6, T, H, W, g, attention=scores)[0],
    ):
        assert torch.equal(draw(gen(15)), draw(gen(15)))
        assert not torch.equal(draw(gen(15)), draw(gen(16)))


def test_sampler_mixture_uses_every_strategy_with_its_own_masks():
    sampler = MaskSampler(("rm", "bm", "am"), 0.3, 0.15)
    assert sampler.needs_attention
    attention = torch.rand(300, T, H, W, generator=gen(17))
    mask, used = sampler.sample_video(300, T, H, W, gen(18), attention=attention)
    assert len(used) == 300 and set(used) == {"rm", "bm", "am"}
    assert all(used.count(name) > 70 for name in ("rm", "bm", "am"))
    assert torch.all(counts(mask) == 59)  # every strategy honours the ratio in default mode
    bm_rows = [i for i, name in enumerate(used) if name == "bm"]
    rm_rows = [i for i, name in enumerate(used) if name == "rm"]
    assert neighbour_rate(mask[bm_rows]) > neighbour_rate(mask[rm_rows]) + 0.15


def test_sampler_paper_mode_hard_codes_015():
    sampler = MaskSampler(("rm",), 0.5, 0.5, paper=True)
    assert not sampler.needs_attention
    mask, used = sampler.sample_video(2000, T, H, W, gen(19))
    assert set(used) == {"rm"} and abs(float(mask.float().mean()) - 0.15) < 0.01
    ids, special = text_batch(2000)
    _, labels = sampler.sample_text(ids, special, 103, gen(20))
    assert abs(float((labels != -100)[~special].float().mean()) - 0.15) < 0.01
    default = MaskSampler(("rm",), 0.5, 0.4)
    _, labels = default.sample_text(ids, special, 103, gen(20))
    assert abs(float((labels != -100)[~special].float().mean()) - 0.4) < 0.02


def test_sampler_errors():
    with pytest.raises(ValueError, match="'am' needs attention"):
        MaskSampler(("rm", "am"), 0.3, 0.15).sample_video(2, T, H, W, gen())
    with pytest.raises(ValueError, match="unknown masking strategy 'tube'"):
        MaskSampler(("rm", "tube"), 0.3, 0.15)
    with pytest.raises(ValueError, match=r"video mask ratio must be in \[0, 1\], got 1.5"):
        MaskSampler(("rm",), 1.5, 0.15)
    with pytest.raises(ValueError, match=r"text mask ratio must be in \[0, 1\], got -0.1"):
        MaskSampler(("rm",), 0.3, -0.1)
    with pytest.raises(ValueError, match="at least one"):
        MaskSampler((), 0.3, 0.15)
    with pytest.raises(ValueError, match=r"mask ratio must be in \[0, 1\], got 2.0"):
        random_mask(1, T, H, W, 2.0, gen())


def test_upsample_mask_by_hand():
    mask = torch.tensor([[[[True, False], [False, True]]]])
    up = upsample_mask(mask, 2)
    expected = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]], dtype=torch.bool)
    assert up.shape == (1, 1, 4, 4) and torch.equal(up[0, 0], expected)


def test_apply_video_mask_zeroes_masked_patches_only():
    video = torch.rand(2, 3, 3, 64, 64, generator=gen(21)) + 1.0  # strictly positive
    mask = torch.zeros(2, 3, 2, 2, dtype=torch.bool)
    mask[0, 1, 0, 1] = True
    mask[1, 2, 1, 0] = True
    out = apply_video_mask(video, mask)
    assert out.data_ptr() != video.data_ptr() and bool((video > 0).all())
    assert bool((out[0, 1, :, :32, 32:] == 0).all()) and bool((out[1, 2, :, 32:, :32] == 0).all())
    assert int((out == 0).sum()) == 2 * 3 * 32 * 32
    keep = out != 0
    assert torch.equal(out[keep], video[keep])
    with pytest.raises(ValueError, match="does not tile"):
        apply_video_mask(video, torch.zeros(2, 3, 3, 3, dtype=torch.bool))
