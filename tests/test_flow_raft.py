"""The RAFT backend of `flow`: parity with torchvision's RAFT, the target contract, weights handling.

RAFT is slow on a small CPU (~1.7 s per 128^2 pair for raft_small), so the tests use random
torchvision weights saved where the real checkpoints go, two flow updates and few pairs.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from mvm_targets._compat import import_torchvision
from mvm_targets.errors import MvmTargetsError
from mvm_targets.targets.flow import FlowBackend, build_flow
from mvm_targets.targets.flow_raft import RAFT_WEIGHTS, RaftFlowBackend
from mvm_targets.targets.spec import Grid
from mvm_targets.teachers.weights import MissingWeightsError

import_torchvision()
from torchvision.models.optical_flow import raft_large, raft_small  # noqa: E402

S, UPDATES = 128, 2
BUILDERS = {"small": raft_small, "large": raft_large}


def moving_frames(num_frames: int, size: int = S, seed: int = 0) -> np.ndarray:
    """(T, size, size, 3) uint8: a smooth colour texture shifted 3 px right and 1 px down per frame."""
    rng = np.random.default_rng(seed)
    coarse = torch.from_numpy(rng.random((1, 3, size // 8, size // 8)).astype(np.float32))
    texture = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic").clamp(0, 1)[0]
    texture = (texture.permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    return np.stack([np.roll(texture, (t, 3 * t), axis=(0, 1)) for t in range(num_frames)])


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A weights folder holding random torchvision RAFT state dicts at the registered paths."""
    root = tmp_path_factory.mktemp("weights")
    for name, builder in BUILDERS.items():
        torch.manual_seed(1)
        path = RAFT_WEIGHTS[name].path(root)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(builder(weights=None).state_dict(), path)
    return root


def torchvision_flow(name: str, weights_dir: Path, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """torchvision's RAFT called directly on [-1, 1] images: the reference the backend must match."""
    model = BUILDERS[name](weights=None).eval()
    model.load_state_dict(torch.load(RAFT_WEIGHTS[name].path(weights_dir), weights_only=True))
    to_model = lambda x: torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255 * 2 - 1  # noqa: E731
    with torch.inference_mode():
        return model(to_model(first), to_model(second), num_flow_updates=UPDATES)[-1].numpy()


@pytest.mark.parametrize("name, pairs", [("small", 2), ("large", 1)])  # large: one pair, it is slow
def test_parity_with_torchvision(weights_dir: Path, name: str, pairs: int) -> None:
    frames = moving_frames(pairs + 1)
    backend = RaftFlowBackend(name, UPDATES, weights_dir=weights_dir)
    assert isinstance(backend, FlowBackend)
    flow = backend.estimate(frames[:-1], frames[1:])
    assert flow.shape == (pairs, 2, S, S) and flow.dtype == np.float32
    expected = torchvision_flow(name, weights_dir, frames[:-1], frames[1:])
    np.testing.assert_allclose(flow, expected, atol=1e-4, rtol=0)
    assert np.abs(flow).max() > 0.1  # random weights still give a non-trivial field


def test_deterministic_and_batch_independent(weights_dir: Path) -> None:
    frames = moving_frames(3, seed=2)
    backend = RaftFlowBackend("small", UPDATES, weights_dir=weights_dir, batch_size=2)
    together = backend.estimate(frames[:-1], frames[1:])
    np.testing.assert_array_equal(backend.estimate(frames[:-1], frames[1:]), together)
    alone = np.concatenate([backend.estimate(frames[i:i + 1], frames[i + 1:i + 2]) for i in range(2)])
    # oneDNN may pick another convolution algorithm for another batch size: equal to float rounding.
    np.testing.assert_allclose(alone, together, atol=1e-4, rtol=0)


def test_flow_target_spec_and_output(weights_dir: Path) -> None:
    target = build_flow("raft", model="small", num_flow_updates=UPDATES, weights_dir=weights_dir)
    spec = target.spec
    assert (spec.name, spec.variant, spec.grid, spec.dtype, spec.loss) == ("flow", "raft", Grid.DENSE, "float16", "l1")
    assert spec.params["backend"] == "raft" and spec.params["model"] == "small"
    assert spec.params["num_flow_updates"] == UPDATES and spec.params["weights"] == "pretrained"
    assert len(spec.params["weights_sha256"]) == 64 and spec.model_id == "torchvision:raft_small_C_T_V2-01064c6d"
    assert build_flow("raft", model="small", num_flow_updates=3, weights_dir=weights_dir).spec.target_id != \
        spec.target_id
    # 64 px is below RAFT's 128-px minimum: padded, run, and cropped back.
    clip = moving_frames(2, size=64)[None]
    out = target.compute(clip)
    assert out["data"].shape == (1, 1, 2, 64, 64) and out["data"].dtype == np.float16
    assert out["max_magnitude"].shape == (1, 1)
    assert pickle.loads(pickle.dumps(target)).spec == spec  # into worker processes: no tensors travel
    flow = out["data"].astype(np.float32)  # the magnitude is of the float32 flow, before the float16 cast
    np.testing.assert_allclose(out["max_magnitude"][0, 0], np.sqrt((flow[0, 0] ** 2).sum(0)).max(), rtol=1e-3)


def test_odd_size_is_padded_and_cropped() -> None:
    frames = moving_frames(2, size=64)[:, :60, :44].copy()
    backend = RaftFlowBackend("small", 1, weights="random")
    assert backend.estimate(frames[:1], frames[1:]).shape == (1, 2, 60, 44)
    assert backend.estimate(frames[:0], frames[:0]).shape == (0, 2, 60, 44)


def test_missing_weights_and_random_weights(tmp_path: Path) -> None:
    with pytest.raises(MissingWeightsError) as info:
        build_flow("raft", weights_dir=tmp_path)
    assert isinstance(info.value, MvmTargetsError)  # the CLI reports it as one line
    message = str(info.value)
    assert "raft_large_C_T_SKHT_V2-ff5fadd5.pth" in message and "https://download.pytorch.org/models/" in message
    random = build_flow("raft", weights="random", weights_dir=tmp_path)
    assert random.spec.params["weights"] == "random" and "weights_sha256" not in random.spec.params
    assert random.spec.model_id == "random:raft_large"
    with pytest.raises(ValueError, match="RAFT model"):
        RaftFlowBackend("huge", weights="random")
