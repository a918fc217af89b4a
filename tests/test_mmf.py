"""`mmf`: CLIP image-tower patch tokens from a local Hugging Face folder, on the 32-px patch grid.

A tiny CLIP saved with `save_pretrained` at the registered relative path stands in for
openai/clip-vit-base-patch32 (the same loader, the same folder layout as the hub repo: a full
CLIPModel, of which only the image tower is loaded).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mvm_targets.targets.mmf import CLIP_MEAN, CLIP_STD, WEIGHTS, _quiet_transformers, _transformers, build_mmf
from mvm_targets.targets.registry import UnknownTargetError
from mvm_targets.targets.spec import Grid
from mvm_targets.teachers.weights import MissingWeightsError, sha256_of, weights_entry

transformers = _transformers()
T, S = 2, 224
TINY_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=224)
TINY_TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=64,
                 max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=1)


def frames(batch: int, size: int = S, seed: int = 0) -> np.ndarray:
    """(B, T, S, S, 3) uint8 smooth random textures."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((batch, T, size // 16, size // 16, 3))
    return (np.repeat(np.repeat(coarse, 16, axis=2), 16, axis=3) * 255).astype(np.uint8)


def save_tiny_clip(root, patch: int, seed: int = 0) -> transformers.CLIPVisionModel:
    """Save a tiny full CLIP where the hub repo would be; return its image tower (in memory)."""
    config = transformers.CLIPConfig(text_config=TINY_TEXT, vision_config=dict(TINY_VISION, patch_size=patch),
                                     projection_dim=16)
    torch.manual_seed(seed)
    with _quiet_transformers():
        clip = transformers.CLIPModel(config).eval()
        clip.save_pretrained(root / f"openai/clip-vit-base-patch{patch}")
    return clip.vision_model  # in transformers 5 this is a CLIPVisionModel itself


def patch_tokens(vision: torch.nn.Module, clips: np.ndarray, mean=CLIP_MEAN, std=CLIP_STD) -> torch.Tensor:
    """(B, T, S, S, 3) uint8 -> (B*T, h*w, D) last_hidden_state without the class token."""
    x = torch.from_numpy(clips).flatten(0, 1).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        return vision(pixel_values=x).last_hidden_state[:, 1:]


@pytest.fixture(scope="module")
def b32(tmp_path_factory):
    root = tmp_path_factory.mktemp("weights")
    vision = save_tiny_clip(root, patch=32)
    return root, vision, build_mmf("vit-b32", weights_dir=root, precision="fp32")


def test_output_is_last_hidden_state_patch_tokens_of_the_local_folder(b32):
    root, vision, target = b32
    clips = frames(2)
    data = target.compute(clips)["data"]
    expected = patch_tokens(vision, clips).numpy().reshape(2, T, 49, 32)
    np.testing.assert_allclose(data.astype(np.float32), expected, rtol=0, atol=2e-3)
    spec = target.spec
    assert data.shape == (2, *spec.clip_shape(T, S)) == (2, T, 49, 32) and data.dtype == np.float16
    assert spec.name == "mmf" and spec.grid is Grid.PATCH and spec.loss == "l1"
    assert spec.model_id == "openai/clip-vit-base-patch32" and spec.params["weights"] == "pretrained"
    assert spec.params["weights_sha256"] == sha256_of(root / "openai/clip-vit-base-patch32/model.safetensors")
    assert spec.params["grid"].startswith("7x7") and "7x7 -> 7x7 identity" in spec.params["grid"]
    assert spec.params["mean"] == list(CLIP_MEAN) and "before post_layernorm" in spec.params["features"]


def test_deterministic_and_batch_independent(b32):
    root, _, target = b32
    clips = frames(3, seed=1)
    data = target.compute(clips)["data"]
    np.testing.assert_array_equal(data, target.compute(clips)["data"])
    alone = np.concatenate([target.compute(clips[i:i + 1])["data"] for i in range(3)])
    np.testing.assert_allclose(alone.astype(np.float32), data.astype(np.float32), rtol=0, atol=2e-3)
    per_frame = build_mmf("vit-b32", weights_dir=root, precision="fp32", batch_size=1)
    np.testing.assert_allclose(per_frame.compute(clips)["data"].astype(np.float32), data.astype(np.float32),
                               rtol=0, atol=2e-3)


def test_post_layernorm_option(b32):
    root, vision, target = b32
    normed = build_mmf("vit-b32", weights_dir=root, precision="fp32", post_layernorm=True)
    clips = frames(1)
    with torch.no_grad():
        expected = vision.post_layernorm(patch_tokens(vision, clips)).numpy()
    np.testing.assert_allclose(normed.compute(clips)["data"][0].astype(np.float32), expected, atol=2e-3)
    assert normed.spec.target_id != target.spec.target_id


def test_smaller_frames_are_resized_to_the_model_input(b32):
    _, _, target = b32
    data = target.compute(frames(1, size=64))["data"]
    assert data.shape == (1, T, 4, 32) and np.isfinite(data).all()  # 7x7 native -> 2x2 bilinear


def test_b16_grid_is_avg_pooled_to_7x7_and_recorded(tmp_path):
    vision = save_tiny_clip(tmp_path, patch=16, seed=3)
    target = build_mmf("vit-b16", weights_dir=tmp_path, precision="fp32")
    assert "14x14 -> 7x7 avg-pool" in target.spec.params["grid"]
    assert target.spec.model_id == "openai/clip-vit-base-patch16"
    clips = frames(1)
    tokens = patch_tokens(vision, clips)  # (T, 196, D)
    expected = tokens.reshape(T, 7, 2, 7, 2, 32).mean(dim=(2, 4)).reshape(1, T, 49, 32)
    np.testing.assert_allclose(target.compute(clips)["data"].astype(np.float32), expected.numpy(), atol=2e-3)


def test_preprocessor_config_statistics_are_used(tmp_path):
    vision = save_tiny_clip(tmp_path, patch=32, seed=4)
    mean, std = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]
    (tmp_path / "openai/clip-vit-base-patch32/preprocessor_config.json").write_text(
        json.dumps({"image_mean": mean, "image_std": std}))
    target = build_mmf("vit-b32", weights_dir=tmp_path, precision="fp32")
    assert target.spec.params["mean"] == mean and target.spec.params["std"] == std
    clips = frames(1)
    expected = patch_tokens(vision, clips, mean, std).numpy()
    np.testing.assert_allclose(target.compute(clips)["data"][0].astype(np.float32), expected, atol=2e-3)


def test_missing_folder_names_the_path_and_the_source(tmp_path):
    with pytest.raises(MissingWeightsError) as error:
        build_mmf("vit-b32", weights_dir=tmp_path)
    message = str(error.value)
    assert str(tmp_path / "openai" / "clip-vit-base-patch32") in message
    assert "https://huggingface.co/openai/clip-vit-base-patch32" in message
    folder = tmp_path / "openai" / "clip-vit-base-patch32"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    with pytest.raises(MissingWeightsError, match="model.safetensors"):
        build_mmf("vit-b32", weights_dir=tmp_path)


def test_weights_entries_and_variants():
    entry = weights_entry("clip-vit-base-patch32")
    assert entry is WEIGHTS["vit-b32"] and entry.relative_path == "openai/clip-vit-base-patch32"
    assert entry.source == "https://huggingface.co/openai/clip-vit-base-patch32" and entry.is_directory
    assert WEIGHTS["vit-b16"].relative_path == "openai/clip-vit-base-patch16"
    with pytest.raises(UnknownTargetError):
        build_mmf("vit-l14")
    with pytest.raises(ValueError, match="weights"):
        build_mmf("vit-b32", weights="imagenet")


def test_random_weights_build_the_b32_architecture():
    target = build_mmf("vit-b32", weights="random")
    spec = target.spec
    assert spec.model_id == "random:clip-vit-base-patch32" and spec.params["weights"] == "random"
    assert "weights_sha256" not in spec.params and spec.clip_shape(4, 224) == (4, 49, 768)
