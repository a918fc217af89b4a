"""`feat`: token features of timm and local Hugging Face models, from random weights saved in the real formats.

Tiny architectures stand in for DINOv2 / CLIP (same builders, same loaders); the expected values
come from the saved model run by hand here (forward hooks or `hidden_states`) and pooled with numpy.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from mvm_targets.errors import MvmTargetsError
from mvm_targets.targets import build_target, list_targets
from mvm_targets.targets.feat import parse_layers
from mvm_targets.targets.sif import _timm
from mvm_targets.targets.spec import Grid
from mvm_targets.teachers.weights import sha256_of

timm = _timm()
DINO = "test_vit.r160_in1k"  # timm's own tiny test ViT (6 blocks of width 64, patch 16)
INPUT = 64  # 4 x 4 patches
T, S = 2, 64  # a 2 x 2 patch grid
MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def frames(batch: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    coarse = rng.random((batch, T, S // 8, S // 8, 3))
    return (np.repeat(np.repeat(coarse, 8, axis=2), 8, axis=3) * 255).astype(np.uint8)


def model_input(clips: np.ndarray, size: int, mean, std) -> torch.Tensor:
    """(B, T, S, S, 3) -> (B*T, 3, size, size): resized with antialiased bilinear and normalised."""
    x = torch.from_numpy(clips).flatten(0, 1).permute(0, 3, 1, 2).float() / 255
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def pool_tokens(tokens: np.ndarray, grid: int, side: int) -> np.ndarray:
    """(N, grid^2, D) -> (N, side^2, D): the mean of each (grid/side)^2 block, written out with numpy."""
    n, _, d = tokens.shape
    k = grid // side
    blocks = tokens.reshape(n, side, k, side, k, d).mean(axis=(2, 4))
    return blocks.reshape(n, side * side, d)


@pytest.fixture(scope="module")
def timm_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("weights")
    torch.manual_seed(7)
    model = timm.create_model(DINO, img_size=INPUT).eval()
    folder = root / "timm" / DINO
    folder.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    return root, model


def test_registered_and_layers_parse():
    assert "feat" in list_targets()
    assert parse_layers("-1,-4,-7") == (-1, -4, -7) and parse_layers(-1) == (-1,) and parse_layers([2, 3]) == (2, 3)
    with pytest.raises(ValueError, match="feat.layers"):
        parse_layers("-1,x")
    with pytest.raises(ValueError, match="distinct integers"):
        parse_layers("-1,-1")
    with pytest.raises(MvmTargetsError, match="model="):
        build_target("feat:timm")


def test_timm_layers_match_the_saved_model_block_outputs(timm_dir):
    root, model = timm_dir
    target = build_target("feat:timm", model=DINO, weights_dir=root, input_size=INPUT, layers="-1,-3",
                          precision="fp32")
    clips = frames(2)
    data = target.compute(clips)["data"]
    assert data.shape == (2, T, 4, 128) and data.dtype == np.float16
    seen = []
    hooks = [model.blocks[i].register_forward_hook(lambda _m, _i, out: seen.append(out)) for i in (5, 3)]
    with torch.no_grad():
        model.forward_features(model_input(clips, INPUT, model.pretrained_cfg["mean"], model.pretrained_cfg["std"]))
    for hook in hooks:
        hook.remove()
    by_block = {3: seen[0], 5: seen[1]}  # hooks fire in block order
    want = [pool_tokens(by_block[i][:, 1:].numpy(), 4, 2) for i in (5, 3)]  # class token dropped
    expected = np.concatenate(want, axis=-1).reshape(2, T, 4, 128)
    np.testing.assert_allclose(data.astype(np.float32), expected, rtol=2e-3, atol=2e-3)
    spec = target.spec
    assert spec.grid is Grid.PATCH and spec.loss == "l2" and spec.params["layers"] == [-1, -3]
    assert spec.params["weights_sha256"] == sha256_of(root / "timm" / DINO / "model.safetensors")
    assert spec.params["grid"].startswith("4x4 -> S/32") and spec.model_id == f"timm/{DINO}"


def test_timm_random_weights_loss_and_normalisation(timm_dir):
    root, _ = timm_dir
    random = build_target("feat:timm", model=DINO, weights="random", input_size=INPUT, normalize="l2",
                          loss="l1", precision="fp32")
    data = random.compute(frames(1))["data"].astype(np.float32)
    np.testing.assert_allclose(np.linalg.norm(data, axis=-1), 1.0, atol=2e-3)
    assert random.spec.loss == "l1" and random.spec.model_id.startswith("random:")
    layer = build_target("feat:timm", model=DINO, weights="random", input_size=INPUT, normalize="layernorm",
                         precision="fp32").compute(frames(1))["data"].astype(np.float64)
    np.testing.assert_allclose(layer.mean(-1), 0, atol=2e-3)
    np.testing.assert_allclose(layer.std(-1), 1, atol=5e-3)
    cosine = build_target("feat:timm", model=DINO, weights="random", input_size=INPUT, loss="cosine", layers="-1,-2")
    assert cosine.spec.loss == "cosine" and cosine.spec.loss_terms == (64, 64)  # one term per layer of width 64
    assert random.spec.loss_terms == (64,)
    with pytest.raises(ValueError, match="l1.l2.cosine; got random, none, huber"):
        build_target("feat:timm", model=DINO, weights="random", input_size=INPUT, loss="huber")
    with pytest.raises(MvmTargetsError, match="needs the file .*elsewhere.*model.safetensors"):
        build_target("feat:timm", model=DINO, weights_dir=root / "elsewhere", input_size=INPUT)
    with pytest.raises(MvmTargetsError, match="not a local Hugging Face model folder"):
        build_target("feat:hf", model=str(root / "nothing-here"))


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    from mvm_targets._compat import import_torchvision

    import_torchvision()
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    folder = tmp_path_factory.mktemp("hf") / "tiny-dinov2-reg"
    torch.manual_seed(11)
    config = Dinov2WithRegistersConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64,
                                       patch_size=8, image_size=64, num_register_tokens=4)
    model = Dinov2WithRegistersModel(config).eval()
    model.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({"image_mean": MEAN, "image_std": STD}))
    return folder, model


def test_hf_folder_loads_and_matches_hidden_states(hf_folder):
    folder, model = hf_folder
    target = build_target("feat:hf", model=str(folder), layers="-1,1", precision="fp32")
    loaded = target.extractor.model
    for name, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], value, rtol=0, atol=0)
    clips = frames(2, seed=1)
    data = target.compute(clips)["data"]
    with torch.no_grad():
        hidden = model(pixel_values=model_input(clips, 64, MEAN, STD), output_hidden_states=True).hidden_states
    want = [pool_tokens(hidden[i][:, 5:].numpy(), 8, 2) for i in (-1, 1)]  # class token and 4 registers dropped
    expected = np.concatenate(want, axis=-1).reshape(2, T, 4, 64)
    np.testing.assert_allclose(data.astype(np.float32), expected, rtol=2e-3, atol=2e-3)
    assert target.spec.params["mean"] == list(MEAN) and target.spec.params["layer_dims"] == [32, 32]
    random = build_target("feat:hf", model=str(folder), weights="random", precision="fp32")
    assert not np.allclose(random.compute(clips)["data"], data[..., :32])


def test_clip_folder_gives_its_vision_tower_at_another_input_size(tmp_path):
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(5)
    text = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    config = CLIPConfig(text_config=text,
                        vision_config=dict(hidden_size=24, intermediate_size=48, num_hidden_layers=2,
                                           num_attention_heads=2, image_size=32, patch_size=8), projection_dim=8)
    model = CLIPModel(config).eval()
    model.save_pretrained(tmp_path)  # no preprocessor_config.json: ImageNet statistics
    target = build_target("feat:hf", model=str(tmp_path), layers=-2, input_size=64, precision="fp32")
    clips = frames(1, seed=2)
    with torch.no_grad():  # 8 x 8 patches at 64 px: the 4 x 4 position embeddings are interpolated
        hidden = model.vision_model(pixel_values=model_input(clips, 64, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
                                    output_hidden_states=True, interpolate_pos_encoding=True).hidden_states
    expected = pool_tokens(hidden[-2][:, 1:].numpy(), 8, 2).reshape(1, T, 4, 24)
    np.testing.assert_allclose(target.compute(clips)["data"].astype(np.float32), expected, rtol=2e-3, atol=2e-3)
    assert target.spec.params["grid"].startswith("8x8") and target.spec.model_id == tmp_path.name
