"""Codec fidelity on real decoded frames (../shared/videos; skipped without it), through written shards.

One real clip (T=4, S=224) is extracted with each target stored as fp16 (the default) and with a codec;
`CacheReader` reads both back. The oracles come from the data alone: the int8 bound max|x| / 127 / 2
per stored vector, computed in float64 from the fp16 values (and, for HOG, from the float32 values
before the target's own cast to float16); cosine similarity per token written out with numpy; the
half-resolution reference from torch's `avg_pool2d` and bilinear `interpolate`.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mvm_targets.extract import ExtractConfig, extract
from mvm_targets.store.reader import CacheReader
from mvm_targets.targets.build import build_targets
from mvm_targets.video.decode import SamplingConfig
from mvm_targets.video.inputs import discover_inputs

FLOAT16_STEP = 2.0 ** -10  # the stored scale is max|x| / 127 rounded up by less than one float16 step
FEAT = {"model": "test_vit.r160_in1k", "weights": "random", "input_size": 112}  # timm's tiny test ViT, 7 x 7 tokens
REFS = {"hog": "hog:paper", "flow": "flow:dis", "feat": "feat:timm", "pixelnorm": "pixelnorm"}


@pytest.fixture(scope="module")
def real(tmp_path_factory, one_torch_thread):
    """{name: (fp16 target, {codec: coded target})} and a reader over all of them, for the sample video."""
    from tests.conftest import SHARED_VIDEOS

    videos = sorted(SHARED_VIDEOS.glob("*.mp4")) if SHARED_VIDEOS.is_dir() else []
    if not videos:
        pytest.skip("../shared/videos is not available")
    codecs = {"hog": ("int8", "int8-half"), "flow": ("int8", "int8-half"), "feat": ("int8",),
              "pixelnorm": ("int8",)}
    built = {}
    for name, ref in REFS.items():
        options = FEAT if name == "feat" else {}
        (plain,) = build_targets([ref], options={name: options})
        coded = {codec: build_targets([ref], options={name: {**options, "codec": codec}})[0] for codec in codecs[name]}
        built[name] = (plain, coded)
    targets = [t for plain, coded in built.values() for t in (plain, *coded.values())]
    cache = tmp_path_factory.mktemp("fidelity") / "cache"
    config = ExtractConfig(cache_root=cache, dataset="real", sampling=SamplingConfig(num_frames=4, size=224))
    summary = extract(discover_inputs([videos[0].parent])[:1], targets, config)
    assert summary.done == 1 and not summary.failures
    reader = CacheReader(cache, "real", targets=[t.spec.target_id for t in targets])
    return built, reader[0]


def half_bound(values: np.ndarray, vector_axes: int) -> np.ndarray:
    """max|x| / 127 / 2 per vector, float64, broadcastable against `values` (with the float16 rounding up)."""
    axes = tuple(range(values.ndim - vector_axes, values.ndim))
    scale = np.abs(values.astype(np.float64)).max(axis=axes, keepdims=True) / 127.0
    return scale * (1 + FLOAT16_STEP) / 2


def test_hog_int8_is_within_half_a_scale_of_the_stored_and_the_float32_values(real):
    from mvm_targets.targets.hog import HogTarget

    built, clip = real
    plain, coded = built["hog"]
    stored = clip[plain.spec.target_id].astype(np.float64)  # (T, S, S): one scale per frame
    decoded = clip[coded["int8"].spec.target_id]
    assert decoded.shape == stored.shape == (4, 224, 224) and decoded.dtype == np.float32
    bound = half_bound(stored, 2)
    assert np.all(np.abs(decoded - stored) <= bound + 1e-12)
    float32 = HogTarget("paper").compute_float32(clip["frames"][None])[0].astype(np.float64)
    # against the kernel's float32 output: the half scale plus the target's own float16 rounding of x
    float16_rounding = np.abs(float32) * 2.0 ** -11
    assert np.all(np.abs(decoded - float32) <= half_bound(float32, 2) + float16_rounding + 1e-12)
    assert np.abs(decoded - stored).max() > 0  # really quantised


def test_flow_int8_bound_per_pair_and_channel_and_half_resolution_against_torch(real):
    built, clip = real
    plain, coded = built["flow"]
    stored = clip[plain.spec.target_id].astype(np.float64)  # (T-1, 2, S, S): one scale per pair and channel
    decoded = clip[coded["int8"].spec.target_id]
    assert np.all(np.abs(decoded - stored) <= half_bound(stored, 2) + 1e-12)
    pooled = torch.nn.functional.avg_pool2d(torch.from_numpy(stored), 2)
    oracle = torch.nn.functional.interpolate(pooled, scale_factor=2, mode="bilinear", align_corners=False).numpy()
    half = clip[coded["int8-half"].spec.target_id]
    assert half.shape == stored.shape
    assert np.all(np.abs(half - oracle) <= half_bound(pooled.numpy(), 2) + 1e-9)
    np.testing.assert_array_equal(clip[f"{coded['int8'].spec.target_id}/max_magnitude"],
                                  clip[f"{plain.spec.target_id}/max_magnitude"])  # extras are stored as they are


def test_hog_half_resolution_decodes_to_the_full_map(real):
    built, clip = real
    plain, coded = built["hog"]
    stored = clip[plain.spec.target_id].astype(np.float64)[:, None]  # (T, 1, S, S) for torch
    pooled = torch.nn.functional.avg_pool2d(torch.from_numpy(stored), 2)
    oracle = torch.nn.functional.interpolate(pooled, scale_factor=2, mode="bilinear", align_corners=False)
    half = clip[coded["int8-half"].spec.target_id]
    assert half.shape == (4, 224, 224)
    assert np.all(np.abs(half - oracle.numpy()[:, 0]) <= half_bound(pooled.numpy()[:, 0], 2) + 1e-9)


@pytest.mark.parametrize("name", ["feat", "pixelnorm"])
def test_feature_int8_keeps_every_token_direction(real, name):
    built, clip = real
    plain, coded = built[name]
    stored = clip[plain.spec.target_id].astype(np.float64)  # (T, h*w, D): one scale per token
    decoded = clip[coded["int8"].spec.target_id].astype(np.float64)
    assert decoded.shape == stored.shape and stored.shape[:2] == (4, 49)
    assert np.all(np.abs(decoded - stored) <= half_bound(stored, 1) + 1e-12)
    norms = np.linalg.norm(stored, axis=-1) * np.linalg.norm(decoded, axis=-1)
    cosine = (stored * decoded).sum(axis=-1) / np.where(norms > 0, norms, 1)
    assert cosine.mean() >= 0.999 and cosine.min() >= 0.99, (cosine.mean(), cosine.min())
