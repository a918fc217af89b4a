"""benchmarks/bench_codecs.py and bench_storage.py helpers: the teachers' float32 capture, the fidelity
measures on hand-built values, and the choice of the most compact codec that keeps a bar."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_codecs  # noqa: E402
import bench_storage  # noqa: E402

from mvm_targets.targets import tvf  # noqa: E402
from mvm_targets.targets.sif import build_sif  # noqa: E402
from mvm_targets.teachers import runtime  # noqa: E402

TINY_SWIN = dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1))


def frames(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)  # (T, S, S, 3)


def test_teacher_capture_of_a_module_that_imported_run_batched_by_name() -> None:
    target = tvf.build_tvf("k600", weights="random", arch="tiny", precision="fp32")
    clip = frames()
    values = bench_codecs.float32_values(target, clip, bench_codecs.TEACHER)
    with torch.inference_mode():  # the oracle: the teacher's own forward, in float32, outside run_batched
        direct = target._features(torch.from_numpy(clip[None])).reshape(values.shape).numpy()
    assert values.dtype == np.float32
    np.testing.assert_allclose(values, direct, rtol=1e-5, atol=1e-6)
    # the target's output is untouched by the spy: its float16 is the float32 values rounded
    np.testing.assert_array_equal(target.compute(clip[None])["data"][0], direct.astype(np.float16))
    assert tvf.run_batched is runtime.run_batched  # restored on exit


def test_teacher_capture_of_a_patch_feature_target() -> None:
    target = build_sif("timm", model="swin_tiny_patch4_window7_224", weights="random", model_kwargs=TINY_SWIN,
                       precision="fp32")
    clip = frames(1)
    values = bench_codecs.float32_values(target, clip, bench_codecs.TEACHER)
    stored = target.compute(clip[None])["data"][0]
    assert values.shape == stored.shape and values.dtype == np.float32
    assert np.abs(values).max() > 0
    # rounding the captured float32 to float16 gives what the target stores, and not trivially so
    np.testing.assert_array_equal(values.astype(np.float16), stored)
    assert not np.array_equal(values, stored.astype(np.float32))


def test_fidelity_on_hand_built_values() -> None:
    exact = np.array([[[1.0, 0.0], [0.0, 2.0]]])  # one frame, two tokens of 2 features
    decoded = np.array([[[1.0, 1.0], [0.0, 2.0]]])
    _, patch = bench_codecs.fidelity("patch", "feat", decoded, exact)
    assert patch["cos_min"] == pytest.approx(1 / np.sqrt(2))
    assert patch["cos_mean"] == pytest.approx((1 / np.sqrt(2) + 1) / 2)
    assert patch["abs_mean_relative"] == pytest.approx(1 / 3)  # mean |error| 1/4 over mean |value| 3/4

    flow_exact = np.zeros((1, 2, 2, 2))  # (T-1, 2, S, S)
    flow_decoded = flow_exact.copy()
    flow_decoded[0, :, 0, 0] = (3.0, 4.0)  # one pixel off by a 3-4-5 vector
    _, flow = bench_codecs.fidelity("dense", "flow:dis", flow_decoded, flow_exact)
    assert flow["epe_max"] == pytest.approx(5.0) and flow["epe_mean"] == pytest.approx(5.0 / 4)

    depth_exact = np.full((1, 2, 2), 127.0)  # int8 step of the frame: 127 / 127 = 1
    depth_decoded = depth_exact + np.array([[[0.5, 0.0], [0.0, 0.0]]])
    _, depth = bench_codecs.fidelity("dense", "depth:paper", depth_decoded, depth_exact)
    assert depth["max_in_int8_steps"] == pytest.approx(0.5)
    assert depth["abs_mean_relative"] == pytest.approx(0.125 / 127)

    ids = np.array([[1, 2], [3, 4]], dtype=np.uint16)
    wrong = ids.copy()
    wrong[0, 0] = 9
    assert bench_codecs.fidelity("token", "vq", wrong, ids)[1]["equal_fraction"] == 0.75
    assert bench_codecs.fidelity("token", "vq", ids, ids)[1]["equal_fraction"] == 1.0


def test_most_compact_codec_that_keeps_the_bar() -> None:
    rows = [{"target": "flow:dis", "codec": "fp16", "bytes": 500.0, "epe_mean": 0.001, "epe_p99": 0.01},
            {"target": "flow:dis", "codec": "int8", "bytes": 130.0, "epe_mean": 0.1, "epe_p99": 0.2},
            {"target": "flow:dis", "codec": "int8-half", "bytes": 40.0, "epe_mean": 0.3, "epe_p99": 0.8},
            {"target": "flow:dis", "codec": "fp16-half", "bytes": 140.0, "epe_mean": 0.07, "epe_p99": 0.7}]
    bench_storage.judge(rows)
    assert [row["meets_bar"] for row in rows] == [True, True, False, True]  # 0.3 px > 0.25 px
    assert bench_storage.most_compact(rows, "flow:dis")["codec"] == "int8"
