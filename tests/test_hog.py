"""The `hog` target: parity with scikit-image (the official VIOLETv2 path), layout, flip, errors."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from skimage.draw import line as skimage_line
from skimage.feature import hog as skimage_hog

from mvm_targets.targets import hog_kernels
from mvm_targets.targets.half import to_float16
from mvm_targets.targets.hog import build_hog, flip_maskfeat, mirror_orientation_bins
from mvm_targets.targets.hog_kernels import (bresenham_line, cells_to_patches, imagenet_normalise, line_endpoints,
                                             line_stencil, orientation_bin_table, unit_scale)
from mvm_targets.targets.spec import Grid

# skimage accumulates in float32; the kernels reproduce its arithmetic, so these are loose bounds
RTOL, ATOL = 1e-4, 1e-5


def structured_frame(size: int, rng: np.random.Generator) -> np.ndarray:
    """(size, size, 3) uint8: smooth colour noise with pixel noise, a saturated rectangle, a grey disc,
    a grey ramp (equal channels: ties in the dominant-channel choice), a flat patch and a diagonal edge."""
    coarse = rng.random((size // 16 + 2, size // 16 + 2, 3)).astype(np.float32)
    smooth = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    img = 40 + 170 * smooth + rng.normal(0, 4, (size, size, 3))
    yy, xx = np.mgrid[:size, :size]
    q = size // 8
    img[q:3 * q, q:4 * q] = (255, 0, 0)
    img[(yy - 5 * q) ** 2 + (xx - 2 * q) ** 2 < (1.5 * q) ** 2] = 128
    ramp = (yy[:2 * q, :] * 3 + xx[:2 * q, :]) % 256
    img[6 * q:, :] = ramp[: size - 6 * q, :, None]
    img[q:2 * q, 5 * q:7 * q] = (10, 200, 90)
    img[(xx - yy > 3 * q) & (yy < 3 * q)] *= 0.5
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def make_frames(size: int, seed: int) -> np.ndarray:
    """(4, size, size, 3): three structured frames and one of uniform noise."""
    rng = np.random.default_rng(seed)
    frames = [structured_frame(size, rng) for _ in range(3)]
    frames.append(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
    return np.stack(frames)


def skimage_paper(frame: np.ndarray, orientations: int = 9, cell: int = 8) -> np.ndarray:
    """The official VIOLETv2 target (`dataset.py` `get_hog_features`)."""
    return skimage_hog(imagenet_normalise(frame), orientations=orientations, pixels_per_cell=(cell, cell),
                       cells_per_block=(2, 2), visualize=True, channel_axis=2)[1]


def skimage_maskfeat(frame: np.ndarray, orientations: int = 9, cell: int = 8) -> np.ndarray:
    """Per-channel L2-normalised cell histograms, in the target's (patches, 432) layout."""
    unit = unit_scale(frame)
    cells = np.stack([
        skimage_hog(unit[..., ch], orientations=orientations, pixels_per_cell=(cell, cell), cells_per_block=(1, 1),
                    block_norm="L2", feature_vector=False)[:, :, 0, 0]
        for ch in range(3)], axis=2)  # (nr, nc, 3, O)
    return cells_to_patches(cells, 32 // cell)


@pytest.fixture(scope="module", params=[64, 224])
def frames(request) -> np.ndarray:
    return make_frames(request.param, seed=request.param)


# ---------------------------------------------------------------------------------------------
# The rendering stencil

def test_bresenham_equals_skimage_draw_line():
    span = range(-5, 6)
    for r0 in span:
        for c0 in span:
            for r1 in span:
                for c1 in span:
                    mine, ref = bresenham_line(r0, c0, r1, c1), skimage_line(r0, c0, r1, c1)
                    np.testing.assert_array_equal(mine[0], ref[0])
                    np.testing.assert_array_equal(mine[1], ref[1])
    for r0, c0, r1, c1 in [(0, 0, 40, 7), (3, 90, -20, 4), (100, 100, 100, 100)]:
        np.testing.assert_array_equal(np.stack(bresenham_line(r0, c0, r1, c1)), np.stack(skimage_line(r0, c0, r1, c1)))


@pytest.mark.parametrize("orientations,cell", [(9, 8), (4, 4), (6, 16)])
def test_stencil_equals_skimage_lines(orientations, cell):
    stencil = line_stencil(orientations, cell)
    assert stencil.shape == (orientations, cell, cell) and stencil.dtype == np.uint8
    for o, (r0, c0, r1, c1) in enumerate(line_endpoints(orientations, cell)):
        expected = np.zeros((cell, cell), np.uint8)
        expected[skimage_line(r0, c0, r1, c1)] = 1
        np.testing.assert_array_equal(stencil[o], expected)
    # skimage truncates the end points towards zero, so its segments are shifted up/left of the cell
    # centre: none touches the first row or column of a cell
    assert not stencil[:, 0, :].any() and not stencil[:, :, 0].any()


def test_stencil_quirks_of_skimage_rendering():
    """With 9 bins and 8-px cells, the truncated end points coincide for bins 2 and 3 and for bins 5
    and 6: the rendering shows only their sums, 7 distinct segments for 9 bins."""
    stencil = line_stencil(9, 8)
    np.testing.assert_array_equal(stencil[2], stencil[3])
    np.testing.assert_array_equal(stencil[5], stencil[6])
    assert len({stencil[o].tobytes() for o in range(9)}) == 7


# ---------------------------------------------------------------------------------------------
# Parity with scikit-image

@pytest.mark.parametrize("variant", ["paper", "maskfeat"])
def test_matches_skimage(frames, variant):
    reference = {"paper": skimage_paper, "maskfeat": skimage_maskfeat}[variant]
    ours = build_hog(variant).compute_float32(frames[None])[0]
    ref = np.stack([reference(f) for f in frames])
    assert ours.dtype == np.float32 and ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, rtol=RTOL, atol=ATOL)
    np.testing.assert_array_equal(ours, ref)  # in fact bit-exact (skimage 0.26)
    assert (ref != 0).mean() > 0.2  # the frames exercise the histogram and the renderer


# Pixels where two channels' float32 gradient magnitudes (skimage's argmax key) tie although their
# float64 squares differ: (channel a, its (down, up, right, left) values, channel b, its values).
# Found by random search over the ImageNet-normalised levels.
CHANNEL_TIES = [
    (0, (144, 242, 140, 182), 1, (120, 221, 152, 126)),
    (1, (21, 24, 206, 244), 2, (209, 234, 90, 119)),
    (0, (174, 252, 108, 105), 2, (117, 88, 154, 83)),
]


@pytest.mark.parametrize("tie", CHANNEL_TIES)
def test_paper_channel_ties_go_to_the_first_channel(tie):
    """skimage's argmax over float32 magnitudes keeps the first of two equal ones; the kernel compares
    float64 squares and must catch these near-ties."""
    ch_a, vals_a, ch_b, vals_b = tie
    levels = hog_kernels.level_table("imagenet")
    keys, squares = [], []
    for ch, (dn, up, right, left) in ((ch_a, vals_a), (ch_b, vals_b)):
        g_row, g_col = levels[ch, dn] - levels[ch, up], levels[ch, right] - levels[ch, left]
        squares.append(np.float64(g_row) ** 2 + np.float64(g_col) ** 2)
        keys.append(np.hypot(g_row, g_col))
    assert keys[0] == keys[1] and squares[0] != squares[1]
    frame = np.full((32, 32, 3), 128, np.uint8)
    r, c = 13, 10
    for ch, (dn, up, right, left) in ((ch_a, vals_a), (ch_b, vals_b)):
        frame[r + 1, c, ch], frame[r - 1, c, ch], frame[r, c + 1, ch], frame[r, c - 1, ch] = dn, up, right, left
    ours = build_hog("paper").compute_float32(frame[None, None])[0, 0]
    np.testing.assert_array_equal(ours, skimage_paper(frame))


def test_bin_table_settles_every_pair_for_nine_bins():
    for transform in ("imagenet", "unit"):
        assert (orientation_bin_table(transform, 9) >= 0).all()


@pytest.mark.parametrize("orientations,cell", [(4, 4), (6, 16)])
def test_other_geometries_match_skimage(orientations, cell):
    """The generic kernels; 4 bins have edges at 45 and 135 degrees, where the table gives up and the
    exact float path bins the pixel."""
    if orientations == 4:
        assert (orientation_bin_table("imagenet", 4) < 0).any()
    frames = make_frames(64, seed=7)
    paper = build_hog("paper", orientations=orientations, cell=cell).compute_float32(frames[None])[0]
    maskfeat = build_hog("maskfeat", orientations=orientations, cell=cell).compute_float32(frames[None])[0]
    for i, frame in enumerate(frames):
        np.testing.assert_allclose(paper[i], skimage_paper(frame, orientations, cell), rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(maskfeat[i], skimage_maskfeat(frame, orientations, cell), rtol=RTOL, atol=ATOL)


def test_stored_float16_is_the_cast_of_the_float32_result():
    frames = make_frames(64, seed=3)[None]
    for variant, reference in (("paper", skimage_paper), ("maskfeat", skimage_maskfeat)):
        target = build_hog(variant)
        data = target.compute(frames)["data"]
        assert data.dtype == np.float16
        np.testing.assert_array_equal(data, target.compute_float32(frames).astype(np.float16))
        ref = np.stack([reference(f) for f in frames[0]])
        np.testing.assert_allclose(data[0].astype(np.float32), ref, rtol=2.0 ** -11, atol=2.0 ** -25)


@pytest.mark.parametrize("variant", ["paper", "maskfeat"])
def test_compute_in_chunks_equals_one_pass(variant):
    """`compute` runs the kernels CHUNK_FRAMES frames at a time; a batch spanning several chunks."""
    from mvm_targets.targets.hog import CHUNK_FRAMES
    rng = np.random.default_rng(4)
    clips = rng.integers(0, 256, (CHUNK_FRAMES // 4 + 3, 4, 32, 32, 3), dtype=np.uint8)
    target = build_hog(variant)
    np.testing.assert_array_equal(target.compute(clips)["data"], target.compute_float32(clips).astype(np.float16))


def test_float16_conversion_matches_numpy():
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 2 ** 32, 1_999_985, dtype=np.uint64).astype(np.uint32)
    edges = np.array([0, 0x80000000, 0x7F800000, 0xFF800000, 0x477FE000, 0x477FEFFF, 0x477FF000, 0x33000000,
                      0x33000001, 0x387FC000, 0x387FFFFF, 0x38800000, 0x3F800000, 0x3F801000, 0x3F803000], np.uint32)
    values = np.concatenate([bits, edges]).view(np.float32).reshape(2, -1)
    with np.errstate(over="ignore"):
        expected = values.astype(np.float16)
    ours = to_float16(values)
    nan = np.isnan(values)
    np.testing.assert_array_equal(ours.view(np.uint16)[~nan], expected.view(np.uint16)[~nan])
    assert np.isnan(ours[nan]).all()


# ---------------------------------------------------------------------------------------------
# The target contract

@pytest.mark.parametrize("variant", ["paper", "maskfeat"])
def test_shapes_dtypes_and_spec(variant):
    target = build_hog(variant)
    spec = target.spec
    assert (spec.name, spec.variant, spec.dtype, spec.loss) == ("hog", variant, "float16", "l1")
    assert spec.grid is (Grid.DENSE if variant == "paper" else Grid.PATCH)
    assert spec.params == {"orientations": 9, "cell": 8} and spec.description
    assert spec.clip_shape(4, 224) == ((4, 224, 224) if variant == "paper" else (4, 49, 432))
    clips = np.stack([make_frames(64, seed=1)[:3], make_frames(64, seed=2)[:3]])  # (2, 3, 64, 64, 3)
    out = target.compute(clips)
    assert set(out) == {"data"}
    assert out["data"].shape == (2, *spec.clip_shape(3, 64)) and out["data"].dtype == np.float16
    assert np.isfinite(out["data"]).all()
    empty = target.compute(clips[:0])["data"]
    assert empty.shape == (0, *spec.clip_shape(3, 64)) and empty.dtype == np.float16


def test_options_change_the_target_id():
    ids = {build_hog(v, orientations=o, cell=c).spec.target_id
           for v in ("paper", "maskfeat") for o, c in ((9, 8), (6, 8), (9, 4))}
    assert len(ids) == 6
    assert build_hog("maskfeat", cell=16).spec.clip_shape(2, 224) == (2, 49, 2 * 2 * 3 * 9)


@pytest.mark.parametrize("variant", ["paper", "maskfeat"])
def test_deterministic_and_batch_independent(variant):
    target = build_hog(variant)
    clips = make_frames(64, seed=11).reshape(2, 2, 64, 64, 3)
    together = target.compute(clips)["data"]
    np.testing.assert_array_equal(together, target.compute(clips)["data"])
    for b in range(2):
        np.testing.assert_array_equal(together[b], target.compute(clips[b:b + 1])["data"][0])
        for t in range(2):
            np.testing.assert_array_equal(together[b, t], target.compute(clips[b:b + 1, t:t + 1])["data"][0, 0])


def test_registered_under_hog():
    from mvm_targets.targets import registry  # the loader would import every target; look the entry up directly
    assert registry._FACTORIES["hog"] is build_hog
    assert registry._VARIANTS["hog"] == ("paper", "maskfeat")


@pytest.mark.parametrize("shape,dtype,match", [
    ((1, 2, 48, 48, 3), np.uint8, "multiple of 32"),
    ((1, 2, 64, 96, 3), np.uint8, "square"),
    ((1, 2, 64, 64, 3), np.float32, "uint8"),
    ((2, 64, 64, 3), np.uint8, "B, T, S, S, 3"),
    ((1, 2, 64, 64, 4), np.uint8, "B, T, S, S, 3"),
])
def test_rejects_bad_frames(shape, dtype, match):
    for variant in ("paper", "maskfeat"):
        with pytest.raises(ValueError, match=match):
            build_hog(variant).compute(np.zeros(shape, dtype))


def test_rejects_bad_options():
    with pytest.raises(ValueError, match="variant"):
        build_hog("dalal")
    with pytest.raises(ValueError, match="cell"):
        build_hog("paper", cell=6)
    with pytest.raises(ValueError, match="orientations"):
        build_hog("maskfeat", orientations=0)


# ---------------------------------------------------------------------------------------------
# Horizontal flip

def test_mirror_orientation_bins():
    hist = np.arange(2 * 9, dtype=np.float32).reshape(2, 9)
    np.testing.assert_array_equal(mirror_orientation_bins(hist), hist[:, ::-1])
    np.testing.assert_array_equal(mirror_orientation_bins(mirror_orientation_bins(hist)), hist)
    assert mirror_orientation_bins(np.eye(9))[0, 8] == 1 and mirror_orientation_bins(np.eye(9))[4, 4] == 1


def flip_exact_frame(size: int, seed: int) -> np.ndarray:
    """A frame whose maskfeat target flips exactly: every pixel's vertical gradient is non-zero (so no
    orientation sits on the 0/180 degree edge, the one bin edge a flip does not mirror), except on
    the first and last rows, which are constant, so their gradient is zero altogether.

    Per channel and column, rows of equal parity form a random walk with non-zero steps."""
    rng = np.random.default_rng(seed)
    img = np.empty((size, size, 3), np.int64)
    for ch in range(3):
        img[0, :, ch] = 100
        img[1, :, ch] = rng.integers(0, 256, size)
        for r in range(2, size - 1):
            step = rng.integers(3, 26, size) * rng.choice([-1, 1], size)
            nxt = img[r - 2, :, ch] + step
            nxt = np.where((nxt < 0) | (nxt > 255), img[r - 2, :, ch] - step, nxt)
            img[r, :, ch] = nxt
        free = np.setdiff1d(np.arange(256), img[size - 3, :, ch])
        img[size - 1, :, ch] = free[len(free) // 2]
    assert (img[2:] != img[:-2]).all()  # the vertical central difference never vanishes
    return img.astype(np.uint8)


@pytest.mark.parametrize("size", [64, 224])
def test_maskfeat_of_flipped_frame_is_flipped_and_mirrored(size):
    frames = np.stack([flip_exact_frame(size, seed) for seed in range(2)])[None]
    target = build_hog("maskfeat")
    original = target.compute_float32(frames)
    flipped = target.compute_float32(np.ascontiguousarray(frames[:, :, :, ::-1]))
    # equal up to float32 rounding: a flip reverses the order in which a cell's pixels are summed
    np.testing.assert_allclose(flipped, flip_maskfeat(original, size), rtol=1e-6, atol=1e-7)
    assert np.abs(flipped - original).max() > 0.1  # the flip does change the target


def test_flip_relation_fails_only_through_the_zero_degree_edge():
    """On a generic frame the relation breaks (pixels with a purely horizontal gradient stay in bin 0),
    which is why the exact test above uses a constructed frame."""
    frames = make_frames(64, seed=5)[:1][None]
    target = build_hog("maskfeat")
    flipped = target.compute_float32(np.ascontiguousarray(frames[:, :, :, ::-1]))
    mismatch = np.abs(flipped - flip_maskfeat(target.compute_float32(frames), 64))
    assert mismatch.max() > 1e-3
