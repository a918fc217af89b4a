"""The `depth` target: a tiny DPT saved where Intel/dpt-large goes, loaded through the factory.

The tiny model (hidden 32, 4 layers, 64^2 position grid) has the non-hybrid ViT DPT architecture;
its head is rescaled so that the depth map is O(1) and mostly positive after the final ReLU (at
transformers' init it is ~1e-8, below float16's normal range, which would make comparisons vacuous).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mvm_targets._compat import import_torchvision
from mvm_targets.errors import MvmTargetsError
from mvm_targets.targets.depth import DPT_WEIGHTS, build_depth, preprocess
from mvm_targets.targets.spec import Grid, Target
from mvm_targets.teachers.weights import MissingWeightsError

import_torchvision()
from transformers import DPTConfig, DPTForDepthEstimation  # noqa: E402

INPUT = 64  # the tiny model's DPT input side, in place of 384
S = 48  # frames are resized 48 -> 64 for DPT, and the depth map back to 48


def frames(batch: int, num_frames: int, size: int = S, seed: int = 0) -> np.ndarray:
    """(B, T, size, size, 3) uint8 smooth colour textures."""
    rng = np.random.default_rng(seed)
    coarse = torch.from_numpy(rng.random((batch * num_frames, 3, 6, 6)).astype(np.float32))
    images = F.interpolate(coarse, size=(size, size), mode="bilinear").permute(0, 2, 3, 1).numpy()
    return (images * 255).astype(np.uint8).reshape(batch, num_frames, size, size, 3)


@pytest.fixture(scope="module")
def tiny_dpt() -> DPTForDepthEstimation:
    torch.manual_seed(0)
    config = DPTConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
                       image_size=INPUT, patch_size=16, backbone_out_indices=(0, 1, 2, 3),
                       neck_hidden_sizes=(16, 32, 64, 64), fusion_hidden_size=32)
    model = DPTForDepthEstimation(config).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
                module.weight.normal_(0, (2 / module.weight[0].numel()) ** 0.5)  # He init keeps activations O(1)
        last = model.head.head[-2]  # the 32 -> 1 conv before the final ReLU
        last.weight.mul_(0.02)
        last.bias.fill_(2.0)
    return model


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory: pytest.TempPathFactory, tiny_dpt: DPTForDepthEstimation) -> Path:
    root = tmp_path_factory.mktemp("weights")
    tiny_dpt.save_pretrained(DPT_WEIGHTS["dpt-large"].path(root))
    return root


def reference(model: DPTForDepthEstimation, clips: np.ndarray, input_size: int | None, imagenet: bool) -> np.ndarray:
    """The in-memory model on the same preprocessed input, resized back to S: (B, T, S, S) float32."""
    batch, num_frames, size = clips.shape[:3]
    pixels = preprocess(torch.from_numpy(clips.reshape(-1, size, size, 3)), input_size, imagenet)
    with torch.inference_mode():
        depth = model(pixel_values=pixels).predicted_depth[:, None]
    depth = F.interpolate(depth, size=(size, size), mode="bilinear", align_corners=False)
    return depth.numpy().reshape(batch, num_frames, size, size)


def test_default_variant_matches_the_model(weights_dir: Path, tiny_dpt: DPTForDepthEstimation) -> None:
    target = build_depth("dpt-large", weights_dir=weights_dir, input_size=INPUT, precision="fp32")
    assert isinstance(target, Target)
    spec = target.spec
    assert (spec.name, spec.grid, spec.dtype, spec.loss) == ("depth", Grid.DENSE, "float16", "l1")
    assert spec.clip_shape(4, 224) == (4, 224, 224)
    assert spec.model_id == "Intel/dpt-large" and len(spec.params["weights_sha256"]) == 64
    assert spec.params["input"] == f"{INPUT} bicubic-antialias" and spec.params["normalisation"] == "mean=std=0.5"
    seen = []
    hook = target.model().register_forward_pre_hook(lambda _, args, kwargs: seen.append(kwargs["pixel_values"].shape),
                                                    with_kwargs=True)
    try:
        clips = frames(2, 2)
        out = target.compute(clips)
    finally:
        hook.remove()
    assert seen == [(4, 3, INPUT, INPUT)]  # resized for DPT, not fed at S
    data = out["data"]
    assert data.shape == (2, 2, S, S) and data.dtype == np.float16 and np.isfinite(data).all()
    expected = reference(tiny_dpt, clips, INPUT, imagenet=False)
    assert expected.max() > 0.5 and (expected > 0).mean() > 0.5  # a meaningful depth map, not all zeros
    np.testing.assert_allclose(data.astype(np.float32), expected, rtol=2e-3, atol=1e-3)
    # deterministic, and each clip's depth independent of the batch it came in
    np.testing.assert_array_equal(target.compute(clips)["data"], data)
    alone = np.concatenate([target.compute(clips[i:i + 1])["data"] for i in range(2)])
    np.testing.assert_allclose(alone.astype(np.float32), data.astype(np.float32), rtol=2e-3, atol=1e-3)


def test_paper_variant_feeds_the_imagenet_normalised_frame(weights_dir: Path, tiny_dpt: DPTForDepthEstimation) -> None:
    target = build_depth("paper", weights_dir=weights_dir, precision="fp32")
    assert target.spec.params["input"] == "frame" and target.spec.params["normalisation"] == "imagenet"
    assert target.spec.model_id == "Intel/dpt-large"
    seen = []
    hook = target.model().register_forward_pre_hook(lambda _, args, kwargs: seen.append(kwargs["pixel_values"].shape),
                                                    with_kwargs=True)
    try:
        clips = frames(1, 2, size=64, seed=1)
        data = target.compute(clips)["data"]
    finally:
        hook.remove()
    assert seen == [(2, 3, 64, 64)]  # no resize: DPT interpolates its position embeddings
    expected = reference(tiny_dpt, clips, None, imagenet=True)
    np.testing.assert_allclose(data.astype(np.float32), expected, rtol=2e-3, atol=1e-3)
    with pytest.raises(ValueError, match="multiple of 32"):
        target.compute(frames(1, 1, size=48))
    with pytest.raises(ValueError, match="input_size does not apply"):
        build_depth("paper", weights_dir=weights_dir, input_size=INPUT)


def test_spec_ids_options_and_pickling(weights_dir: Path) -> None:
    default = build_depth("dpt-large", weights="random")
    assert default.spec.params["input"] == "384 bicubic-antialias"  # DPT's own resolution by default
    assert default.spec.params["weights"] == "random" and default.spec.model_id == "random:dpt-large"
    assert "weights_sha256" not in default.spec.params
    ids = {build_depth("dpt-large", weights="random", input_size=size).spec.target_id for size in (384, 448)}
    ids |= {build_depth(v, weights="random").spec.target_id for v in ("paper", "dpt-hybrid")}
    assert len(ids) == 4
    assert build_depth("dpt-hybrid", weights="random").spec.model_id == "random:dpt-hybrid"
    with pytest.raises(ValueError, match="384"):
        build_depth("dpt-hybrid", weights="random", input_size=448)
    with pytest.raises(ValueError, match="multiple of 32"):
        build_depth("dpt-large", weights="random", input_size=100)
    target = build_depth("dpt-large", weights_dir=weights_dir, input_size=INPUT, precision="fp32")
    clone = pickle.loads(pickle.dumps(target))  # into DataLoader / decode workers: no tensors travel
    assert clone.spec == target.spec


def test_missing_weights(tmp_path: Path) -> None:
    for variant, folder in (("dpt-large", "Intel/dpt-large"), ("paper", "Intel/dpt-large"),
                            ("dpt-hybrid", "Intel/dpt-hybrid-midas")):
        with pytest.raises(MissingWeightsError) as info:
            build_depth(variant, weights_dir=tmp_path)
        assert isinstance(info.value, MvmTargetsError)
        assert folder in str(info.value) and f"https://huggingface.co/{folder}" in str(info.value)
