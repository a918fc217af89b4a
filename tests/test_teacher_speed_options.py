"""`channels_last` and `compile` change how fast a teacher runs, not what it computes: on the CPU, at
tiny sizes with random weights, each gives the default path's outputs within the stated tolerance,
and neither enters the target id."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mvm_targets.teachers import runtime

# float32 convolutions in another memory layout sum in another order: a few float32 ulps of the
# activations, then float16 storage (one float16 ulp is ~1e-3 relative)
FLOAT16_RTOL, FLOAT16_ATOL = 2e-3, 1e-3
FLOAT32_RTOL, FLOAT32_ATOL = 1e-4, 1e-4


def smooth_frames(batch: int, num_frames: int, size: int, seed: int = 0) -> np.ndarray:
    """(B, T, S, S, 3) uint8 smooth random textures (bilinear up-sampled noise)."""
    rng = np.random.default_rng(seed)
    coarse = torch.from_numpy(rng.random((batch * num_frames, 3, size // 8, size // 8)).astype(np.float32))
    fine = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    return (fine.permute(0, 2, 3, 1) * 255).round().byte().numpy().reshape(batch, num_frames, size, size, 3)


@pytest.fixture(scope="module")
def dpt_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny non-hybrid DPT (hidden 32, 4 layers) saved where dpt-large's folder goes."""
    from mvm_targets._compat import import_torchvision

    import_torchvision()
    from transformers import DPTConfig, DPTForDepthEstimation

    from mvm_targets.targets.depth import DPT_WEIGHTS

    torch.manual_seed(0)
    config = DPTConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
                       image_size=64, patch_size=16, backbone_out_indices=(0, 1, 2, 3),
                       neck_hidden_sizes=(16, 32, 64, 64), fusion_hidden_size=32)
    model = DPTForDepthEstimation(config).eval()
    with torch.no_grad():
        last = model.head.head[-2]  # the last conv before the ReLU: positive depths, not all clipped to 0
        last.bias.fill_(1.0)
    root = tmp_path_factory.mktemp("weights")
    model.save_pretrained(DPT_WEIGHTS["dpt-large"].path(root))
    return root


def test_depth_channels_last_matches_within_float16_rounding(dpt_weights):
    from mvm_targets.targets.depth import build_depth

    clips = smooth_frames(1, 3, 64)
    plain = build_depth("dpt-large", weights_dir=dpt_weights, input_size=64, precision="fp32", batch_size=2)
    nhwc = build_depth("dpt-large", weights_dir=dpt_weights, input_size=64, precision="fp32", batch_size=2,
                       channels_last="true")
    assert not plain.channels_last and nhwc.channels_last
    assert nhwc.spec.target_id == plain.spec.target_id
    assert next(p for p in nhwc.model().parameters() if p.ndim == 4).is_contiguous(memory_format=torch.channels_last)
    expected, got = plain.compute(clips)["data"], nhwc.compute(clips)["data"]
    assert got.dtype == expected.dtype == np.float16 and np.abs(expected).max() > 0.1
    np.testing.assert_allclose(got.astype(np.float32), expected.astype(np.float32), rtol=FLOAT16_RTOL,
                               atol=FLOAT16_ATOL)


def test_raft_channels_last_matches_within_float32_rounding():
    from mvm_targets.targets.flow_raft import RaftFlowBackend

    frames = smooth_frames(1, 2, 128, seed=3)[0]
    plain = RaftFlowBackend("small", 1, weights="random")
    nhwc = RaftFlowBackend("small", 1, weights="random", channels_last=True)
    assert plain.params == nhwc.params  # what the flow target's id is made of
    expected = plain.estimate(frames[:1], frames[1:])
    got = nhwc.estimate(frames[:1], frames[1:])
    assert np.abs(expected).max() > 0.01
    np.testing.assert_allclose(got, expected, rtol=FLOAT32_RTOL, atol=FLOAT32_ATOL * np.abs(expected).max())


def test_vq_channels_last_logits_match_and_ids_agree():
    pytest.importorskip("dall_e")
    from mvm_targets.targets.vq import LOGIT_LAPLACE_EPS, VQTarget

    plain = VQTarget("v2", weights="random", batch_size=2)
    nhwc = VQTarget("v2", weights="random", batch_size=2, channels_last=True)
    assert nhwc.spec.target_id == plain.spec.target_id
    clips = smooth_frames(1, 2, 32, seed=5)
    images = torch.from_numpy(clips[0]).permute(0, 3, 1, 2).float() / 255
    images = (1 - 2 * LOGIT_LAPLACE_EPS) * images + LOGIT_LAPLACE_EPS
    with torch.inference_mode():
        expected, got = plain.encoder()(images), nhwc.encoder()(images)
    scale = expected.abs().max().item()
    torch.testing.assert_close(got, expected, rtol=FLOAT32_RTOL, atol=FLOAT32_ATOL * scale)
    # ids are an argmax: a near-tie may flip under rounding, so agreement is asked of nearly all
    ids_plain, ids_nhwc = plain.compute(clips)["data"], nhwc.compute(clips)["data"]
    assert ids_plain.dtype == ids_nhwc.dtype == np.uint16
    assert np.array_equal(ids_plain[0], expected.argmax(1).numpy().astype(np.uint16))
    assert (ids_plain == ids_nhwc).mean() >= 0.99


@pytest.mark.slow
def test_compiled_tvf_matches_the_eager_teacher():
    """torch.compile (inductor) of a tiny random Video Swin; skipped only when this machine cannot compile."""
    from mvm_targets.targets.tvf import build_tvf

    clips = smooth_frames(2, 2, 64, seed=7)
    eager = build_tvf("k600", weights="random", arch="tiny", precision="fp32", batch_size=1)
    fast = build_tvf("k600", weights="random", arch="tiny", precision="fp32", batch_size=1, compile="true")
    assert fast.compile and not eager.compile and fast.spec.target_id == eager.spec.target_id
    expected = eager.compute(clips)["data"]
    try:
        got = fast.compute(clips)["data"]
    except torch._dynamo.exc.BackendCompilerFailed as error:  # e.g. no working C++ toolchain here
        pytest.skip(f"torch.compile cannot build kernels on this machine: {str(error).splitlines()[0][:200]}")
    assert got.dtype == np.float16 and got.shape == expected.shape
    np.testing.assert_allclose(got.astype(np.float32), expected.astype(np.float32), rtol=FLOAT16_RTOL,
                               atol=FLOAT16_ATOL * np.abs(expected).max())
    assert len(runtime._COMPILED) >= 1
