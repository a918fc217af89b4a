"""Turn targets into pictures for `mvmtargets show`: flow, scalar maps, patch features, token ids.

Every function returns `(H, W, 3)` uint8 RGB and is deterministic (same input -> same pixels), so
panels can be compared across runs. `render_panel` stacks a clip's frames above the target images.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Flow colour wheel: hue anchors at increasing angle, with the number of hue steps between them.
# Angles follow image coordinates (x right, y down), so rightward motion is red, downward is
# orange-yellow, leftward cyan-blue and upward blue-magenta. The uneven spans (the Middlebury
# proportions) give perceptually similar colour differences per degree around the wheel.
WHEEL_ANCHORS = np.array([
    [255, 0, 0],  # red
    [255, 255, 0],  # yellow
    [0, 255, 0],  # green
    [0, 255, 255],  # cyan
    [0, 0, 255],  # blue
    [255, 0, 255],  # magenta
    [255, 0, 0],  # back to red
], dtype=np.float32)
WHEEL_SPANS = np.array([15, 6, 4, 11, 13, 6], dtype=np.float32)

# Viridis sampled at 9 evenly spaced points; linear interpolation between them is visually
# indistinguishable at panel scale, and it stays readable in grayscale print (monotone luminance).
VIRIDIS_ANCHORS = np.array([
    [68, 1, 84], [71, 44, 122], [59, 81, 139], [44, 113, 142], [33, 144, 141],
    [39, 173, 129], [92, 200, 99], [170, 220, 50], [253, 231, 37],
], dtype=np.float32)

PANEL_GAP = 4  # px between cells and around the panel
PANEL_BACKGROUND = 255

# The smallest magnitude (px per frame pair) drawn fully saturated. Scaling by the observed maximum
# alone would stretch a near-static clip's sub-pixel noise into vivid apparent motion.
FLOW_SCALE_FLOOR_PX = 1.0

# Inside `flow_legend_scope`: a user's fixed scale, and every scale `flow_to_rgb` drew with, so the
# saved picture can state it under a colour-wheel legend.
_flow_scope: contextvars.ContextVar[dict | None] = contextvars.ContextVar("flow_scope", default=None)


@contextlib.contextmanager
def flow_legend_scope(scale: float | None = None) -> Iterator[dict]:
    """Within the block, `flow_to_rgb` uses `scale` (px) when given instead of its own, and records
    the scales it used; `save_image` then adds a colour-wheel legend stating that scale."""
    if scale is not None and not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"--flow-scale must be a positive number of pixels, got {scale}")
    token = _flow_scope.set({"scale": scale, "used": []})
    try:
        yield _flow_scope.get()
    finally:
        _flow_scope.reset(token)


def flow_scale(observed_max: float, user_scale: float | None = None) -> float:
    """The magnitude (px) drawn fully saturated: the user's, else max(observed, FLOW_SCALE_FLOOR_PX)."""
    if user_scale is not None:
        return float(user_scale)
    return max(float(observed_max) if math.isfinite(observed_max) else 0.0, FLOW_SCALE_FLOOR_PX)


def flow_to_rgb(flow: np.ndarray, max_magnitude: float | None = None) -> np.ndarray:
    """(2, H, W) flow (u = x, v = y, pixels) -> (H, W, 3) uint8 colour-wheel image.

    Hue encodes direction, saturation the magnitude relative to a fixed scale: `max_magnitude`
    (default: the flow's own largest magnitude), never below `FLOW_SCALE_FLOOR_PX`, or the scale
    set by `flow_legend_scope`. Zero flow is white and magnitudes at or above the scale are fully
    saturated. Pass a shared `max_magnitude` to make several pairs comparable.
    """
    if flow.ndim != 3 or flow.shape[0] != 2:
        raise ValueError(f"expected flow of shape (2, H, W), got {flow.shape}")
    u, v = (np.nan_to_num(c.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0) for c in flow)
    magnitude = np.hypot(u, v)
    scope = _flow_scope.get()
    observed = float(magnitude.max()) if max_magnitude is None else float(max_magnitude)
    scale = flow_scale(observed, scope["scale"] if scope else None)
    if scope is not None:
        scope["used"].append(scale)
    return flow_to_rgb_at_scale(np.stack([u, v]), scale)


def wheel_colour(angle: np.ndarray) -> np.ndarray:
    """Angles in radians (0 = +x, pi/2 = +y) -> (..., 3) float32 RGB in [0, 255] on the wheel."""
    steps = np.concatenate([[0.0], np.cumsum(WHEEL_SPANS)])
    position = (angle / (2 * np.pi)) % 1.0 * steps[-1]
    return np.stack([np.interp(position, steps, WHEEL_ANCHORS[:, c]) for c in range(3)], axis=-1).astype(np.float32)


def scalar_map_to_rgb(x: np.ndarray, robust: bool = True, colormap: str = "viridis") -> np.ndarray:
    """(H, W) float -> (H, W, 3) uint8 through `colormap` ("viridis" or "gray").

    Values are normalised to [0, 1] by the 1st/99th percentiles when `robust` (a few extreme
    pixels, e.g. HOG's strongest edges, would otherwise wash the map out) or by min/max. When the
    percentiles coincide (a mostly-zero HOG image) min/max is used instead; a constant map is
    drawn at the bottom colour. Non-finite values are drawn at the bottom colour too.
    """
    if x.ndim != 2:
        raise ValueError(f"expected a (H, W) map, got {x.shape}")
    normalised = normalise(x.astype(np.float32), robust)
    if colormap == "gray":
        return np.repeat(np.round(normalised * 255).astype(np.uint8)[..., None], 3, axis=-1)
    if colormap == "viridis":
        return apply_colormap(normalised, VIRIDIS_ANCHORS)
    raise ValueError(f"unknown colormap '{colormap}'; choose 'viridis' or 'gray'")


def normalise(x: np.ndarray, robust: bool) -> np.ndarray:
    """Any-shape float -> same shape in [0, 1]; non-finite -> 0."""
    finite = np.isfinite(x)
    if not finite.any():
        return np.zeros(x.shape, np.float32)
    values = x[finite]
    low, high = np.percentile(values, [1, 99]) if robust else (values.min(), values.max())
    if high <= low:
        low, high = values.min(), values.max()
    if high <= low:
        return np.zeros(x.shape, np.float32)
    return np.where(finite, np.clip((x - low) / (high - low), 0.0, 1.0), 0.0).astype(np.float32)


def apply_colormap(normalised: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """(...) values in [0, 1] -> (..., 3) uint8 by linear interpolation between evenly spaced anchors."""
    stops = np.linspace(0.0, 1.0, len(anchors))
    rgb = np.stack([np.interp(normalised, stops, anchors[:, c]) for c in range(3)], axis=-1)
    return np.round(rgb).astype(np.uint8)


def patch_features_to_rgb(x: np.ndarray, size: int) -> np.ndarray:
    """(N, D) per-patch features, N a square -> (size, size, 3) uint8, one colour per patch.

    The features are projected on their first three principal components (numpy SVD of the
    centred matrix), each component stretched to [0, 255] by its 1st/99th percentiles, and the
    g x g grid (g = sqrt(N), row-major) upsampled nearest. Component signs are fixed so that each
    component's largest-magnitude loading is positive, which makes the colours independent of the
    SVD's arbitrary signs (and of the order of the feature dimensions). Fewer than three
    components (D < 3 or N < 3) leave the missing channels black.
    """
    if x.ndim != 2:
        raise ValueError(f"expected (N_patches, D) features, got {x.shape}")
    grid = square_side(x.shape[0])
    projected = pca_project(x.astype(np.float64), 3)
    channels = [normalise(projected[:, c], robust=True) for c in range(3)]
    rgb = np.round(np.stack(channels, axis=-1) * 255).astype(np.uint8)
    return upsample_nearest(rgb.reshape(grid, grid, 3), size)


def pca_project(x: np.ndarray, k: int) -> np.ndarray:
    """(N, D) -> (N, k) scores on the top-k principal components, sign-fixed; zero-padded to k."""
    centred = x - x.mean(axis=0, keepdims=True)
    scores = np.zeros((x.shape[0], k), np.float64)
    if not np.any(centred):
        return scores
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    count = min(k, int(np.sum(singular > singular[0] * 1e-9)))
    components = vt[:count]
    # flip each component so its largest-|loading| entry is positive (ties: the first such entry)
    signs = np.sign(components[np.arange(count), np.abs(components).argmax(axis=1)])
    scores[:, :count] = centred @ (components * signs[:, None]).T
    return scores


def token_ids_to_rgb(ids: np.ndarray, size: int) -> np.ndarray:
    """(h, w) integer token ids -> (size, size, 3) uint8, a fixed pseudo-random colour per id.

    The colour comes from an integer hash of the id alone, so a token has the same colour in
    every clip and run; nearest upsampling keeps token boundaries sharp.
    """
    if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"expected a (h, w) integer array, got {ids.shape} {ids.dtype}")
    return upsample_nearest(id_colours(ids), size)


def id_colours(ids: np.ndarray) -> np.ndarray:
    """Integer ids -> (..., 3) uint8 via a 64-bit mix (splitmix64 finaliser) of the id."""
    with np.errstate(over="ignore"):  # the multiplications are meant to wrap modulo 2^64
        h = ids.astype(np.int64).view(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
        h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        h = h ^ (h >> np.uint64(31))
    channels = [(h >> np.uint64(shift)) & np.uint64(0xFF) for shift in (0, 8, 16)]
    # lift into [48, 255] so no token is drawn near-black and lost against dark frames
    return np.stack([48 + (c * np.uint64(207)) // np.uint64(255) for c in channels], axis=-1).astype(np.uint8)


def square_side(n: int) -> int:
    side = int(round(np.sqrt(n)))
    if side * side != n or n == 0:
        raise ValueError(f"expected a square number of patches, got {n}")
    return side


def upsample_nearest(image: np.ndarray, size: int) -> np.ndarray:
    """(h, w, C) -> (size, size, C) nearest neighbour; works for sizes that are not multiples."""
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    rows = np.arange(size) * image.shape[0] // size
    cols = np.arange(size) * image.shape[1] // size
    return np.ascontiguousarray(image[rows][:, cols])


def render_panel(frames: np.ndarray, target_images: list[np.ndarray], title: str = "") -> np.ndarray:
    """Frames (T, S, S, 3) uint8 on top, target images (S, S, 3) uint8 below -> (H, W, 3) uint8.

    With T target images each sits under its frame. With T-1 (pair targets such as flow) they are
    shifted right by half a cell, so the image of pair (t, t+1) sits between frames t and t+1.
    Any other count is left-aligned. Cells are separated by `PANEL_GAP` px of white; a non-empty
    `title` is drawn above in PIL's default font.
    """
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[1] != frames.shape[2]:
        raise ValueError(f"expected frames of shape (T, S, S, 3), got {frames.shape}")
    num_frames, size = frames.shape[0], frames.shape[1]
    for image in target_images:
        if image.shape != (size, size, 3) or image.dtype != np.uint8:
            raise ValueError(f"target images must be ({size}, {size}, 3) uint8, got {image.shape} {image.dtype}")
    pitch = size + PANEL_GAP
    offset = pitch // 2 if len(target_images) == num_frames - 1 else 0
    width = PANEL_GAP + max(num_frames * pitch, offset + len(target_images) * pitch)
    rows_height = PANEL_GAP + (2 if target_images else 1) * pitch
    title_height = title_bar_height(title)
    panel = np.full((title_height + rows_height, width, 3), PANEL_BACKGROUND, np.uint8)
    top = title_height + PANEL_GAP
    paste_row(panel, list(frames), top, PANEL_GAP)
    paste_row(panel, target_images, top + pitch, PANEL_GAP + offset)
    return draw_title(panel, title) if title else panel


def paste_row(panel: np.ndarray, images: list[np.ndarray], top: int, left: int) -> None:
    for i, image in enumerate(images):
        x = left + i * (image.shape[1] + PANEL_GAP)
        panel[top:top + image.shape[0], x:x + image.shape[1]] = image


def title_bar_height(title: str) -> int:
    if not title:
        return 0
    _, top, _, bottom = ImageFont.load_default().getbbox(title)
    return PANEL_GAP + (bottom - min(top, 0))


def draw_title(panel: np.ndarray, title: str) -> np.ndarray:
    image = Image.fromarray(panel)
    font = ImageFont.load_default()
    top = font.getbbox(title)[1]
    ImageDraw.Draw(image).text((PANEL_GAP, PANEL_GAP - min(top, 0)), title, fill=(0, 0, 0), font=font)
    return np.asarray(image).copy()


def flow_legend(scale: float, height: int) -> np.ndarray:
    """(height, W, 3) uint8 strip: the colour wheel (direction -> hue, centre = still, rim = `scale`
    px per frame pair or more) and the scale in words, to sit under a panel of flow pictures."""
    side = max(24, min(height, 96))
    radius = (side - 1) / 2
    ys, xs = np.mgrid[0:side, 0:side].astype(np.float32) - radius
    # a disc of flow vectors pointing away from the centre, drawn with the picture's own colours
    disc = flow_to_rgb_at_scale(np.stack([xs, ys]) / radius * scale, scale)
    disc[np.hypot(xs, ys) > radius] = PANEL_BACKGROUND
    text = f"flow: hue = direction (right red, down yellow, left cyan, up violet); full colour = {scale:.3g} px"
    font = ImageFont.load_default()
    left, top, right, bottom = font.getbbox(text)
    width = PANEL_GAP + side + PANEL_GAP + (right - left) + PANEL_GAP
    strip = Image.new("RGB", (width, side + 2 * PANEL_GAP), (PANEL_BACKGROUND,) * 3)
    strip.paste(Image.fromarray(disc), (PANEL_GAP, PANEL_GAP))
    ImageDraw.Draw(strip).text((2 * PANEL_GAP + side, PANEL_GAP + (side - (bottom - top)) // 2 - top), text,
                               fill=(0, 0, 0), font=font)
    return np.asarray(strip).copy()


def flow_to_rgb_at_scale(flow: np.ndarray, scale: float) -> np.ndarray:
    """`flow_to_rgb` at exactly `scale` px, outside any `flow_legend_scope` and its floor."""
    u, v = flow.astype(np.float32)
    saturation = np.clip(np.hypot(u, v) / scale, 0.0, 1.0)[..., None]
    # blend from white towards the hue: small motions stay pale, so the background reads as "still"
    return np.round(255.0 - saturation * (255.0 - wheel_colour(np.arctan2(v, u)))).astype(np.uint8)


def add_footer(image: np.ndarray, footer: np.ndarray) -> np.ndarray:
    """Stack `footer` under `image`, left-aligned on the panel background, widening as needed."""
    width = max(image.shape[1], footer.shape[1])
    out = np.full((image.shape[0] + footer.shape[0], width, 3), PANEL_BACKGROUND, np.uint8)
    out[:image.shape[0], :image.shape[1]] = image
    out[image.shape[0]:, :footer.shape[1]] = footer
    return out


def save_image(image: np.ndarray, path: str | Path) -> Path:
    """Write (H, W, 3) uint8 in the format its extension names (.png, .jpg/.jpeg, .webp, .bmp, .tif),
    creating parent folders; returns the path. Inside `flow_legend_scope`, when flow was drawn, a
    colour-wheel legend stating the scale goes under the picture."""
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {image.shape} {image.dtype}")
    path = Path(path)
    image_format = image_format_for(path)
    scope = _flow_scope.get()
    if scope and scope["used"]:
        image = add_footer(image, flow_legend(max(scope["used"]), 48))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, format=image_format, **({"quality": 95} if image_format == "JPEG" else {}))
    return path


save_png = save_image  # the older name; the format follows the extension


def image_format_for(path: Path) -> str:
    """PIL's format name for `path`'s extension; a one-line refusal for one it cannot write."""
    from PIL import Image as PILImage

    PILImage.init()
    image_format = PILImage.EXTENSION.get(path.suffix.lower())
    if image_format not in ("PNG", "JPEG", "WEBP", "BMP", "TIFF"):
        raise ValueError(f"{path}: cannot tell the image format from the extension '{path.suffix}' "
                         "(use .png, .jpg, .webp, .bmp or .tif)")
    return image_format
