"""The `tvf` target: Video Swin features per frame, provenance, and missing weights (tiny model, CPU)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from mvm_targets.backbones import SwinTransformer3D, build_video_swin, video_swin_config
from mvm_targets.targets import build_target
from mvm_targets.targets.spec import Grid
from mvm_targets.targets.tvf import IMAGENET_MEAN, IMAGENET_STD, TVF_WEIGHTS, build_tvf, tvf_clip_shape
from mvm_targets.teachers.weights import MissingWeightsError

T, S = 3, 64


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def clips(batch: int, seed: int = 0) -> np.ndarray:
    """(B, T, S, S, 3) uint8 with structure that moves between frames."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((batch, 1, S // 8 + 2, S // 8 + 2, 3))
    up = np.repeat(np.repeat(coarse, 8, axis=2), 8, axis=3)
    frames = np.concatenate([np.roll(up, 3 * t, axis=3)[:, :, :S, :S] for t in range(T)], axis=1)
    return (frames * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def source_model() -> SwinTransformer3D:
    """The 'pretrained' tiny teacher, saved below in the official release layout."""
    return build_video_swin("tiny", seed=11).eval()


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory, source_model) -> Path:
    root = tmp_path_factory.mktemp("weights")
    path = root / TVF_WEIGHTS["k600"].relative_path
    path.parent.mkdir(parents=True)
    state = {f"backbone.{k}": v for k, v in source_model.state_dict().items()}
    state["cls_head.fc_cls.weight"] = torch.zeros(600, source_model.config.num_features)
    torch.save({"meta": {"epoch": 30}, "state_dict": state}, path)
    return root


@pytest.fixture(scope="module")
def target(weights_dir):
    return build_tvf("k600", weights="pretrained", weights_dir=weights_dir, arch="tiny", batch_size=2, precision="fp32")


def test_shape_dtype_and_values(target, source_model):
    frames = clips(2)
    data = target.compute(frames)["data"]
    channels = video_swin_config("tiny").num_features
    assert data.shape == (2, *target.spec.clip_shape(T, S)) == (2, T, (S // 32) ** 2, channels)
    assert data.dtype == np.float16 and np.isfinite(data).all() and np.abs(data).sum() > 0
    # the same as the checkpoint's network with VIOLETv2's stride-1 embedding on normalised frames
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1, 1)
    video = (torch.from_numpy(frames).permute(0, 4, 1, 2, 3).float() / 255 - mean) / std
    with torch.no_grad():
        expected = source_model(video).reshape(2, T, -1, channels).numpy()
    np.testing.assert_allclose(data.astype(np.float32), expected, rtol=2e-3, atol=2e-3)


def test_deterministic_and_batch_independent(target):
    batch = clips(3, seed=1)
    together = target.compute(batch)["data"]  # batch_size=2: chunks of 2 and 1
    np.testing.assert_array_equal(together, target.compute(batch)["data"])
    for i in range(3):
        alone = target.compute(batch[i:i + 1])["data"]
        np.testing.assert_allclose(together[i].astype(np.float32), alone[0].astype(np.float32), rtol=1e-3, atol=1e-3)


def test_spec_and_provenance(target, weights_dir):
    spec = target.spec
    assert (spec.name, spec.variant, spec.grid, spec.loss, spec.dtype) == ("tvf", "k600", Grid.PATCH, "l1", "float16")
    digest = hashlib.sha256((weights_dir / TVF_WEIGHTS["k600"].relative_path).read_bytes()).hexdigest()
    assert spec.params["weights_sha256"] == digest and spec.params["weights"] == "pretrained"
    assert spec.params["temporal_stride"] == 1 and spec.params["arch"] == "tiny"
    assert spec.model_id == TVF_WEIGHTS["k600"].weights_id
    random = build_tvf("k600", weights="random", arch="tiny")
    assert random.spec.params["weights"] == "random" and random.spec.model_id == "random:tiny"
    assert "weights_sha256" not in random.spec.params
    assert random.spec.target_id != spec.target_id
    assert spec.clip_shape(4, 224) == (4, 49, 256)  # the 7 x 7 patch grid per frame
    assert tvf_clip_shape(4, 224, video_swin_config("swin-b").num_features) == (4, 49, 1024)  # the paper's


def test_random_weights_are_seeded_and_built_once(weights_dir):
    first = build_tvf("k600", weights="random", arch="tiny")
    second = build_target("3d_feature:k600", weights="random", arch="tiny")  # the code's name is an alias
    assert first.model is second.model  # one teacher per process
    fresh = build_video_swin("tiny", seed=0, temporal_stride=1).state_dict()
    assert all(torch.equal(fresh[k], v) for k, v in first.model.state_dict().items())
    frames = clips(1, seed=2)
    pretrained = build_tvf("k600", weights_dir=weights_dir, arch="tiny")
    assert not np.array_equal(first.compute(frames)["data"], pretrained.compute(frames)["data"])


def test_missing_weights_name_the_file_and_url(tmp_path):
    entry = TVF_WEIGHTS["k600"]
    with pytest.raises(MissingWeightsError) as error:
        build_tvf("k600", weights_dir=tmp_path, arch="tiny")
    message = str(error.value)
    assert str(tmp_path / entry.relative_path) in message
    assert "https://github.com/SwinTransformer/storage/releases/download/v1.0.4/" \
           "swin_base_patch244_window877_kinetics600_22k.pth" in message
    assert entry.used_by == "tvf:k600"


def test_rejects_bad_input_and_options(target):
    with pytest.raises(ValueError, match="uint8"):
        target.compute(clips(1).astype(np.float32))
    with pytest.raises(ValueError, match=r"\(B, T, S, S, 3\)"):
        target.compute(clips(1)[0])
    with pytest.raises(ValueError, match="multiple of 32"):
        target.compute(np.zeros((1, 2, 70, 70, 3), np.uint8))
    with pytest.raises(ValueError, match="weights must be"):
        build_tvf("k600", weights="imagenet", arch="tiny")
