"""Tests for the `flow` target with the OpenCV DIS backend."""

from __future__ import annotations

import pickle

import cv2
import numpy as np
import pytest

from mvm_targets.errors import MvmTargetsError
from mvm_targets.targets.flow import (
    DISFlowBackend,
    FlowBackend,
    FlowTarget,
    build_flow,
    flip_flow_horizontal,
    max_magnitude,
)
from mvm_targets.targets.spec import Grid

S = 96
MARGIN = 16  # np.roll wraps content around the border; only the interior has the true motion


def smooth_texture(size: int, seed: int) -> np.ndarray:
    """(size, size, 3) uint8 band-limited noise, periodic so that np.roll is a seamless shift."""
    rng = np.random.default_rng(seed)
    freq = np.fft.fftfreq(size)
    radius2 = freq[:, None] ** 2 + freq[None, :] ** 2
    spectrum = np.fft.fft2(rng.standard_normal((size, size))) * np.exp(-radius2 / (2 * 0.06 ** 2))
    texture = np.fft.ifft2(spectrum).real.astype(np.float32)
    gray = cv2.normalize(texture, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    tint = np.array([1.0, 0.9, 0.8])  # non-gray so the RGB -> gray path is exercised
    return (gray[..., None] * tint).astype(np.uint8)


def translating_clip(num_frames: int, dx: int, dy: int, seed: int = 0) -> np.ndarray:
    """(T, S, S, 3) uint8: frame t is the texture moved by t * (dx, dy) pixels (right, down)."""
    base = smooth_texture(S, seed)
    return np.stack([np.roll(base, (t * dy, t * dx), axis=(0, 1)) for t in range(num_frames)])


def interior(flow: np.ndarray) -> np.ndarray:
    return flow[..., MARGIN:-MARGIN, MARGIN:-MARGIN]


@pytest.fixture(scope="module")
def target() -> FlowTarget:
    return build_flow("dis", preset="fast", num_workers=2)


def test_spec(target: FlowTarget) -> None:
    spec = target.spec
    assert (spec.name, spec.variant, spec.grid, spec.dtype, spec.loss) == ("flow", "dis", Grid.DENSE, "float16", "l1")
    assert spec.frames_needed == 2
    assert spec.clip_shape(4, 224) == (3, 2, 224, 224)
    assert spec.params["preset"] == "fast"
    assert build_flow("dis", preset="medium").spec.target_id != spec.target_id
    # the pool size changes speed, never values, so it must not change the target id
    assert build_flow("dis", preset="fast", num_workers=1).spec.target_id == spec.target_id
    assert isinstance(target.backend, FlowBackend)


@pytest.mark.parametrize("dx, dy", [(3, 0), (0, -2), (2, 4), (-5, 3)])
def test_known_translation(target: FlowTarget, dx: int, dy: int) -> None:
    frames = translating_clip(3, dx, dy)[None]
    flow = target.compute(frames)["data"][0].astype(np.float32)
    error = np.hypot(interior(flow[:, 0]) - dx, interior(flow[:, 1]) - dy)
    assert error.mean() < 0.3, f"mean end-point error {error.mean():.3f} px for shift ({dx}, {dy})"


def test_shapes_and_dtypes(target: FlowTarget) -> None:
    frames = np.stack([translating_clip(4, 1, 1, seed=s) for s in range(2)])
    out = target.compute(frames)
    assert set(out) == {"data", "max_magnitude"}
    assert out["data"].shape == (2, 3, 2, S, S) and out["data"].dtype == np.float16
    assert out["max_magnitude"].shape == (2, 3) and out["max_magnitude"].dtype == np.float32
    assert out["data"].shape[1:] == target.spec.clip_shape(4, S)


def test_max_magnitude_matches_data(target: FlowTarget) -> None:
    frames = np.stack([translating_clip(3, 4, -3, seed=1), translating_clip(3, 0, 1, seed=2)])
    out = target.compute(frames)
    flow = out["data"].astype(np.float32)
    expected = np.sqrt((flow ** 2).sum(axis=2)).max(axis=(-2, -1))
    np.testing.assert_allclose(out["max_magnitude"], expected, rtol=1e-3)
    assert out["max_magnitude"][0, 0] > 4.0  # the (4, -3) shift has magnitude 5 in the interior


def test_deterministic_across_calls_and_pool_sizes() -> None:
    frames = np.stack([translating_clip(4, 2, -1, seed=s) for s in range(3)])
    pooled = build_flow("dis", num_workers=2)
    first = pooled.compute(frames)["data"]
    np.testing.assert_array_equal(first, pooled.compute(frames)["data"])
    np.testing.assert_array_equal(first, build_flow("dis", num_workers=1).compute(frames)["data"])
    np.testing.assert_array_equal(first, build_flow("dis", num_workers=3).compute(frames)["data"])


def test_independent_of_opencv_thread_count() -> None:
    # DIS runs parallel loops internally; their stripe count must not leak into the values.
    frames = np.stack([translating_clip(3, 1, 2, seed=5)])
    previous = cv2.getNumThreads()
    try:
        results = []
        for threads in (1, 2, 4):
            cv2.setNumThreads(threads)
            results.append(build_flow("dis", num_workers=1).compute(frames)["data"])
    finally:
        cv2.setNumThreads(previous)
    for result in results[1:]:
        np.testing.assert_array_equal(results[0], result)


def test_batch_independence(target: FlowTarget) -> None:
    clips = [translating_clip(3, 1, 0, seed=3), translating_clip(3, -2, 2, seed=4), translating_clip(3, 0, 0, seed=5)]
    batched = target.compute(np.stack(clips))
    for i, clip in enumerate(clips):
        alone = target.compute(clip[None])
        np.testing.assert_array_equal(batched["data"][i], alone["data"][0])
        np.testing.assert_array_equal(batched["max_magnitude"][i], alone["max_magnitude"][0])


def test_pairs_are_consecutive(target: FlowTarget) -> None:
    # frames 0 -> 1 move right, 1 -> 2 move down: the pair order must follow the clip
    base = smooth_texture(S, 7)
    clip = np.stack([base, np.roll(base, 3, axis=1), np.roll(base, (3, 3), axis=(0, 1))])
    flow = target.compute(clip[None])["data"][0].astype(np.float32)
    means = interior(flow).mean(axis=(-2, -1))
    np.testing.assert_allclose(means, [[3, 0], [0, 3]], atol=0.3)


@pytest.mark.parametrize("num_frames", [0, 1])
def test_too_few_frames(target: FlowTarget, num_frames: int) -> None:
    with pytest.raises(ValueError, match="at least 2 frames"):
        target.compute(np.zeros((1, num_frames, S, S, 3), np.uint8))


def test_bad_inputs(target: FlowTarget) -> None:
    with pytest.raises(ValueError, match="uint8"):
        target.compute(np.zeros((1, 2, S, S, 3), np.float32))
    with pytest.raises(ValueError, match="at least 12 px"):
        target.compute(np.zeros((1, 2, 8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="preset"):
        build_flow("dis", preset="slow")


def test_raft_without_weights_names_the_file_and_where_to_get_it(tmp_path) -> None:
    with pytest.raises(MvmTargetsError) as info:
        build_flow("raft", weights_dir=tmp_path)
    message = str(info.value)
    assert "raft_large_C_T_SKHT_V2-ff5fadd5.pth" in message and str(tmp_path) in message
    assert "https://download.pytorch.org/models/raft_large_C_T_SKHT_V2-ff5fadd5.pth" in message
    assert "\n" not in message


def test_flip_flow_horizontal_pure() -> None:
    flow = np.random.default_rng(0).standard_normal((3, 2, 5, 7)).astype(np.float32)
    original = flow.copy()
    flipped = flip_flow_horizontal(flow)
    np.testing.assert_array_equal(flipped[:, 0], -flow[:, 0, :, ::-1])
    np.testing.assert_array_equal(flipped[:, 1], flow[:, 1, :, ::-1])
    np.testing.assert_array_equal(flip_flow_horizontal(flipped), flow)
    np.testing.assert_array_equal(flow, original)  # pure: the input is not modified
    assert flip_flow_horizontal(flow[0]).shape == (2, 5, 7)


def test_flip_matches_flow_of_mirrored_frames(target: FlowTarget) -> None:
    clip = translating_clip(3, 3, -2, seed=8)
    flow = target.compute(clip[None])["data"][0].astype(np.float32)
    mirrored = target.compute(clip[None, :, :, ::-1])["data"][0].astype(np.float32)
    error = np.hypot(*(interior(flip_flow_horizontal(flow)) - interior(mirrored)).transpose(1, 0, 2, 3))
    assert error.mean() < 0.3
    assert interior(mirrored)[:, 0].mean() == pytest.approx(-3, abs=0.3)


def test_max_magnitude_helper() -> None:
    flow = np.zeros((2, 2, 4, 4), np.float16)
    flow[1, 0, 2, 3], flow[1, 1, 2, 3] = 3, -4
    np.testing.assert_array_equal(max_magnitude(flow), [0.0, 5.0])


def test_target_pickles(target: FlowTarget) -> None:
    frames = translating_clip(2, 1, 1)[None]
    clone = pickle.loads(pickle.dumps(target))
    np.testing.assert_array_equal(clone.compute(frames)["data"], target.compute(frames)["data"])


def test_fused_float16_cast_equals_numpy_and_clips() -> None:
    from mvm_targets.targets.half import flow_to_float16

    flow = np.random.default_rng(2).standard_normal((3, 2, 16, 16)).astype(np.float32) * 40
    flow[1, 0, 3, 3] = 1e6  # garbage from a backend must become the float16 limit, not inf
    data, largest = flow_to_float16(flow)
    np.testing.assert_array_equal(data.view(np.uint16),
                                  np.clip(flow, -65504, 65504).astype(np.float16).view(np.uint16))
    np.testing.assert_allclose(largest, max_magnitude(data), rtol=1e-3)
    assert np.isfinite(data.astype(np.float32)).all()
