"""Tests for the target visualisations behind `mvmtargets show`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mvm_targets.visualize import (
    PANEL_GAP,
    flow_to_rgb,
    patch_features_to_rgb,
    render_panel,
    save_png,
    scalar_map_to_rgb,
    token_ids_to_rgb,
)

H, W = 12, 16


def uniform_flow(u: float, v: float) -> np.ndarray:
    return np.stack([np.full((H, W), u, np.float32), np.full((H, W), v, np.float32)])


def test_flow_to_rgb_shape_and_dtype() -> None:
    flow = np.random.default_rng(0).standard_normal((2, H, W)).astype(np.float16)
    image = flow_to_rgb(flow)
    assert image.shape == (H, W, 3) and image.dtype == np.uint8


def test_zero_flow_is_white() -> None:
    assert (flow_to_rgb(np.zeros((2, H, W), np.float32)) == 255).all()
    # zero pixels inside a moving field stay white too
    flow = uniform_flow(2.0, 0.0)
    flow[:, 0, 0] = 0
    assert (flow_to_rgb(flow)[0, 0] == 255).all()


def test_colour_wheel_directions() -> None:
    right = flow_to_rgb(uniform_flow(5.0, 0.0))[0, 0].astype(int)
    left = flow_to_rgb(uniform_flow(-5.0, 0.0))[0, 0].astype(int)
    r, g, b = right
    assert r > 200 and g < 60 and b < 60, f"rightward motion should be red, got {right}"
    r, g, b = left
    assert r < 60 and g > 150 and b > 150, f"leftward motion should be cyan, got {left}"
    down = flow_to_rgb(uniform_flow(0.0, 5.0))[0, 0].astype(int)
    assert down[0] > 200 and down[1] > 120 and down[2] < 60, f"downward motion should be orange/yellow, got {down}"


def test_flow_saturation_follows_magnitude() -> None:
    flow = uniform_flow(1.0, 0.0)
    flow[0, :, W // 2:] = 4.0
    image = flow_to_rgb(flow).astype(int)
    # same hue, the slower half is paler (closer to white)
    assert image[0, 0, 1] > image[0, -1, 1]
    assert (image[0, -1] == [255, 0, 0]).all()
    # a shared max_magnitude makes a pair look slow when others move faster
    assert flow_to_rgb(flow, max_magnitude=8.0)[0, -1, 1] > 100


def test_scalar_map_to_rgb() -> None:
    x = np.random.default_rng(1).random((H, W)).astype(np.float32)
    for robust in (True, False):
        image = scalar_map_to_rgb(x, robust=robust)
        assert image.shape == (H, W, 3) and image.dtype == np.uint8
    gray = scalar_map_to_rgb(x, colormap="gray")
    assert (gray[..., 0] == gray[..., 1]).all()
    # monotone: a ramp gives increasing brightness in gray and increasing green in viridis
    ramp = np.tile(np.linspace(0, 1, W), (H, 1))
    assert np.all(np.diff(scalar_map_to_rgb(ramp, robust=False, colormap="gray")[0, :, 0].astype(int)) >= 0)
    assert np.all(np.diff(scalar_map_to_rgb(ramp, robust=False)[0, :, 1].astype(int)) >= 0)


def test_scalar_map_edge_cases() -> None:
    constant = scalar_map_to_rgb(np.full((H, W), 3.0))
    assert (constant == constant[0, 0]).all()
    sparse = np.zeros((H, W))
    sparse[0, 0] = 5.0  # mostly-zero map (HOG): the 1/99 percentiles coincide, fall back to min/max
    image = scalar_map_to_rgb(sparse, colormap="gray")
    assert image[0, 0, 0] == 255 and image[1, 1, 0] == 0
    with_nan = np.ones((H, W))
    with_nan[0, 0] = np.nan
    assert scalar_map_to_rgb(with_nan).shape == (H, W, 3)


def test_patch_features_to_rgb_shape_and_determinism() -> None:
    features = np.random.default_rng(2).standard_normal((49, 32)).astype(np.float32)
    image = patch_features_to_rgb(features, 224)
    assert image.shape == (224, 224, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(image, patch_features_to_rgb(features.copy(), 224))
    # nearest upsampling: each 32-px patch is one flat colour
    assert (image[:32, :32] == image[0, 0]).all()


def test_patch_features_sign_is_fixed() -> None:
    # Reordering feature dimensions flips nothing: each component's sign is pinned to its
    # largest loading, so the same patches get the same colours (up to 1 level of rounding).
    rng = np.random.default_rng(3)
    features = rng.standard_normal((16, 10)) @ rng.standard_normal((10, 10))
    permuted = features[:, rng.permutation(10)]
    a = patch_features_to_rgb(features, 8).astype(int)
    b = patch_features_to_rgb(permuted, 8).astype(int)
    assert np.abs(a - b).max() <= 1


def test_patch_features_degenerate_inputs() -> None:
    assert patch_features_to_rgb(np.ones((4, 5)), 6).shape == (6, 6, 3)  # no variance at all
    assert patch_features_to_rgb(np.arange(9.0)[:, None], 9).shape == (9, 9, 3)  # D = 1
    with pytest.raises(ValueError, match="square"):
        patch_features_to_rgb(np.zeros((10, 4)), 8)


def test_token_ids_to_rgb() -> None:
    ids = np.arange(28 * 28).reshape(28, 28) % 8192
    image = token_ids_to_rgb(ids, 224)
    assert image.shape == (224, 224, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(image, token_ids_to_rgb(ids, 224))
    assert (image[:8, :8] == image[0, 0]).all()
    # same id -> same colour wherever it appears; different ids almost always differ
    same = token_ids_to_rgb(np.full((2, 2), 7), 2)
    assert (same == same[0, 0]).all()
    colours = {tuple(c) for c in token_ids_to_rgb(np.arange(256).reshape(16, 16), 16).reshape(-1, 3)}
    assert len(colours) == 256


@pytest.mark.parametrize("num_frames", [2, 4])
def test_render_panel_pairs(num_frames: int) -> None:
    size = 32
    frames = np.zeros((num_frames, size, size, 3), np.uint8)
    flows = [np.full((size, size, 3), 100, np.uint8)] * (num_frames - 1)
    panel = render_panel(frames, flows)
    pitch = size + PANEL_GAP
    assert panel.shape == (PANEL_GAP + 2 * pitch, PANEL_GAP + num_frames * pitch, 3)
    assert panel.dtype == np.uint8
    # pair (0, 1) is centred between frames 0 and 1
    left = PANEL_GAP + pitch // 2
    assert (panel[PANEL_GAP + pitch: PANEL_GAP + pitch + size, left:left + size] == 100).all()


def test_render_panel_per_frame_and_title() -> None:
    size, num_frames = 24, 3
    frames = np.zeros((num_frames, size, size, 3), np.uint8)
    targets = [np.full((size, size, 3), 50, np.uint8)] * num_frames
    plain = render_panel(frames, targets)
    titled = render_panel(frames, targets, title="hog:paper videos/clip_00000")
    assert plain.shape[1] == titled.shape[1] and titled.shape[0] > plain.shape[0]
    title_height = titled.shape[0] - plain.shape[0]
    assert (titled[:title_height] < 128).any()  # some text was drawn
    np.testing.assert_array_equal(titled[title_height:], plain)
    # targets sit directly under their frames
    top = PANEL_GAP + size + PANEL_GAP
    assert (plain[top:top + size, PANEL_GAP:PANEL_GAP + size] == 50).all()
    assert render_panel(frames, []).shape == (PANEL_GAP + size + PANEL_GAP, plain.shape[1], 3)
    with pytest.raises(ValueError):
        render_panel(frames, [np.zeros((size, size, 3), np.float32)])


def test_save_png(tmp_path: Path) -> None:
    image = np.random.default_rng(4).integers(0, 256, (10, 14, 3), dtype=np.uint8)
    path = save_png(image, tmp_path / "nested" / "dir" / "panel.png")
    np.testing.assert_array_equal(np.asarray(Image.open(path)), image)
