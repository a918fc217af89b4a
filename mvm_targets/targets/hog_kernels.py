"""Numba kernels for the `hog` target: skimage's HOG, bit for bit, fast.

From uint8 frames `(N, H, W, 3)`:

- `paper_hog_image` -> `(N, H, W)` float32: `skimage.feature.hog(x, 9, (8, 8), visualize=True,
  channel_axis=2)[1]` with x the ImageNet-normalised float32 frame (what VIOLETv2 regresses).
- `maskfeat_patch_hog` -> `(N, (H/32) * (W/32), 432)` float32: per channel, `skimage.feature.hog(
  x[..., ch], 9, (8, 8), (1, 1), 'L2', feature_vector=False)` with x the [0, 1] float32 frame, grouped by
  32-px patch (`cells_to_patches`).

How skimage's arithmetic is reproduced (tests/test_hog.py compares with skimage 0.26, which agrees exactly):

- Input values. The float frame is a function of each channel's uint8 value, so the 256 possible
  float32 values per channel are tabulated (`level_table`) with the numpy ops of the slow path. A
  gradient is `levels[p(r+1)] - levels[p(r-1)]` in float32, as skimage takes it on the float32 frame;
  it is 0 on the first/last row (row gradient) and first/last column (column gradient).
- Channel choice (paper). skimage's key is float32 `np.hypot`, equal to
  `float32(sqrt(double(g_row)**2 + double(g_col)**2))`; argmax, so the first channel wins ties.
- Orientation bin. skimage bins `rad2deg(arctan2(g_row, g_col)) % 180` into [k, k+1) * 180/n. The
  float32 gradient is the integer difference of two uint8 values times a per-channel scale, up to a
  rounding spread below 5e-5 relative. `orientation_bin_table` tabulates the bin per integer pair
  (a, b) in [-255, 255]^2 and proves it constant over every float32 gradient pair the integer pair can
  produce (the four corners of the attainable range agree); pairs where it is not get -1 and are binned
  with the exact float formula at run time. With 9 bins there is no such pair (edges at 20, 40, ...
  degrees are never hit by a ratio of small integers; 0 and 90 degrees are exact).
- Magnitude. `sqrt(double(g_row)**2 + double(g_col)**2)` (skimage: `np.hypot`, at most 1 ulp of
  float64 apart, which has not shown up after the float32 sums below).
- Cell histogram. skimage's Cython `cell_hog` sums a cell's magnitudes row-major into a C `float`,
  i.e. `total = float32(double(total) + magnitude)` per pixel, then `total / (cell * cell)` in float32
  (the histogram array is float64 but holds float32 values). Not float64 sums.
- Rendering (paper). Every cell gets the same segments, so they are one (9, 8, 8) stencil
  (`line_stencil`, drawn with `bresenham_line` = `skimage.draw.line`). skimage adds bin after bin into a
  float32 image; `_render` does the same float32 additions in the same order.
- L2 normalisation (maskfeat). `v / sqrt(sum(v**2) + eps**2)` in float64 with numpy's pairwise sum
  order, then float32 (skimage's block array has the image's float dtype).
"""

from __future__ import annotations

import functools
import math

import numpy as np
from numba import njit, prange

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MAX_ORIENTATIONS = 64  # bins are stored as int8 in the orientation table
MASKFEAT_EPS = 1e-5  # skimage's `_hog_normalize_block` default


# ------------------------------------------------------------------------------------------------
# Float inputs: the exact float32 frames the slow reference path feeds skimage.

def imagenet_normalise(frames: np.ndarray) -> np.ndarray:
    """uint8 RGB (..., 3) -> float32 `((x / 255) - mean) / std`, every op in float32 (as torchvision)."""
    mean = np.asarray(IMAGENET_MEAN, dtype=np.float32)
    std = np.asarray(IMAGENET_STD, dtype=np.float32)
    return (frames.astype(np.float32) / np.float32(255.0) - mean) / std


def unit_scale(frames: np.ndarray) -> np.ndarray:
    """uint8 RGB (..., 3) -> float32 `x / 255` in [0, 1] (as torchvision's ToTensor)."""
    return frames.astype(np.float32) / np.float32(255.0)


INPUT_TRANSFORMS = {"imagenet": imagenet_normalise, "unit": unit_scale}


@functools.lru_cache(maxsize=None)
def level_table(transform: str) -> np.ndarray:
    """(3, 256) float32: the float value of uint8 level p in channel c after `INPUT_TRANSFORMS[transform]`."""
    levels = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1)  # (256, 3) fake pixels
    table = np.ascontiguousarray(INPUT_TRANSFORMS[transform](levels).T, dtype=np.float32)
    if not np.all(np.diff(table, axis=1) > 0):  # the bin proof below needs strictly increasing levels
        raise AssertionError("input transform must be strictly increasing in the uint8 level")
    table.setflags(write=False)
    return table


# ------------------------------------------------------------------------------------------------
# Orientation bins per integer gradient pair.

def _skimage_bins(g_row: np.ndarray, g_col: np.ndarray, orientations: int) -> np.ndarray:
    """skimage's binning (`_hoghistogram.hog_histograms`) in numpy; -1 where no bin matches."""
    orientation = np.rad2deg(np.arctan2(g_row, g_col)) % 180
    per_bin = 180.0 / orientations
    bins = np.full(orientation.shape, -1, dtype=np.int8)
    for i in range(orientations):
        bins[(orientation < per_bin * (i + 1)) & (orientation >= per_bin * i)] = i
    return bins


def _attainable_gradients(levels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For one channel's (256,) level table: min and max float32 gradient per integer difference a,
    indexed a + 255. Every float32 gradient with integer difference a lies in [lo[a], hi[a]]."""
    lo = np.empty(511, dtype=np.float64)
    hi = np.empty(511, dtype=np.float64)
    for a in range(-255, 256):
        p = np.arange(max(0, -a), min(255, 255 - a) + 1)
        g = levels[p + a] - levels[p]  # float32, like skimage's float32 central difference
        lo[a + 255], hi[a + 255] = g.min(), g.max()
    return lo, hi


@functools.lru_cache(maxsize=None)
def orientation_bin_table(transform: str, orientations: int) -> np.ndarray:
    """(3, 511, 511) int8: bin of a pixel whose chosen channel c has integer row/column differences
    (a, b), at [c, a + 255, b + 255]; -1 where the bin is not provably constant (binned exactly at
    run time instead).

    Within one quadrant the orientation is monotonic in each gradient component, so the bin is the
    same over the whole rectangle of attainable float gradients iff it is at the four corners.
    """
    levels = level_table(transform)
    table = np.empty((3, 511, 511), dtype=np.int8)
    for ch in range(3):
        lo, hi = _attainable_gradients(levels[ch])
        corners = [_skimage_bins(r[:, None], c[None, :], orientations) for r in (lo, hi) for c in (lo, hi)]
        same = (corners[0] == corners[1]) & (corners[0] == corners[2]) & (corners[0] == corners[3])
        table[ch] = np.where(same, corners[0], -1)
    table.setflags(write=False)
    return table


# ------------------------------------------------------------------------------------------------
# The rendering stencil.

def bresenham_line(r0: int, c0: int, r1: int, c1: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixels of the segment (r0, c0)-(r1, c1), equal to `skimage.draw.line`.

    Steps one pixel at a time along the longer axis (the column axis when both are equal); at step i
    the other coordinate has moved round_half_up(i * minor / major) pixels towards the end point.
    """
    dr, dc = r1 - r0, c1 - c0
    steep = abs(dr) > abs(dc)
    major, minor = (abs(dr), abs(dc)) if steep else (abs(dc), abs(dr))
    s_major = 1 if (dr if steep else dc) > 0 else -1
    s_minor = 1 if (dc if steep else dr) > 0 else -1
    i = np.arange(major + 1)
    along = s_major * i
    across = s_minor * ((2 * i * minor + major) // (2 * major)) if major else np.zeros_like(i)
    rr, cc = (r0 + along, c0 + across) if steep else (r0 + across, c0 + along)
    return rr.astype(np.intp), cc.astype(np.intp)


def line_endpoints(orientations: int, cell: int) -> list[tuple[int, int, int, int]]:
    """The segment skimage draws for each bin, in coordinates local to one cell.

    skimage's `hog(visualize=True)`: radius = cell // 2 - 1, bin midpoint angle m, dr = radius*sin(m),
    dc = radius*cos(m), segment from (int(r - dc), int(c + dr)) to (int(r + dc), int(c - dr)) around
    the cell centre (r, c) = (cell // 2, cell // 2) + cell origin. The truncations give the same
    offsets in every cell (all coordinates are positive), so one cell's segments serve all.
    """
    radius = cell // 2 - 1
    centre = cell // 2
    ends = []
    for o in range(orientations):
        mid = np.pi * (o + 0.5) / orientations
        d_r, d_c = radius * np.sin(mid), radius * np.cos(mid)
        ends.append((int(centre - d_c), int(centre + d_r), int(centre + d_c), int(centre - d_r)))
    return ends


@functools.lru_cache(maxsize=None)
def line_stencil(orientations: int = 9, cell: int = 8) -> np.ndarray:
    """(orientations, cell, cell) uint8: 1 where bin o's line segment covers a pixel of the cell."""
    stencil = np.zeros((orientations, cell, cell), dtype=np.uint8)
    for o, (r0, c0, r1, c1) in enumerate(line_endpoints(orientations, cell)):
        rr, cc = bresenham_line(r0, c0, r1, c1)
        stencil[o, rr, cc] = 1
    stencil.setflags(write=False)
    return stencil


@functools.lru_cache(maxsize=None)
def _segment_table(orientations: int, cell: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The stencil as per-bin pixel lists: rows (O, L), cols (O, L), lengths (O,), cell-local."""
    stencil = line_stencil(orientations, cell)
    length = stencil.reshape(orientations, -1).sum(axis=1).astype(np.int64)
    rows = np.zeros((orientations, int(length.max())), dtype=np.int64)
    cols = np.zeros_like(rows)
    for o in range(orientations):
        rr, cc = np.nonzero(stencil[o])
        rows[o, :rr.size], cols[o, :cc.size] = rr, cc
    return rows, cols, length


@functools.lru_cache(maxsize=None)
def _flat_bin_table(transform: str, orientations: int) -> tuple[np.ndarray, int]:
    """The bin table flattened for the kernels, and the stride between channels: 0 when the three
    channels' tables agree (always so without undecided pairs), so that one 255 KiB block serves all
    and stays in cache."""
    table = orientation_bin_table(transform, orientations)
    if all(np.array_equal(table[0], table[ch]) for ch in (1, 2)):
        return table[0].reshape(-1), 0
    return table.reshape(-1), BIN_TABLE_STRIDE


# ------------------------------------------------------------------------------------------------
# Numba kernels. One frame per prange iteration; its scratch is allocated inside the iteration.
#
# A frame is processed row by row, through a ring of three prepared rows: `_prepare_row` splits a
# uint8 row into channel planes of float levels and of integer values, padded by one mirrored pixel
# at each end so that the central difference there is exactly 0, as skimage sets it (the first and
# last rows use themselves as both neighbours, for the same reason). `_row_*` computes each pixel's
# magnitude and bin-table index in a branch-free loop that LLVM vectorises, and `_accumulate` adds
# the magnitudes into the cell histograms in skimage's order.
#
# Speed notes (each measured on this 2-core Zen 3; together ~4x over a straightforward per-pixel
# loop): the vectorised row pass; no array views inside loops (a view costs an atomic refcount
# update); no integer division by the run-time cell size per pixel; no non-inlined calls on the hot
# path; one sqrt per pixel instead of three for the dominant channel; accumulation in an order that
# interleaves cells (see `_accumulate`); literal geometry (DEFAULT_GEOMETRY); and float16 conversion
# in hardware (`half.to_float16`).

BIN_TABLE_STRIDE = 511 * 511  # one channel's block in a flattened (C, 511, 511) bin table
NEAR_TIE = 1.0 + 1e-6  # squared magnitudes closer than this may round to the same float32 magnitude
# The batch kernels call `_cell_histograms_*` with literal (orientations=9, cell=8) for the default
# geometry: LLVM then inlines it with constant loop bounds and strides, ~1.7x faster than with the
# same values at run time. Other geometries take the generic call.
DEFAULT_GEOMETRY = (9, 8)


@njit(cache=True, nogil=True)
def _exact_bin(g_row, g_col, orientations):
    """The skimage bin of one float gradient (the slow path for pairs the table could not settle)."""
    orientation = (math.atan2(np.float64(g_row), np.float64(g_col)) * (180.0 / np.pi)) % 180.0
    per_bin = 180.0 / orientations
    for i in range(orientations):
        if orientation < per_bin * (i + 1) and orientation >= per_bin * i:
            return i
    return -1


@njit(cache=True, nogil=True)
def _prepare_row(img, r, levels, f_rows, i_rows, slot):
    """Row r of img (H, W, 3) uint8 -> f_rows[slot] (3, W + 2) float32 levels and i_rows[slot]
    (3, W + 2) int32 values; entry c + 1 holds pixel c, the pads mirror pixels 1 and W - 2."""
    width = img.shape[1]
    for c in range(width):
        for ch in range(3):
            v = img[r, c, ch]
            f_rows[slot, ch, c + 1] = levels[ch, v]
            i_rows[slot, ch, c + 1] = np.int32(v)
    for ch in range(3):
        f_rows[slot, ch, 0] = f_rows[slot, ch, 2]
        f_rows[slot, ch, width + 1] = f_rows[slot, ch, width - 1]
        i_rows[slot, ch, 0] = i_rows[slot, ch, 2]
        i_rows[slot, ch, width + 1] = i_rows[slot, ch, width - 1]


@njit(cache=True, nogil=True)
def _table_index(i_rows, up, mid, dn, ch, c):
    """(a + 255) * 511 + (b + 255) for the integer row/column differences (a, b) at column c."""
    a = i_rows[dn, ch, c + 1] - i_rows[up, ch, c + 1]
    b = i_rows[mid, ch, c + 2] - i_rows[mid, ch, c]
    return (a + 255) * 511 + (b + 255)


@njit(cache=True, nogil=True)
def _row_dominant(f_rows, i_rows, up, mid, dn, chan, key, mag, near):
    """Per pixel of one row: the dominant channel, its magnitude (float64) and its bin-table index.

    skimage's argmax key is float32 `np.hypot` = float32(sqrt(double(g_row)^2 + double(g_col)^2)),
    first channel on ties. Comparing the exact squared magnitudes instead agrees except where two of
    them are within NEAR_TIE (then their float32 roots may tie); those pixels are flagged in `near`
    and redone by `_dominant_exact`. Returns whether any pixel was flagged.
    """
    any_near = False
    for c in range(key.shape[0]):
        gr0 = f_rows[dn, 0, c + 1] - f_rows[up, 0, c + 1]
        gc0 = f_rows[mid, 0, c + 2] - f_rows[mid, 0, c]
        gr1 = f_rows[dn, 1, c + 1] - f_rows[up, 1, c + 1]
        gc1 = f_rows[mid, 1, c + 2] - f_rows[mid, 1, c]
        gr2 = f_rows[dn, 2, c + 1] - f_rows[up, 2, c + 1]
        gc2 = f_rows[mid, 2, c + 2] - f_rows[mid, 2, c]
        m0 = np.float64(gr0) * gr0 + np.float64(gc0) * gc0
        m1 = np.float64(gr1) * gr1 + np.float64(gc1) * gc1
        m2 = np.float64(gr2) * gr2 + np.float64(gc2) * gc2
        top1 = m1 > m0
        best = m1 if top1 else m0
        close = top1 & (m1 <= m0 * NEAR_TIE)
        top2 = m2 > best
        close |= top2 & (m2 <= best * NEAR_TIE)
        best = m2 if top2 else best
        mag[c] = math.sqrt(best)
        k0 = _table_index(i_rows, up, mid, dn, 0, c)
        k1 = _table_index(i_rows, up, mid, dn, 1, c)
        k2 = _table_index(i_rows, up, mid, dn, 2, c)
        key[c] = k2 if top2 else (k1 if top1 else k0)
        chan[c] = 2 if top2 else (1 if top1 else 0)
        near[c] = close
        any_near |= close
    return any_near


@njit(cache=True, nogil=True)
def _dominant_exact(f_rows, i_rows, up, mid, dn, chan, key, mag, c):
    """skimage's channel choice at column c, literally: argmax of the float32 magnitudes."""
    best = np.float32(-1.0)
    for ch in range(3):
        gr = f_rows[dn, ch, c + 1] - f_rows[up, ch, c + 1]
        gc = f_rows[mid, ch, c + 2] - f_rows[mid, ch, c]
        s = math.sqrt(np.float64(gr) * gr + np.float64(gc) * gc)
        if np.float32(s) > best:
            best = np.float32(s)
            mag[c] = s
            chan[c] = ch
            key[c] = _table_index(i_rows, up, mid, dn, ch, c)


@njit(cache=True, nogil=True)
def _row_per_channel(f_rows, i_rows, up, mid, dn, key, mag):
    """Per pixel and channel of one row: magnitude (float64) and bin-table index, (3, W) each."""
    for ch in range(3):
        for c in range(key.shape[1]):
            gr = f_rows[dn, ch, c + 1] - f_rows[up, ch, c + 1]
            gc = f_rows[mid, ch, c + 2] - f_rows[mid, ch, c]
            mag[ch, c] = math.sqrt(np.float64(gr) * gr + np.float64(gc) * gc)
            key[ch, c] = _table_index(i_rows, up, mid, dn, ch, c)


@njit(cache=True, nogil=True)
def _accumulate(hist, hr, cell, n_ch, chan, key, mag, bin_table, table_stride, f_rows, up, mid, dn,
                orientations, dominant):
    """Add one row's magnitudes into hist[hr] (n_cols, n_ch, O) float32, as skimage's `cell_hog` does:
    `total += magnitude` with a C float `total` (float32 rounding of a float64 sum at every step).

    Each histogram entry must see its pixels in row-major order, but entries of different cells are
    independent, so the loop runs over pixel j of every cell before pixel j + 1: consecutive updates
    then hit different cells, and their float32 round trips overlap instead of waiting on each other.
    """
    for j in range(cell):
        for hc in range(hist.shape[1]):
            c = hc * cell + j
            for ch in range(n_ch):
                g_ch = chan[c] if dominant else ch  # the channel whose gradient is binned
                o = np.int64(bin_table[g_ch * table_stride + key[ch, c]])
                if o < 0:  # cold path (never taken for 9 bins); keeps the call off the hot path
                    o = _exact_bin(f_rows[dn, g_ch, c + 1] - f_rows[up, g_ch, c + 1],
                                   f_rows[mid, g_ch, c + 2] - f_rows[mid, g_ch, c], orientations)
                if o >= 0:
                    hist[hr, hc, ch, o] = np.float32(np.float64(hist[hr, hc, ch, o]) + mag[ch, c])


@njit(cache=True, nogil=True)
def _ring_slots(r, height):
    """Ring-buffer slots of rows r - 1, r, r + 1; the first and last rows are their own neighbours
    (skimage: zero row gradient there)."""
    mid = r % 3
    if r == 0 or r == height - 1:
        return mid, mid, mid
    return (r + 2) % 3, mid, (r + 1) % 3


@njit(cache=True, nogil=True)
def _divide_by_area(hist, cell):
    """skimage's `cell_hog` returns `total / (cell * cell)` computed in float32."""
    area = np.float32(cell * cell)
    flat = hist.reshape(-1)
    for i in range(flat.size):
        flat[i] = flat[i] / area


# The two histogram drivers differ only in their row pass; as separate functions (not one with a
# flag) each batch kernel compiles only the pass it uses.

@njit(cache=True, nogil=True)
def _cell_histograms_dominant(img, levels, bin_table, table_stride, orientations, cell):
    """img (H, W, 3) uint8 -> (H/cell, W/cell, 1, orientations) float32: skimage's multichannel HOG
    cell histograms (dominant channel per pixel), before any block normalisation."""
    height, width = img.shape[0], img.shape[1]
    hist = np.zeros((height // cell, width // cell, 1, orientations), dtype=np.float32)
    f_rows = np.empty((3, 3, width + 2), dtype=np.float32)  # ring buffer over rows r - 1, r, r + 1
    i_rows = np.empty((3, 3, width + 2), dtype=np.int32)
    chan = np.zeros(width, dtype=np.int32)
    near = np.zeros(width, dtype=np.bool_)
    key = np.empty((1, width), dtype=np.int32)
    mag = np.empty((1, width), dtype=np.float64)
    _prepare_row(img, 0, levels, f_rows, i_rows, 0)
    for r in range(height):
        if r + 1 < height:
            _prepare_row(img, r + 1, levels, f_rows, i_rows, (r + 1) % 3)
        up, mid, dn = _ring_slots(r, height)
        if _row_dominant(f_rows, i_rows, up, mid, dn, chan, key[0], mag[0], near):
            for c in range(width):
                if near[c]:
                    _dominant_exact(f_rows, i_rows, up, mid, dn, chan, key[0], mag[0], c)
        _accumulate(hist, r // cell, cell, 1, chan, key, mag, bin_table, table_stride, f_rows,
                    up, mid, dn, orientations, True)
    _divide_by_area(hist, cell)
    return hist


@njit(cache=True, nogil=True)
def _cell_histograms_per_channel(img, levels, bin_table, table_stride, orientations, cell):
    """img (H, W, 3) uint8 -> (H/cell, W/cell, 3, orientations) float32: skimage's single-channel HOG
    cell histograms of each channel, before any block normalisation."""
    height, width = img.shape[0], img.shape[1]
    hist = np.zeros((height // cell, width // cell, 3, orientations), dtype=np.float32)
    f_rows = np.empty((3, 3, width + 2), dtype=np.float32)
    i_rows = np.empty((3, 3, width + 2), dtype=np.int32)
    chan = np.zeros(width, dtype=np.int32)  # unused: every channel is binned
    key = np.empty((3, width), dtype=np.int32)
    mag = np.empty((3, width), dtype=np.float64)
    _prepare_row(img, 0, levels, f_rows, i_rows, 0)
    for r in range(height):
        if r + 1 < height:
            _prepare_row(img, r + 1, levels, f_rows, i_rows, (r + 1) % 3)
        up, mid, dn = _ring_slots(r, height)
        _row_per_channel(f_rows, i_rows, up, mid, dn, key, mag)
        _accumulate(hist, r // cell, cell, 3, chan, key, mag, bin_table, table_stride, f_rows,
                    up, mid, dn, orientations, False)
    _divide_by_area(hist, cell)
    return hist


@njit(cache=True, nogil=True)
def _render(hist, cell, line_rows, line_cols, line_len, out):
    """hist (nr, nc, 1, O) float32 -> out (nr*cell, nc*cell) float32, skimage's hog_image: bin by bin
    in increasing order, each segment's pixels get the bin value added in float32."""
    out[:] = 0.0
    for hr in range(hist.shape[0]):
        for hc in range(hist.shape[1]):
            for o in range(hist.shape[3]):
                v = hist[hr, hc, 0, o]
                for k in range(line_len[o]):
                    out[hr * cell + line_rows[o, k], hc * cell + line_cols[o, k]] += v


@njit(parallel=True, cache=True, nogil=True)
def _paper_batch(frames, levels, bin_table, table_stride, orientations, cell, line_rows, line_cols, line_len, out):
    default = orientations == 9 and cell == 8 and table_stride == 0
    for f in prange(frames.shape[0]):
        if default:  # literal geometry: LLVM inlines the call and folds it in (see DEFAULT_GEOMETRY)
            hist = _cell_histograms_dominant(frames[f], levels, bin_table, 0, 9, 8)
        else:
            hist = _cell_histograms_dominant(frames[f], levels, bin_table, table_stride, orientations, cell)
        _render(hist, cell, line_rows, line_cols, line_len, out[f])


@njit(cache=True, nogil=True)
def _pairwise_sum(values, n):
    """numpy's pairwise summation order for a contiguous float64 reduction of n <= 128 values."""
    if n < 8:
        total = 0.0
        for i in range(n):
            total += values[i]
        return total
    r0, r1, r2, r3 = values[0], values[1], values[2], values[3]
    r4, r5, r6, r7 = values[4], values[5], values[6], values[7]
    stop = n - n % 8
    for i in range(8, stop, 8):
        r0 += values[i]
        r1 += values[i + 1]
        r2 += values[i + 2]
        r3 += values[i + 3]
        r4 += values[i + 4]
        r5 += values[i + 5]
        r6 += values[i + 6]
        r7 += values[i + 7]
    total = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    for i in range(stop, n):
        total += values[i]
    return total


@njit(cache=True, nogil=True)
def _l2_normalise(hist, eps2, patch_cells, out):
    """hist (nr, nc, 3, O) float32 -> out (n_patches, patch_cells**2 * 3 * O) float32: skimage's 'L2'
    norm of 1x1-cell blocks, `v / sqrt(sum(v**2) + eps**2)` in float64 (numpy's pairwise sum order),
    cast to float32, written in patch layout: patch (hr // k, hc // k) in row-major order, then
    (hr % k, hc % k, channel, bin) inside it, k = patch_cells."""
    orientations = hist.shape[3]
    patches_per_row = hist.shape[1] // patch_cells
    squares = np.empty(orientations, dtype=np.float64)
    for pr in range(hist.shape[0] // patch_cells):
        for pc in range(patches_per_row):
            p = pr * patches_per_row + pc
            for i in range(patch_cells):
                for j in range(patch_cells):
                    hr = pr * patch_cells + i
                    hc = pc * patch_cells + j
                    base = (i * patch_cells + j) * 3 * orientations
                    for ch in range(3):
                        for o in range(orientations):
                            v = np.float64(hist[hr, hc, ch, o])
                            squares[o] = v * v
                        norm = math.sqrt(_pairwise_sum(squares, orientations) + eps2)
                        for o in range(orientations):
                            out[p, base + ch * orientations + o] = np.float32(np.float64(hist[hr, hc, ch, o]) / norm)


@njit(parallel=True, cache=True, nogil=True)
def _maskfeat_batch(frames, levels, bin_table, table_stride, orientations, cell, eps2, patch_cells, out):
    default = orientations == 9 and cell == 8 and table_stride == 0
    for f in prange(frames.shape[0]):
        if default:  # literal geometry: LLVM inlines the call and folds it in (see DEFAULT_GEOMETRY)
            hist = _cell_histograms_per_channel(frames[f], levels, bin_table, 0, 9, 8)
        else:
            hist = _cell_histograms_per_channel(frames[f], levels, bin_table, table_stride, orientations, cell)
        _l2_normalise(hist, eps2, patch_cells, out[f])


# ------------------------------------------------------------------------------------------------
# Public entry points: float32 results, bit-equal to skimage.

def _check_frames(frames: np.ndarray, cell: int, orientations: int) -> np.ndarray:
    if not isinstance(frames, np.ndarray) or frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected (N, H, W, 3) uint8 frames, got {getattr(frames, 'shape', None)} "
                         f"{getattr(frames, 'dtype', type(frames).__name__)}")
    if cell < 2:
        raise ValueError(f"cell must be at least 2 pixels, got {cell}")
    if frames.shape[1] % cell or frames.shape[2] % cell:
        raise ValueError(f"frame size {frames.shape[1:3]} is not a multiple of the cell size {cell}")
    if not 1 <= orientations <= MAX_ORIENTATIONS:
        raise ValueError(f"orientations must be in [1, {MAX_ORIENTATIONS}], got {orientations}")
    return np.ascontiguousarray(frames)


def _output(out: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray:
    if out is None:
        return np.empty(shape, dtype=np.float32)
    if out.shape != shape or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous float32 array of shape {shape}")
    return out


def paper_hog_image(frames: np.ndarray, orientations: int = 9, cell: int = 8,
                    out: np.ndarray | None = None) -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N, H, W) float32 (into `out` when given): skimage's `hog_image` of each
    ImageNet-normalised frame, `skimage.feature.hog(imagenet_normalise(f), orientations, (cell, cell),
    visualize=True, channel_axis=2)[1]`."""
    frames = _check_frames(frames, cell, orientations)
    bin_table, stride = _flat_bin_table("imagenet", orientations)
    out = _output(out, frames.shape[:3])
    _paper_batch(frames, level_table("imagenet"), bin_table, stride, orientations, cell,
                 *_segment_table(orientations, cell), out)
    return out


def maskfeat_patch_hog(frames: np.ndarray, orientations: int = 9, cell: int = 8, patch: int = 32,
                       out: np.ndarray | None = None) -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N, (H/patch) * (W/patch), (patch/cell)**2 * 3 * orientations) float32
    (into `out` when given).

    Per channel ch, cell histograms with L2 normalisation, i.e. `skimage.feature.hog(unit_scale(f)[..., ch],
    orientations, (cell, cell), (1, 1), 'L2', feature_vector=False)[:, :, 0, 0]`, rearranged by
    `cells_to_patches` (patches row-major; inside one: cell row, cell column, channel, bin)."""
    frames = _check_frames(frames, cell, orientations)
    if patch % cell or frames.shape[1] % patch or frames.shape[2] % patch:
        raise ValueError(f"patch {patch} must be a multiple of the cell {cell} and divide the frame size "
                         f"{frames.shape[1:3]}")
    n, h, w = frames.shape[:3]
    k = patch // cell
    out = _output(out, (n, (h // patch) * (w // patch), k * k * 3 * orientations))
    bin_table, stride = _flat_bin_table("unit", orientations)
    _maskfeat_batch(frames, level_table("unit"), bin_table, stride, orientations, cell, MASKFEAT_EPS ** 2, k, out)
    return out


def cells_to_patches(cells: np.ndarray, patch_cells: int) -> np.ndarray:
    """(..., nr, nc, C, O) per-cell histograms -> (..., (nr/k) * (nc/k), k * k * C * O), k = patch_cells,
    flattening (cell row, cell column, channel, bin) inside each patch; patches row-major."""
    *lead, nr, nc, n_ch, n_bins = cells.shape
    k = patch_cells
    grid = cells.reshape(*lead, nr // k, k, nc // k, k, n_ch, n_bins)
    grid = np.moveaxis(grid, len(lead) + 2, len(lead) + 1)  # (..., nr/k, nc/k, k, k, C, O)
    return grid.reshape(*lead, (nr // k) * (nc // k), k * k * n_ch * n_bins)


def patches_to_cells(patches: np.ndarray, patch_rows: int, patch_cells: int, channels: int = 3) -> np.ndarray:
    """Inverse of `cells_to_patches`: (..., P, k * k * C * O) -> (..., patch_rows * k, (P / patch_rows) * k, C, O)."""
    *lead, n_patches, dim = patches.shape
    k = patch_cells
    n_bins = dim // (k * k * channels)
    grid = patches.reshape(*lead, patch_rows, n_patches // patch_rows, k, k, channels, n_bins)
    grid = np.moveaxis(grid, len(lead) + 2, len(lead) + 1)  # (..., P_r, k, P_c, k, C, O)
    return grid.reshape(*lead, patch_rows * k, (n_patches // patch_rows) * k, channels, n_bins)
