"""Every registered target, every variant: the contract the store and the trainer rely on."""

from __future__ import annotations

import numpy as np
import pytest

from mvm_targets.errors import MvmTargetsError
from mvm_targets.targets import (ALIASES, Target, UnknownTargetError, build_target,
                                 canonical_name, list_targets, list_variants)
from mvm_targets.targets.spec import Grid

T, S = 3, 64
REFS = [f"{name}:{variant}" for name in list_targets() for variant in list_variants(name)]
WEIGHTS_FREE = []
for _ref in REFS:
    try:
        build_target(_ref)
        WEIGHTS_FREE.append(_ref)
    except MvmTargetsError:
        pass  # variants that need a teacher this build does not have are tested elsewhere


def clips(batch: int, seed: int = 0) -> np.ndarray:
    """(B, T, S, S, 3) uint8: smooth moving textures, so gradients and flow are non-trivial."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((batch, 1, S // 8 + 2, S // 8 + 2, 3))
    up = np.repeat(np.repeat(coarse, 8, axis=2), 8, axis=3)
    frames = np.concatenate([np.roll(up, 2 * t, axis=3)[:, :, :S, :S] for t in range(T)], axis=1)
    return (frames * 255).astype(np.uint8)


@pytest.fixture(params=WEIGHTS_FREE)
def target(request) -> Target:
    return build_target(request.param)


def test_spec_is_complete_and_consistent(target):
    spec = target.spec
    assert isinstance(target, Target)
    assert spec.name in list_targets() and spec.variant in list_variants(spec.name)
    assert isinstance(spec.grid, Grid) and spec.loss in ("l1", "l2", "ce") and spec.version >= 1
    assert spec.target_id.startswith(f"{spec.name}-{spec.variant}-") and len(spec.config_hash()) == 8
    shape = spec.clip_shape(4, 224)
    if spec.grid is Grid.PATCH:  # the 7 x 7 grid of 32-px patches: (T, 49, D) features or (T, 7, 7) ids
        assert shape[-2] == 49 or shape[-2:] == (7, 7)
    if spec.grid is Grid.TOKEN:  # the 28 x 28 grid of 8-px cells
        assert shape[-2:] == (28, 28)
    if spec.grid is Grid.DENSE:
        assert shape[-2:] == (224, 224)


def test_output_shape_dtype_and_finite_values(target):
    out = target.compute(clips(2))
    data = out["data"]
    assert data.shape == (2, *target.spec.clip_shape(T, S))
    assert data.dtype == np.dtype(target.spec.dtype)
    for name, array in out.items():
        assert array.shape[0] == 2, name
        if array.dtype.kind == "f":
            assert np.isfinite(array).all(), name
    assert np.abs(data.astype(np.float64)).sum() > 0  # real content gives a non-zero target


def test_deterministic(target):
    first, second = target.compute(clips(2)), target.compute(clips(2))
    for name in first:
        np.testing.assert_array_equal(first[name], second[name])


def test_batch_independent(target):
    batch = clips(3, seed=1)
    together = target.compute(batch)
    for i in range(3):
        alone = target.compute(batch[i:i + 1])
        for name in together:
            np.testing.assert_array_equal(together[name][i], alone[name][0])


def test_config_hash_changes_with_values_affecting_settings():
    assert build_target("hog:paper").spec.target_id != build_target("hog:maskfeat").spec.target_id


def test_aliases_resolve_to_paper_names():
    assert canonical_name("optical_flow") == "flow"
    assert ALIASES["2d_feature"] == "sif" and ALIASES["3d_feature"] == "tvf" and ALIASES["2d_clip_feature"] == "mmf"


def test_unknown_name_lists_the_known_names():
    with pytest.raises(UnknownTargetError, match=r"unknown target 'hgo'; known targets: pixel, hog, depth, flow, vq, sif, tvf, mmf"):
        build_target("hgo")
    with pytest.raises(UnknownTargetError, match=r"unknown variant 'fancy' for target 'hog'"):
        build_target("hog:fancy")
