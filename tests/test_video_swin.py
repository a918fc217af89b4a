"""The Video Swin backbone: shapes, VIOLETv2's patch embedding, gradients, torchvision parity, loaders."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from mvm_targets._compat import import_torchvision
from mvm_targets.backbones import (VIDEO_SWIN_PRESETS, CheckpointMismatchError, SwinTransformer3D, build_video_swin,
                                   load_official_checkpoint, load_torchvision_state_dict, video_swin_config)
from mvm_targets.backbones.video_swin_weights import torchvision_to_official_keys
from mvm_targets.teachers.weights import MissingWeightsError

import_torchvision()
from torchvision.models.video.swin_transformer import SwinTransformer3d  # noqa: E402

TINY = VIDEO_SWIN_PRESETS["tiny"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def video(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("shape", [(2, 3, 4, 64, 64), (1, 3, 5, 72, 60), (1, 3, 1, 32, 32)])
def test_output_shape(stride, shape):
    model = build_video_swin("tiny", seed=0, temporal_stride=stride).eval()
    with torch.no_grad():
        out = model(video(*shape))
    b, _, t, h, w = shape
    expected_t = t if stride == 1 else -(-t // 2)
    assert out.shape == (b, expected_t, -(-h // 32), -(-w // 32), TINY.num_features)
    assert out.shape[1:] == model.config.output_shape(t, h, w)
    assert torch.isfinite(out).all()


def test_stride_one_token_t_sees_frames_t_and_t_plus_1():
    """VIOLETv2's embedding: kernel 2 over time, stride 1, one zero frame padded at the end."""
    embed = build_video_swin("tiny", seed=0, patch_norm=False).patch_embed
    x = video(1, 3, 5, 32, 32)
    changed = x.clone()
    changed[:, :, 2] += 1.0
    with torch.no_grad():
        base, moved = embed(x), embed(changed)
        padded = torch.cat([x, torch.zeros_like(x[:, :, :1])], dim=2)
        direct = torch.nn.functional.conv3d(padded, embed.proj.weight, embed.proj.bias, stride=(1, 4, 4))
    assert base.shape[1] == 5
    differs = [(base[:, t] - moved[:, t]).abs().max().item() > 0 for t in range(5)]
    assert differs == [False, True, True, False, False]  # frame 2 feeds tokens 1 and 2 only
    torch.testing.assert_close(base, direct.permute(0, 2, 3, 4, 1))


def test_gradients_reach_every_parameter_and_checkpointing_matches():
    config = dataclasses.replace(TINY, drop_path_rate=0.0)  # no randomness, so the two runs compare
    x = video(2, 3, 4, 64, 64)  # 4 frames: temporal shifts in the (2, 7, 7) windows, spatial padding
    grads = []
    for checkpointing in (False, True):
        model = build_video_swin(config, seed=1, grad_checkpointing=checkpointing).train()
        model(x).square().mean().backward()
        for name, parameter in model.named_parameters():
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-6, msg=name)


def test_drop_path_is_active_only_in_training():
    model = build_video_swin("tiny", seed=0, drop_path_rate=0.5)
    x = video(1, 3, 2, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), model(x))
        torch.manual_seed(0)
        assert not torch.equal(model.train()(x), model.eval()(x))


def torchvision_twin(config, seed: int = 0) -> SwinTransformer3d:
    torch.manual_seed(seed)
    return SwinTransformer3d(patch_size=list(config.patch_size), embed_dim=config.embed_dim,
                             depths=list(config.depths), num_heads=list(config.num_heads),
                             window_size=list(config.window_size), stochastic_depth_prob=0.1, num_classes=7).eval()


@pytest.mark.parametrize("config", [TINY, dataclasses.replace(TINY, window_size=(4, 5, 3), depths=(3, 2, 1, 2))],
                         ids=["tiny", "odd-window"])
def test_parity_with_torchvision(config):
    config = dataclasses.replace(config, temporal_stride=2)  # torchvision's embedding is the original one
    twin = torchvision_twin(config)
    ours = SwinTransformer3D(config).eval()
    assert load_torchvision_state_dict(ours, twin.state_dict()) == ["head.weight", "head.bias"]
    # sizes that need temporal/spatial padding, window clamping, and shifts in every axis
    for seed, shape in enumerate([(1, 3, 4, 64, 64), (1, 3, 7, 72, 60), (1, 3, 6, 96, 64)]):
        x = video(*shape, seed=seed)
        with torch.no_grad():
            expected = twin.norm(twin.features(twin.patch_embed(x)))
            torch.testing.assert_close(ours(x), expected, rtol=1e-5, atol=1e-5)
            unnormed = twin.features(twin.patch_embed(x))
            torch.testing.assert_close(ours.forward_features(x, norm=False), unnormed, rtol=1e-5, atol=1e-5)


def test_torchvision_keys_map_onto_ours():
    twin = torchvision_twin(TINY)
    mapped, ignored = torchvision_to_official_keys(twin.state_dict())
    ours = set(SwinTransformer3D(TINY).state_dict())
    assert ours == {k for k in mapped if not k.endswith("relative_position_index")}
    assert "layers.1.blocks.0.mlp.fc2.weight" in mapped and "layers.2.downsample.reduction.weight" in mapped
    assert ignored == ["head.weight", "head.bias"]


def official_checkpoint(model: SwinTransformer3D) -> dict:
    """The release layout: mmaction recogniser weights, backbone ones prefixed, plus the buffers it saved."""
    state = {f"backbone.{k}": v.clone() for k, v in model.state_dict().items()}
    for name, module in model.named_modules():
        if hasattr(module, "relative_position_index"):
            state[f"backbone.{name}.relative_position_index"] = module.relative_position_index.clone()
    state["cls_head.fc_cls.weight"] = torch.zeros(600, model.config.num_features)
    state["cls_head.fc_cls.bias"] = torch.zeros(600)
    return {"meta": {"epoch": 30, "mmcv_version": "1.3.1"}, "state_dict": state}


def test_official_checkpoint_round_trip(tmp_path):
    source = build_video_swin("tiny", seed=3).eval()
    path = tmp_path / "swin_tiny.pth"
    torch.save(official_checkpoint(source), path)
    fresh = build_video_swin("tiny", seed=4).eval()
    x = video(1, 3, 3, 64, 64)
    with torch.no_grad():
        assert not torch.equal(fresh(x), source(x))
        ignored = load_official_checkpoint(fresh, path)
        torch.testing.assert_close(fresh(x), source(x), rtol=0, atol=0)
    assert sorted(ignored) == ["cls_head.fc_cls.bias", "cls_head.fc_cls.weight"]
    # the temporal stride does not change shapes: the same file loads into the original embedding
    load_official_checkpoint(build_video_swin("tiny", temporal_stride=2), path)


def test_official_checkpoint_errors_are_clear(tmp_path):
    checkpoint = official_checkpoint(build_video_swin("tiny", seed=0))
    del checkpoint["state_dict"]["backbone.norm.weight"]
    checkpoint["state_dict"]["backbone.layers.0.blocks.0.attn.extra"] = torch.zeros(1)
    path = tmp_path / "broken.pth"
    torch.save(checkpoint, path)
    with pytest.raises(CheckpointMismatchError, match=r"missing: norm\.weight.*unexpected: layers\.0\.blocks\.0\.attn"
                                                      r"\.extra") as error:
        load_official_checkpoint(build_video_swin("tiny"), path)
    assert str(path) in str(error.value)

    other_window = tmp_path / "other_window.pth"
    torch.save(official_checkpoint(build_video_swin("tiny", window_size=(3, 7, 7))), other_window)
    with pytest.raises(CheckpointMismatchError, match="shape mismatch: layers.0.blocks.0.attn.relative_position_bias"):
        load_official_checkpoint(build_video_swin("tiny"), other_window)

    not_official = tmp_path / "plain.pth"
    torch.save({"state_dict": {"fc.weight": torch.zeros(2)}}, not_official)
    with pytest.raises(CheckpointMismatchError, match="no 'backbone.\\*' keys"):
        load_official_checkpoint(build_video_swin("tiny"), not_official)


def test_missing_checkpoint_names_the_file(tmp_path):
    missing = tmp_path / "nowhere" / "swin.pth"
    with pytest.raises(MissingWeightsError, match=f"{missing}.*download it from https://"):
        load_official_checkpoint(build_video_swin("tiny"), missing)


def test_seeded_build_is_reproducible_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    first = build_video_swin("tiny", seed=7).state_dict()
    after = torch.rand(1)
    second = build_video_swin("tiny", seed=7).state_dict()
    assert torch.equal(before, after)
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_presets_and_config_validation():
    assert video_swin_config("swin-b").num_features == 1024
    assert video_swin_config("swin-b").output_shape(4, 224, 224) == (4, 7, 7, 1024)
    assert video_swin_config("swin-b", temporal_stride=2).output_shape(4, 224, 224) == (2, 7, 7, 1024)
    assert video_swin_config("swin-t").num_features == 768
    with pytest.raises(ValueError, match="temporal_stride"):
        video_swin_config("tiny", temporal_stride=3)
    with pytest.raises(ValueError, match="not divisible"):
        video_swin_config("tiny", num_heads=(3, 2, 2, 4))
    with pytest.raises(ValueError, match="unknown Video Swin preset"):
        video_swin_config("swin-xl")
