"""`pixelnorm`: VideoMAE's per-patch normalised pixels, checked against the formula written out here."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mvm_targets.targets import build_target, list_targets
from mvm_targets.targets.spec import Grid, augmentation_for

S, P = 64, 32


def hand_built_clip() -> np.ndarray:
    """(1, 2, 64, 64, 3) uint8: four patches with different content per frame, one of them constant."""
    rng = np.random.default_rng(3)
    clip = np.zeros((1, 2, S, S, 3), np.uint8)
    clip[0, 0, :32, :32] = rng.integers(0, 256, (32, 32, 3))  # noise
    clip[0, 0, :32, 32:] = np.arange(32, dtype=np.uint8)[None, :, None] * 8  # horizontal ramp, all channels
    clip[0, 0, 32:, :32] = (200, 10, 90)  # constant colour: zero variance
    clip[0, 0, 32:, 32:, 0] = 255 * (np.indices((32, 32)).sum(0) % 2)  # checkerboard in red only
    clip[0, 1] = clip[0, 0, ::-1]  # second frame: the first upside down
    return clip


def videomae_formula(clip: np.ndarray) -> np.ndarray:
    """The formula, patch by patch with explicit loops: x in [0, 1], per channel over the patch's pixels,
    (x - mean) / (unbiased std + 1e-6), flattened row by row with channels innermost."""
    _, frames, size, _, _ = clip.shape
    side = size // P
    out = np.zeros((1, frames, side * side, P * P * 3))
    for t in range(frames):
        for gy in range(side):
            for gx in range(side):
                patch = clip[0, t, gy * P:(gy + 1) * P, gx * P:(gx + 1) * P].astype(np.float64) / 255
                flat = patch.reshape(P * P, 3)
                std = np.array([np.std(flat[:, c], ddof=1) for c in range(3)])
                out[0, t, gy * side + gx] = ((flat - flat.mean(axis=0)) / (std + 1e-6)).reshape(-1)
    return out


def test_registered_with_its_spec():
    assert "pixelnorm" in list_targets()
    spec = build_target("pixelnorm").spec
    assert spec.grid is Grid.PATCH and spec.dtype == "float16" and spec.loss == "l2"
    assert spec.clip_shape(16, 224) == (16, 49, 3072)


def test_values_follow_the_videomae_formula():
    clip = hand_built_clip()
    data = build_target("pixelnorm").compute(clip)["data"]
    assert data.shape == (1, 2, 4, 3072) and data.dtype == np.float16
    want = videomae_formula(clip)
    np.testing.assert_allclose(data.astype(np.float64), want, atol=2e-2, rtol=1e-3)  # float16 storage
    # hand-checked facts: a constant patch is all zeros; a two-level channel becomes +-sqrt(n / (n - 1))
    assert np.all(data[0, 0, 2] == 0)
    red = data[0, 0, 3].astype(np.float64).reshape(P * P, 3)[:, 0]
    np.testing.assert_allclose(np.abs(red), np.sqrt(1024 / 1023), rtol=1e-3)
    assert np.all(data[0, 0, 3].reshape(P * P, 3)[:, 1:] == 0)  # green and blue are constant there


def test_mirror_declaration_is_exact():
    target = build_target("pixelnorm")
    clip = hand_built_clip()
    stored = target.compute(clip)["data"][0]
    mirrored = target.compute(np.ascontiguousarray(clip[:, :, :, ::-1]))["data"][0]
    augmentation = augmentation_for(json.loads(target.spec.to_json(2, S)))
    np.testing.assert_array_equal(augmentation.mirror(stored, {})[0], mirrored)


def test_grid_aligned_crop_keeps_values():
    target = build_target("pixelnorm")
    clip = hand_built_clip()
    whole = target.compute(clip)["data"][0].reshape(2, 2, 2, -1)
    crop = target.compute(np.ascontiguousarray(clip[:, :, 32:, :32]))["data"][0]
    np.testing.assert_array_equal(crop.reshape(2, -1), whole[:, 1, 0])


def test_picture_puts_each_patch_back_in_place():
    clip = hand_built_clip()
    target = build_target("pixelnorm")
    pictures = target.spec.picture(target.compute(clip)["data"][0], S)
    assert len(pictures) == 2 and pictures[0].shape == (S, S, 3) and pictures[0].dtype == np.uint8
    assert np.all(pictures[0][32:, :32] == 127)  # the constant patch normalises to 0: mid grey
    red = pictures[0][32:, 32:, 0].astype(int)  # the red checkerboard, +-1 -> 191 / 63, as the frame's parity
    np.testing.assert_array_equal(red > 127, clip[0, 0, 32:, 32:, 0] > 0)


def test_frame_size_must_be_a_multiple_of_the_patch():
    with pytest.raises(ValueError, match="multiple of 32"):
        build_target("pixelnorm").compute(np.zeros((1, 1, 48, 48, 3), np.uint8))
