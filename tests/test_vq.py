"""The `vq` target: a small dall_e Encoder pickled whole, as OpenAI's encoder.pkl is.

Covers the pickle opt-in, parity with the in-memory encoder's argmax, the safetensors conversion
(same tokens, no opt-in), the v1 / v2 grids, and the contract (dtype, determinism, batches).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from dall_e import Encoder, map_pixels
from dall_e.utils import Conv2d

from mvm_targets.errors import MvmTargetsError
from mvm_targets.targets.spec import Grid, Target
from mvm_targets.targets.vq import (ENCODER_PKL, ENCODER_SAFETENSORS, PickleRefusedError, build_vq,
                                    convert_dalle_encoder, load_converted_encoder)
from mvm_targets.teachers.weights import MissingWeightsError

S = 224  # the paper's size: 28 x 28 tokens (v2) and 7 x 7 (v1) per frame
SMALL = 64  # 8 x 8 tokens (v2): for the checks that do not need the paper's size (the CPU is slow)
VOCAB = 1024


def frames(batch: int, num_frames: int, size: int = S, seed: int = 0) -> np.ndarray:
    """(B, T, size, size, 3) uint8 smooth colour textures."""
    rng = np.random.default_rng(seed)
    coarse = torch.from_numpy(rng.random((batch * num_frames, 3, size // 14, size // 14)).astype(np.float32))
    images = F.interpolate(coarse, size=(size, size), mode="bilinear").permute(0, 2, 3, 1).numpy()
    return (images * 255).astype(np.uint8).reshape(batch, num_frames, size, size, 3)


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    """A small Encoder: the least width dall_e allows (n_hid >= 64) and 1,024 codes, so that ids need
    more than 8 bits but the 1x1 logit conv (most of the cost with 8,192 codes) stays cheap."""
    torch.manual_seed(0)
    model = Encoder(n_hid=64, n_blk_per_group=1, vocab_size=VOCAB)
    with torch.no_grad():
        # At init the input conv mostly sees the mean colour and a handful of codes win everywhere;
        # a zero-mean, stronger first layer gives ~200 distinct codes on these textures.
        weight = model.blocks.input.w
        weight -= weight.mean(dim=(1, 2, 3), keepdim=True)
        weight *= 4
    return model


@pytest.fixture
def weights_dir(tmp_path: Path, encoder: Encoder) -> Path:
    """A weights folder holding only dall-e/encoder.pkl, a full pickle like the official file."""
    path = ENCODER_PKL.path(tmp_path)
    path.parent.mkdir(parents=True)
    torch.save(encoder, path)
    return tmp_path


def reference_tokens(encoder: Encoder, clips: np.ndarray, downsample: int = 1) -> np.ndarray:
    """argmax of the in-memory encoder's logits on map_pixels of the [0, 1] frame, down-sampled."""
    batch, num_frames, size = clips.shape[:3]
    images = torch.from_numpy(clips.reshape(-1, size, size, 3)).permute(0, 3, 1, 2).float() / 255
    if downsample > 1:
        images = F.interpolate(images, size=(size // downsample,) * 2, mode="bilinear", align_corners=False,
                               antialias=True)
    with torch.inference_mode():
        tokens = encoder(map_pixels(images)).argmax(dim=1).numpy()
    return tokens.reshape(batch, num_frames, *tokens.shape[1:])


def test_pickle_needs_opt_in(weights_dir: Path) -> None:
    with pytest.raises(PickleRefusedError) as info:
        build_vq("v2", weights_dir=weights_dir)
    message = str(info.value)
    assert isinstance(info.value, MvmTargetsError) and "\n" not in message  # one line for the CLI
    assert "allow_pickle=True" in message and "--allow-pickle" in message and "convert_dalle_encoder" in message
    with pytest.raises(PickleRefusedError):
        convert_dalle_encoder(ENCODER_PKL.path(weights_dir))
    with pytest.raises(PickleRefusedError):  # as `-o vq.allow_pickle=false` passes it
        build_vq("v2", weights_dir=weights_dir, allow_pickle="false")


def test_v2_tokens_equal_the_encoder_argmax(weights_dir: Path, encoder: Encoder) -> None:
    target = build_vq("v2", weights_dir=weights_dir, allow_pickle=True)
    assert isinstance(target, Target)
    spec = target.spec
    assert (spec.name, spec.grid, spec.dtype, spec.loss) == ("vq", Grid.TOKEN, "uint16", "ce")
    assert spec.clip_shape(4, 224) == (4, 28, 28) and spec.params["vocab_size"] == VOCAB
    assert spec.model_id == "openai:dall-e/encoder" and len(spec.params["weights_sha256"]) == 64
    clips = frames(1, 2)
    data = target.compute(clips)["data"]
    assert data.shape == (1, 2, 28, 28) and data.dtype == np.uint16
    expected = reference_tokens(encoder, clips)
    assert len(np.unique(expected)) > 50 and expected.max() > 255  # many codes, beyond uint8
    np.testing.assert_array_equal(data, expected)
    # float32 everywhere: dall_e's Conv2d would otherwise switch to float16 on CUDA
    assert not any(m.use_float16 for m in target.encoder().modules() if isinstance(m, Conv2d))


def test_deterministic_and_batch_independent(weights_dir: Path) -> None:
    target = build_vq("v2", weights_dir=weights_dir, allow_pickle=True, batch_size=3)  # chunks split clips
    clips = frames(2, 2, size=SMALL, seed=3)
    data = target.compute(clips)["data"]
    assert data.shape == (2, 2, 8, 8)
    np.testing.assert_array_equal(target.compute(clips)["data"], data)
    alone = np.concatenate([target.compute(clips[i:i + 1])["data"] for i in range(2)])
    np.testing.assert_array_equal(alone, data)


def test_v1_tokens_one_per_patch(weights_dir: Path, encoder: Encoder) -> None:
    target = build_vq("v1", weights_dir=weights_dir, allow_pickle=True)
    assert target.spec.grid is Grid.PATCH and target.spec.clip_shape(4, 224) == (4, 7, 7)
    clips = frames(1, 3, seed=1)
    data = target.compute(clips)["data"]
    assert data.shape == (1, 3, 7, 7) and data.dtype == np.uint16
    np.testing.assert_array_equal(data, reference_tokens(encoder, clips, downsample=4))
    assert target.spec.target_id != build_vq("v2", weights_dir=weights_dir, allow_pickle=True).spec.target_id
    with pytest.raises(ValueError, match="multiple of 32"):
        target.compute(np.zeros((1, 1, 40, 40, 3), np.uint8))


def test_converted_safetensors_needs_no_opt_in(weights_dir: Path, encoder: Encoder) -> None:
    from_pickle = build_vq("v2", weights_dir=weights_dir, allow_pickle=True)
    written = convert_dalle_encoder(ENCODER_PKL.path(weights_dir), allow_pickle=True)
    assert written == ENCODER_SAFETENSORS.path(weights_dir)
    restored = load_converted_encoder(written)
    assert (restored.n_hid, restored.n_blk_per_group, restored.vocab_size) == (64, 1, VOCAB)
    target = build_vq("v2", weights_dir=weights_dir)  # no allow_pickle: the safetensors file is preferred
    assert target.weights_path == written
    assert target.spec.target_id == from_pickle.spec.target_id  # the id hashes tensors, not the file format
    clips = frames(1, 2, size=SMALL, seed=2)
    np.testing.assert_array_equal(target.compute(clips)["data"], reference_tokens(encoder, clips))
    assert pickle.loads(pickle.dumps(target)).spec == target.spec  # the target holds no tensors


def test_missing_and_random_weights(tmp_path: Path) -> None:
    with pytest.raises(MissingWeightsError) as info:
        build_vq("v2", weights_dir=tmp_path, allow_pickle=True)
    assert "dall-e/encoder.pkl" in str(info.value) and "https://cdn.openai.com/dall-e/encoder.pkl" in str(info.value)
    random = build_vq("v1", weights="random")
    assert random.spec.params["weights"] == "random" and random.spec.model_id == "random:dall-e-encoder"
    assert "weights_sha256" not in random.spec.params
