"""`depthany`: a tiny Depth Anything V2 saved where Depth-Anything-V2-Small-hf goes, loaded through the factory.

The tiny model (DINOv2 backbone of width 32, 4 layers, patch 14, a 4 x 4 position grid) has the real
architecture; its head is rescaled so the depth map is O(1) and mostly positive after the final ReLU.
The expected values come from the saved model run by hand on frames prepared here.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mvm_targets._compat import import_torchvision
from mvm_targets.errors import MvmTargetsError
from mvm_targets.targets import build_target, list_targets
from mvm_targets.targets.depth_anything import REPOS, WEIGHTS, random_config
from mvm_targets.targets.spec import Grid, augmentation_for
from mvm_targets.teachers.weights import sha256_of

import_torchvision()
from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config  # noqa: E402

INPUT, S, T = 56, 64, 2  # frames of 64 px are fed at 56 (4 x 4 patches) and the depth map resized back


def frames(batch: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    coarse = torch.from_numpy(rng.random((batch * T, 3, 6, 6)).astype(np.float32))
    images = F.interpolate(coarse, size=(S, S), mode="bilinear").permute(0, 2, 3, 1).numpy()
    return (images * 255).astype(np.uint8).reshape(batch, T, S, S, 3)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    backbone = Dinov2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
                            patch_size=14, image_size=INPUT, out_indices=[1, 2, 3, 4], reshape_hidden_states=False)
    config = DepthAnythingConfig(backbone_config=backbone, patch_size=14, reassemble_hidden_size=32,
                                 neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16, head_hidden_size=8)
    model = DepthAnythingForDepthEstimation(config).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
                module.weight.normal_(0, (2 / module.weight[0].numel()) ** 0.5)  # He init keeps activations O(1)
        model.head.conv3.weight.mul_(0.02)
        model.head.conv3.bias.fill_(2.0)
    root = tmp_path_factory.mktemp("weights")
    model.save_pretrained(WEIGHTS["v2-small"].path(root))
    return root, model


def by_hand(model: torch.nn.Module, clips: np.ndarray) -> np.ndarray:
    """Depth Anything's recipe written out: bicubic to INPUT, ImageNet statistics, depth bilinear back to S."""
    x = torch.from_numpy(clips).flatten(0, 1).permute(0, 3, 1, 2).float() / 255
    x = F.interpolate(x, size=(INPUT, INPUT), mode="bicubic", align_corners=False, antialias=True)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    x = (x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    with torch.no_grad():
        out = model(pixel_values=x).predicted_depth[:, None]
    return F.interpolate(out, size=(S, S), mode="bilinear", align_corners=False)[:, 0].numpy()


def test_saved_folder_loads_through_the_factory_and_computes_its_depth(saved):
    root, model = saved
    target = build_target("depthany", weights_dir=root, input_size=INPUT, precision="fp32")
    assert "depthany" in list_targets() and target.spec.variant == "v2-small"
    loaded = target.model()
    for name, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], value, rtol=0, atol=0)
    clips = frames(2)
    data = target.compute(clips)["data"]
    assert data.shape == (2, T, S, S) and data.dtype == np.float16 and np.isfinite(data).all()
    want = by_hand(model, clips).reshape(2, T, S, S)
    assert np.mean(want > 0.1) > 0.5  # the head rescaling gives a real, mostly positive map
    np.testing.assert_allclose(data.astype(np.float32), want, rtol=2e-3, atol=2e-3)
    spec = target.spec
    assert spec.grid is Grid.DENSE and spec.loss == "l1" and spec.clip_shape(T, S) == (T, S, S)
    assert spec.model_id == REPOS["v2-small"]
    assert spec.params["weights_sha256"] == sha256_of(WEIGHTS["v2-small"].path(root))
    assert augmentation_for({"name": "depthany", "variant": "v2-small"}).flip.value == "refuse"
    again = pickle.loads(pickle.dumps(target))  # workers get the target without the network
    np.testing.assert_array_equal(again.compute(clips[:1])["data"], data[:1])


def test_random_weights_and_bad_options(tmp_path):
    config = random_config("v2-small")  # the published Small architecture: 24.8 M parameters
    assert config.backbone_config.hidden_size == 384 and config.neck_hidden_sizes == [48, 96, 192, 384]
    with pytest.raises(MvmTargetsError, match="Depth-Anything-V2-Base-hf"):
        build_target("depthany:v2-base", weights_dir=tmp_path)
    with pytest.raises(ValueError, match="multiple of 14"):
        build_target("depthany", weights="random", input_size=64)
    random = build_target("depthany", weights="random", input_size=56, precision="fp32")
    assert random.spec.model_id == "random:depth-anything-v2-small"
    assert random.spec.target_id != build_target("depthany", weights="random", input_size=70).spec.target_id
