"""Pixels for a `ClipSpec`: drifting textured background, anti-aliased shapes, and H.264 encoding.

Shapes are drawn from signed distance fields with a one-pixel coverage ramp, which gives the soft
edges a camera would produce without supersampling cost. All arithmetic is float32 numpy with fixed
inputs, so the same spec always yields the same bytes on the same machine.
"""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from .scene import COLORS, Background, ClipSpec, ObjectState, object_states

# Unit-size outlines (y down, "up" is -y). Extents stay within scene.EXTENT so placement is safe.
_STAR = [(1.15 if i % 2 == 0 else 0.48) * np.array([math.cos(a), math.sin(a)])
         for i, a in enumerate(-math.pi / 2 + np.arange(10) * math.pi / 5)]
_CROSS_W, _CROSS_L = 0.32, 1.0
POLYGONS: dict[str, np.ndarray] = {
    "square": np.array([(-0.8, -0.8), (0.8, -0.8), (0.8, 0.8), (-0.8, 0.8)]),
    "triangle": np.array([(1.1 * math.cos(a), 1.1 * math.sin(a))
                          for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]),
    "star": np.array(_STAR),
    "cross": np.array([(-_CROSS_W, -_CROSS_L), (_CROSS_W, -_CROSS_L), (_CROSS_W, -_CROSS_W),
                       (_CROSS_L, -_CROSS_W), (_CROSS_L, _CROSS_W), (_CROSS_W, _CROSS_W),
                       (_CROSS_W, _CROSS_L), (-_CROSS_W, _CROSS_L), (-_CROSS_W, _CROSS_W),
                       (-_CROSS_L, _CROSS_W), (-_CROSS_L, -_CROSS_W), (-_CROSS_W, -_CROSS_W)]),
}
CIRCLE_RADIUS = 0.9  # circle's visual area roughly matches the square's
SHADING = 0.08  # +-8% top-left light so objects are not perfectly flat (keeps colour masks easy)
EDGE_PX = 1.5  # width of the soft transition between the two background colours


def _polygon_sdf(points: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """Signed distance (negative inside) from `points` (M, 2) to a closed polygon (E, 2); returns (M,)."""
    a = poly[None, :, :]
    e = np.roll(poly, -1, axis=0)[None, :, :] - a
    w = points[:, None, :] - a
    h = np.clip((w * e).sum(-1) / (e * e).sum(-1), 0.0, 1.0)
    dist = np.sqrt(((w - e * h[..., None]) ** 2).sum(-1).min(axis=1))
    # Even-odd crossing test along +x; handles the concave star and cross.
    ay, by = a[..., 1], a[..., 1] + e[..., 1]
    py, px = points[:, 1:2], points[:, 0:1]
    straddles = (ay <= py) != (by <= py)
    with np.errstate(divide="ignore", invalid="ignore"):
        x_cross = a[..., 0] + e[..., 0] * (py - ay) / e[..., 1]
    inside = (straddles & (px < x_cross)).sum(axis=1) % 2 == 1
    return np.where(inside, -dist, dist)


def _coverage_patch(shape: str, r: float, angle: float, fx: float, fy: float, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Coverage and shading `(n, n)` float32 of a shape of radius `r` px centred at (fx, fy) in an n x n patch."""
    ys, xs = np.mgrid[0:n, 0:n].astype(np.float64) + 0.5  # pixel centres
    dx, dy = (xs - fx) / r, (ys - fy) / r
    if shape == "circle":
        sdf = np.sqrt(dx * dx + dy * dy) - CIRCLE_RADIUS
    else:
        # Undo the clockwise-on-screen rotation to get object-local coordinates.
        th = math.radians(angle)
        c, s = math.cos(th), math.sin(th)
        local = np.stack([c * dx + s * dy, -s * dx + c * dy], axis=-1).reshape(-1, 2)
        sdf = _polygon_sdf(local, POLYGONS[shape]).reshape(dx.shape)
    alpha = np.clip(0.5 - sdf * r, 0.0, 1.0).astype(np.float32)
    shade = (1.0 - SHADING * np.clip((dx + dy) / 2.0, -1.0, 1.0)).astype(np.float32)
    return alpha, shade


class CoverageCache:
    """Memoises coverage patches: a translating object at an integer px/frame speed reuses one patch."""

    def __init__(self) -> None:
        self._patches: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}

    def get(self, shape: str, radius: float, state: ObjectState) -> tuple[int, int, np.ndarray, np.ndarray]:
        """`(x0, y0, alpha, shade)`: patches `(n, n)` whose top-left pixel is (x0, y0), possibly off-frame."""
        r = radius * state.scale
        reach = 1.25 * r + 2.0
        x0, y0 = int(math.floor(state.x - reach)), int(math.floor(state.y - reach))
        n = int(math.ceil(2.0 * reach)) + 1
        key = (shape, r, state.angle, state.x - x0, state.y - y0, n)
        if key not in self._patches:
            self._patches[key] = _coverage_patch(shape, r, state.angle, state.x - x0, state.y - y0, n)
        alpha, shade = self._patches[key]
        return x0, y0, alpha, shade


def _noise_spectrum(bg: Background, size: int) -> np.ndarray:
    """Spectrum `(size, size // 2 + 1)` of a periodic low-pass noise tile with features ~period/2 px."""
    white = np.random.default_rng(bg.noise_seed).standard_normal((size, size))
    ky = np.fft.fftfreq(size)[:, None]
    kx = np.fft.rfftfreq(size)[None, :]
    sigma = 1.0 / bg.period
    return np.fft.rfft2(white) * np.exp(-(kx * kx + ky * ky) / (2.0 * sigma * sigma))


def render_background(bg: Background, num_frames: int, size: int) -> np.ndarray:
    """Background frames `(T, H, W, 3)` float32 in [0, 255]; the texture translates by `bg.drift` per frame."""
    t = np.arange(num_frames, dtype=np.float64)
    if bg.kind == "noise":
        # Fourier phase shift: exact sub-pixel translation of a periodic tile, no resampling blur.
        spec = _noise_spectrum(bg, size)
        lo, hi = np.percentile(np.fft.irfft2(spec, s=(size, size)), [2.0, 98.0])
        ky = np.fft.fftfreq(size)[None, :, None]
        kx = np.fft.rfftfreq(size)[None, None, :]
        phase = np.exp(-2j * np.pi * (kx * bg.drift[0] + ky * bg.drift[1]) * t[:, None, None])
        field = np.fft.irfft2(spec[None] * phase, s=(size, size), axes=(1, 2)).astype(np.float32)
        mix = np.clip((field - np.float32(lo)) * np.float32(1.0 / (hi - lo)), 0.0, 1.0)
    else:
        ys, xs = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
        th = math.radians(bg.angle)
        axes = [(math.cos(th), math.sin(th))]
        if bg.kind == "checker":
            axes.append((-math.sin(th), math.cos(th)))
        wave = np.ones((num_frames, size, size), np.float32)
        for cx, cy in axes:
            # sin(a - w t) by angle addition: two per-pixel tables instead of T full-frame sines.
            a = 2.0 * np.pi * (xs * cx + ys * cy) / bg.period
            w = 2.0 * np.pi * (bg.drift[0] * cx + bg.drift[1] * cy) / bg.period
            sin_a, cos_a = np.sin(a).astype(np.float32), np.cos(a).astype(np.float32)
            cos_t = np.cos(w * t).astype(np.float32)[:, None, None]
            sin_t = np.sin(w * t).astype(np.float32)[:, None, None]
            wave *= sin_a * cos_t - cos_a * sin_t
        # A clipped, steepened sine: flat colour areas with ~EDGE_PX soft edges.
        gain = np.float32(0.5 * bg.period / (math.pi * EDGE_PX))
        mix = np.clip(np.float32(0.5) + gain * wave, 0.0, 1.0)
    a = np.asarray(bg.color_a, np.float32)
    b = np.asarray(bg.color_b, np.float32)
    return a + (b - a) * mix[..., None]


def render_clip(clip: ClipSpec) -> np.ndarray:
    """All frames of a clip, `(T, H, W, 3)` uint8 RGB; objects are painted in `clip.objects` order."""
    frames = render_background(clip.background, clip.num_frames, clip.size)
    size = clip.size
    cache = CoverageCache()
    for obj in clip.objects:
        color = np.asarray(COLORS[obj.color], np.float32)
        for t, state in enumerate(object_states(obj, clip.num_frames, size)):
            if not state.visible:
                continue
            x0, y0, alpha, shade = cache.get(obj.shape, obj.radius, state)
            n = alpha.shape[0]
            # Clip the patch to the frame; objects may touch the border.
            px0, py0 = max(0, -x0), max(0, -y0)
            px1, py1 = min(n, size - x0), min(n, size - y0)
            if px1 <= px0 or py1 <= py0:
                continue
            a = alpha[py0:py1, px0:px1, None]
            patch = frames[t, y0 + py0:y0 + py1, x0 + px0:x0 + px1]
            paint = np.minimum(color * shade[py0:py1, px0:px1, None], 255.0)
            patch += (paint - patch) * a
    return np.clip(np.rint(frames), 0, 255).astype(np.uint8)


def encode_mp4(frames: np.ndarray, path: Path, fps: int, crf: int = 18) -> None:
    """Write `frames` `(T, H, W, 3)` uint8 RGB as H.264/yuv420p MP4, byte-reproducibly.

    One encoder thread (x264's frame threading makes output depend on scheduling) and `bitexact`
    flags (no library version strings, no creation time) make reruns byte-identical. Macroblock-tree
    rate control is off because it lets *future* frames change how frame 0 is quantised, which would
    make motion twins differ before anything has moved.
    """
    height, width = frames.shape[1:3]
    with av.open(str(path), mode="w", format="mp4", container_options={"fflags": "+bitexact"}) as container:
        stream = container.add_stream("libx264", rate=fps, options={
            "crf": str(crf), "preset": "medium", "threads": "1", "flags": "+bitexact",
            "x264-params": "threads=1:lookahead-threads=1:sliced-threads=0:mbtree=0"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.thread_count = 1
        stream.time_base = Fraction(1, fps)
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
