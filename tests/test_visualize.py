"""Tests for the target visualisations behind `mvmtargets show`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mvm_targets.visualize import (
    FLOW_SCALE_FLOOR_PX,
    PANEL_GAP,
    flow_legend,
    flow_legend_scope,
    flow_to_rgb,
    patch_features_to_rgb,
    render_panel,
    save_image,
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


def test_near_static_flow_stays_pale() -> None:
    # 0.05 px of noise: scaled by its own maximum it would be drawn as vivid motion
    noise = np.random.default_rng(5).normal(0, 0.02, (2, H, W)).astype(np.float32)
    noise[:, 0, 0] = [0.05, 0.0]
    image = flow_to_rgb(noise).astype(int)
    # saturation = |flow| / FLOW_SCALE_FLOOR_PX: 0.05 px takes the red pixel 5 % of the way from white
    expected_green = 255 - 255 * 0.05 / FLOW_SCALE_FLOOR_PX
    assert abs(image[0, 0, 1] - expected_green) <= 1 and image[0, 0, 0] == 255
    assert image.min() >= 255 - 0.2 * 255  # no pixel anywhere near saturated


def test_user_flow_scale_and_legend(tmp_path: Path) -> None:
    flow = uniform_flow(2.0, 0.0)
    with flow_legend_scope(8.0) as scope:
        quarter = flow_to_rgb(flow)[0, 0].astype(int)
        assert scope["used"] == [8.0]
        assert abs(quarter[1] - round(255 * (1 - 2.0 / 8.0))) <= 1  # 2 px of 8: a quarter saturated
        path = save_image(np.zeros((10, 12, 3), np.uint8), tmp_path / "panel.png")
    saved = np.asarray(Image.open(path))
    assert saved.shape[0] > 10 and saved.shape[1] >= 12  # the legend strip sits under the picture
    # the strip is the legend drawn at the scale used
    np.testing.assert_array_equal(saved[10:, :flow_legend(8.0, 48).shape[1]], flow_legend(8.0, 48))
    with pytest.raises(ValueError, match="--flow-scale"):
        with flow_legend_scope(0.0):
            pass
    # outside a scope nothing is added
    assert np.asarray(Image.open(save_image(np.zeros((10, 12, 3), np.uint8), tmp_path / "plain.png"))).shape == (10, 12, 3)


def test_legend_wheel_colours() -> None:
    legend = flow_legend(4.0, 48).astype(int)
    side, centre = 48, PANEL_GAP + 24
    # the rim's rightmost point is full red (rightward motion at the full scale), the centre white
    r, g, b = legend[centre, PANEL_GAP + side - 2]
    assert r > 230 and g < 40 and b < 40, (r, g, b)
    assert (legend[centre, centre] > 220).all()
    assert (legend[:, PANEL_GAP + side + PANEL_GAP:] < 128).any()  # the scale is written beside it


def test_save_image_follows_the_extension(tmp_path: Path) -> None:
    image = np.random.default_rng(6).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    assert Image.open(save_image(image, tmp_path / "x.jpg")).format == "JPEG"
    assert Image.open(save_image(image, tmp_path / "x.JPEG")).format == "JPEG"
    assert Image.open(save_image(image, tmp_path / "x.png")).format == "PNG"
    with pytest.raises(ValueError, match="extension"):
        save_image(image, tmp_path / "x.xyz")
    assert not (tmp_path / "x.xyz").exists()


def test_show_picks_the_frame_configuration(tmp_path: Path) -> None:
    """A dataset cached at two frame counts: `show CACHE KEY --frames-id` draws the chosen one, as JPEG."""
    import os
    import subprocess
    import sys

    from mvm_targets.extract import ExtractConfig, extract
    from mvm_targets.targets.registry import build_target
    from mvm_targets.video.decode import SamplingConfig
    from mvm_targets.video.inputs import discover_inputs
    from tests.conftest import write_video

    write_video(tmp_path / "videos" / "a.mp4", num_frames=8, width=64, height=64)
    ids = {}
    for frames in (2, 3):
        sampling = SamplingConfig(num_frames=frames, size=32)
        extract(discover_inputs([tmp_path / "videos"]), [build_target("pixel")],
                ExtractConfig(cache_root=tmp_path / "cache", dataset="videos", sampling=sampling))
        ids[frames] = sampling.frames_id
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(repo)}

    def show(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", "from mvm_targets.cli import main; main()", "show", *args],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)

    ambiguous = show("cache", "a", "-t", "frames")
    assert ambiguous.returncode == 2 and "several frame configurations" in ambiguous.stderr, ambiguous.stderr
    widths = {}
    for frames, frames_id in ids.items():
        result = show("cache", "a", "-t", "frames", "--frames-id", frames_id, "--out", f"f{frames}.jpg")
        assert result.returncode == 0, result.stderr
        picture = Image.open(tmp_path / f"f{frames}.jpg")
        assert picture.format == "JPEG"
        widths[frames] = picture.size[0]
    pitch = 32 + PANEL_GAP  # one more frame is one more cell
    assert widths[3] - widths[2] == pitch
