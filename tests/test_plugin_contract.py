"""A target written outside the package reaches the store, the trainer and `show` through its declarations alone.

Two test-only targets are registered here, as a third-party module would register them:
- a stored PATCH target that needs the whole clip and declares a paper loss scaling and a picture;
- a target that is never stored: its module derives it from the cached frames (grey levels).
Nothing in mvm_targets' store, violet_core or ablations is told their names.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mvm_targets.extract import ExtractConfig, extract
from mvm_targets.show import target_images
from mvm_targets.store.reader import CacheReader
from mvm_targets.synth import build_synthetic_dataset
from mvm_targets.targets import registry
from mvm_targets.targets.build import build_targets
from mvm_targets.targets.spec import (Augmentation, ClipScope, CropRule, FlipRule, Grid, PaperScaling, TargetSpec,
                                      ref_key, register_augmentation)
from mvm_targets.video.decode import SamplingConfig
from mvm_targets.video.inputs import discover_inputs
from violet_core.data.pretrain import PretrainDataset
from violet_core.data.tokenizer import build_tokenizer
from violet_core.losses import target_loss
from violet_core.target_info import read_target_infos

MOTION, GREY = "plugtest_motion", "plugtest_grey"
T, S = 4, 64
SCALE = 0.25  # the motion target's declared paper factor


def motion_picture(data: np.ndarray, size: int) -> list[np.ndarray]:
    """(T, N, 1) -> one grey picture per frame, the same for every patch (just something recognisable)."""
    return [np.full((size, size, 3), 7 * (i + 1), np.uint8) for i in range(data.shape[0])]


class MotionTarget:
    """Per 32-px patch and frame: mean |frame - clip mean frame|, (T, N, 1) float16. Needs the whole clip."""

    spec = TargetSpec(name=MOTION, variant="mean", version=1, grid=Grid.PATCH, dtype="float16", loss="l1",
                      clip_shape=lambda t, s: (t, (s // 32) ** 2, 1), clip_scope=ClipScope.CLIP,
                      paper_scaling=PaperScaling("sum", SCALE, "test"), picture=motion_picture)

    def compute(self, frames: np.ndarray) -> dict[str, np.ndarray]:
        values = frames.astype(np.float32)
        change = np.abs(values - values.mean(axis=1, keepdims=True)).mean(axis=-1)  # (B, T, S, S)
        b, t, s, _ = change.shape
        patches = change.reshape(b, t, s // 32, 32, s // 32, 32).mean(axis=(3, 5)).reshape(b, t, -1, 1)
        return {"data": patches.astype(np.float16)}


def grey(frames: np.ndarray) -> np.ndarray:
    """One clip's frames (T, S, S, 3) uint8 -> (T, 1, S, S) float32 grey levels."""
    return frames.astype(np.float32).mean(axis=-1)[:, None]


class GreyTarget:
    spec = TargetSpec(name=GREY, variant="mean", version=1, grid=Grid.DENSE, dtype="float32", loss="l2",
                      clip_shape=lambda t, s: (t, 1, s, s), stored=False, derive=grey,
                      augmentation=Augmentation(flip=FlipRule.EXACT, crop=CropRule.EXACT,
                                                mirror=lambda data, extras: (data[..., ::-1], extras)))

    def compute(self, frames: np.ndarray) -> dict[str, np.ndarray]:
        return {"data": np.stack([grey(clip) for clip in frames])}


@pytest.fixture(scope="module")
def plugins():
    """Register the two targets for this module only (other tests list the registry)."""
    registry.list_targets()  # discover the package's own targets first, as a plugin's import would
    register_augmentation(GREY)(lambda variant, params: GreyTarget.spec.augmentation)
    registry.register_target(MOTION, ("mean",), in_all=False)(lambda variant: MotionTarget())
    registry.register_target(GREY, ("mean",), in_all=False)(lambda variant: GreyTarget())
    registry.declared_spec.cache_clear()
    yield
    for table in (registry._FACTORIES, registry._VARIANTS, registry._DEFAULT_VARIANTS):
        table.pop(MOTION, None)
        table.pop(GREY, None)
    from mvm_targets.targets import spec as spec_module

    spec_module._AUGMENTATIONS.pop(GREY, None)
    spec_module._augmentation.cache_clear()
    registry.declared_spec.cache_clear()


@pytest.fixture(scope="module")
def cache(plugins, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("plugin")
    build_synthetic_dataset(root / "ds", clips=2, seed=3, num_frames=6, size=64, fps=6)
    items = discover_inputs([root / "ds" / "captions.csv"])
    config = ExtractConfig(cache_root=root / "cache", dataset="synthetic", batch_size=2,
                           sampling=SamplingConfig(num_frames=T, size=S))
    targets = build_targets([MOTION, GREY])
    extract(items, targets, config)
    return root / "cache"


def test_the_stored_record_carries_the_declarations(cache):
    reader = CacheReader(cache, "synthetic", [MOTION])
    record = reader.attrs(MOTION)["target_spec"]
    assert record["clip_scope"] == "clip" and record["default_variant"] is True
    assert record["paper_scaling"]["reduction"] == "sum" and record["paper_scaling"]["factor"] == SCALE
    assert not any(path.name.startswith(f"{GREY}-") for path in reader.clip_cache.root.iterdir())  # never stored


def test_reader_and_trainer_follow_the_declarations(cache):
    reader = CacheReader(cache, "synthetic", [MOTION, GREY])
    assert reader.target_refs == [MOTION] and reader.derived_refs == [GREY]
    clip = reader[reader.keys[0]]
    np.testing.assert_array_equal(clip[GREY], clip["frames"].astype(np.float32).mean(axis=-1)[:, None])
    motion, grey_info = read_target_infos(reader, [MOTION, GREY])
    assert motion.needs_video and not grey_info.needs_video
    assert motion.stored and not grey_info.stored and grey_info.paper_scaling is None
    assert motion.key == ref_key(MOTION) and motion.spec.target_id == MotionTarget.spec.target_id

    tokenizer = build_tokenizer(None, [c for cs in reader.captions.values() for c in cs], vocab_size=200)
    images = PretrainDataset(reader, [motion, grey_info], tokenizer, reader.keys, num_frames=1, size=64,
                             hflip_prob=0.0, seed=1)
    assert images.skipped_refs == [MOTION] and [i.ref for i in images.infos] == [GREY]

    videos = PretrainDataset(reader, [motion, grey_info], tokenizer, reader.keys, num_frames=3, size=32,
                             hflip_prob=0.0, seed=1)
    item = videos[0]
    start, top, left = item["aug"]["start"], item["aug"]["top"], item["aug"]["left"]
    frames = reader[videos.keys[0]]["frames"][start:start + 3, top:top + 32, left:left + 32]
    want = frames.astype(np.float32).mean(axis=-1)[:, None]  # derived from the augmented frames
    np.testing.assert_array_equal(item["targets"][GREY].numpy(), want)
    assert item["targets"][MOTION].shape == (3, 1, 1)


def test_paper_mode_uses_the_declared_scaling(cache):
    reader = CacheReader(cache, "synthetic", [MOTION])
    (motion,) = read_target_infos(reader, [MOTION])
    prediction = torch.zeros(1, 2, 4, 3)
    target = torch.tensor([[[[1.0, 2, 3]] * 4, [[4.0, 0, 0]] * 4]])  # (1, T=2, 4 patches, D=3)
    mask = torch.zeros(1, 2, 2, 2, dtype=torch.bool)
    mask[0, 0, 0, 0] = mask[0, 1, 1, 1] = True  # two masked patches: |.| sums 6 and 4
    assert float(target_loss(motion, prediction, target, mask, "paper")) == pytest.approx((6 + 4) / 2 * SCALE)
    assert float(target_loss(motion, prediction, target, mask, "mean")) == pytest.approx((6 + 4) / 6)


def test_show_draws_the_declared_picture(cache):
    reader = CacheReader(cache, "synthetic", [MOTION])
    data = reader[reader.keys[0]][MOTION]
    pictures = target_images(reader.spec(MOTION), data, S)
    assert [int(p[0, 0, 0]) for p in pictures] == [7, 14, 21, 28]


def test_a_bare_name_needs_no_target_module_to_resolve(cache):
    """The store reads the plugin's set from its stamped spec, even with the plugin gone."""
    reader = CacheReader(cache, "synthetic", [MOTION])
    set_id = reader.clip_cache.resolve_target(MOTION).set_id
    from mvm_targets.store.layout import ClipCache

    saved = registry._FACTORIES.pop(MOTION)
    try:
        assert ClipCache(reader.clip_cache.root).resolve_target(MOTION).set_id == set_id
        assert json.loads(json.dumps(reader.spec(MOTION).record))["name"] == MOTION
    finally:
        registry._FACTORIES[MOTION] = saved
