"""The RAFT backend of `flow` (docs/method.md §4.4): torchvision's RAFT, the paper's flow teacher.

VIOLETv2 runs torchvision `raft_large` with the `C_T_SKHT_V2` weights and 12 flow updates, and
keeps the last estimate. Unlike the official code, which fed ImageNet-normalised frames (docs/method.md §4.4),
this backend gives RAFT what it was trained on: RGB scaled to [-1, 1], as torchvision's
`OpticalFlow` transform does. The weights are read from the local weights folder (never downloaded).

RAFT needs H and W divisible by 8 and at least 128 px (its 4-level correlation pyramid halves the
1/8-resolution feature map three times). Smaller or odd-sized frames are padded by edge
replication, centred as in the original RAFT's `InputPadder`, and the flow is cropped back; at the
usual S = 224 nothing is padded.

torch and torchvision are imported on first use, so that importing this module (which registers the
weight files for `mvmtargets weights`) stays cheap.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mvm_targets.teachers.weights import (PRETRAINED, RANDOM, WeightsEntry, WeightsMode, register_weights,
                                          sha256_of)

if TYPE_CHECKING:
    import torch

RAFT_WEIGHTS = {
    "large": register_weights(WeightsEntry(
        weights_id="raft_large", relative_path="torchvision/raft_large_C_T_SKHT_V2-ff5fadd5.pth",
        source="https://download.pytorch.org/models/raft_large_C_T_SKHT_V2-ff5fadd5.pth", used_by="flow:raft")),
    "small": register_weights(WeightsEntry(
        weights_id="raft_small", relative_path="torchvision/raft_small_C_T_V2-01064c6d.pth",
        source="https://download.pytorch.org/models/raft_small_C_T_V2-01064c6d.pth",
        used_by="flow:raft (model=small)")),
}
RAFT_MIN_SIZE = 128  # 8 px per feature cell x 2 cells at the coarsest of 4 pyramid levels
RAFT_MULTIPLE = 8
RANDOM_SEED = 0


class RaftFlowBackend:
    """torchvision RAFT as a `FlowBackend`: (P, S, S, 3) uint8 pairs -> (P, 2, S, S) float32 pixels.

    Args:
        model: "large" (the paper's teacher) or "small".
        num_flow_updates: RAFT's recurrent refinement steps; the last estimate is returned.
        device: where RAFT runs ("cpu", "cuda", "cuda:1").
        weights: "pretrained" reads the torchvision checkpoint from `weights_dir`; "random" builds
            the architecture with seeded random weights (smoke tests only).
        weights_dir: the weights folder (default: $MVM_WEIGHTS, else ~/.cache/mvm_targets/weights).
        batch_size: pairs per forward pass.
        precision: "fp32" (default), "bf16" autocast, or "auto" (the runtime's bf16 policy,
            `runtime.resolve_precision`). fp32 is the default, not "auto": autocast
            would put the all-pairs correlation matmul in bf16 (~3 significant digits), and that
            volume is what RAFT's sub-pixel lookups read, so the flow itself would change.
        channels_last: NHWC weights for cuDNN's fast convolutions (None / "auto": on CUDA only).
        compile: run the forward through torch.compile. These two change speed only, not the id.
    """

    def __init__(self, model: str = "large", num_flow_updates: int = 12, *, device: str | torch.device = "cpu",
                 weights: WeightsMode = PRETRAINED, weights_dir: Path | None = None, batch_size: int = 16,
                 precision: str = "fp32", channels_last: bool | str | None = None,
                 compile: bool | str = False) -> None:
        if model not in RAFT_WEIGHTS:
            raise ValueError(f"unknown RAFT model '{model}'; choose one of {', '.join(RAFT_WEIGHTS)}")
        if num_flow_updates < 1:
            raise ValueError(f"num_flow_updates must be >= 1, got {num_flow_updates}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if weights not in (PRETRAINED, RANDOM):
            raise ValueError(f"weights must be '{PRETRAINED}' or '{RANDOM}', got '{weights}'")
        from mvm_targets.teachers.runtime import as_flag, resolve_channels_last, resolve_device, resolve_precision

        self.model, self.num_flow_updates, self.batch_size = model, num_flow_updates, batch_size
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        self.channels_last = resolve_channels_last(channels_last, self.device)  # not in params: speed only
        self.compile = as_flag(compile, "compile")
        entry = RAFT_WEIGHTS[model]
        # Resolved now, so that a missing file fails when the target is built, not mid-run.
        self.weights_path = entry.require(weights_dir) if weights == PRETRAINED else None
        self.params: dict[str, Any] = {
            "backend": "raft", "model": model, "num_flow_updates": num_flow_updates,
            "input": "rgb [-1, 1]", "pad": f"replicate to a multiple of {RAFT_MULTIPLE}, >= {RAFT_MIN_SIZE} px",
            "precision": self.precision, "weights": weights,
        }
        if self.weights_path is None:
            self.model_id = f"random:raft_{model}"
        else:
            self.params["weights_sha256"] = _sha256_once(str(self.weights_path))
            self.model_id = f"torchvision:{Path(entry.relative_path).stem}"

    def network(self) -> torch.nn.Module:
        """The RAFT module, built once per process (and per device / weights)."""
        from mvm_targets.teachers.runtime import load_teacher

        key = ("flow:raft", self.model, str(self.weights_path) if self.weights_path else RANDOM, str(self.device))
        return load_teacher(key, self._build, channels_last=self.channels_last)

    def estimate(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        """first, second: (P, S, S, 3) uint8 RGB -> (P, 2, S, S) float32 flow in pixels (u=x, v=y)."""
        if first.shape != second.shape or first.ndim != 4 or first.shape[-1] != 3:
            raise ValueError(f"expected two (P, S, S, 3) arrays of equal shape, got {first.shape} and {second.shape}")
        if first.dtype != np.uint8 or second.dtype != np.uint8:
            raise ValueError(f"expected uint8 frames, got {first.dtype} and {second.dtype}")
        import torch

        from mvm_targets.teachers.runtime import run_batched

        if len(first) == 0:
            return np.zeros((0, 2, *first.shape[1:3]), np.float32)
        pairs = torch.from_numpy(np.stack([first, second], axis=1))  # (P, 2, S, S, 3) uint8
        network = self.network()
        flow = run_batched(functools.partial(_raft_forward, network, self.num_flow_updates), pairs,
                           self.batch_size, self.device, bf16=self.precision == "bf16", compile=self.compile)
        return flow.numpy().astype(np.float32, copy=False)

    def _build(self) -> torch.nn.Module:
        import torch

        from mvm_targets._compat import import_torchvision

        import_torchvision()
        from torchvision.models.optical_flow import raft_large, raft_small

        builder = raft_large if self.model == "large" else raft_small
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_SEED)  # "random" weights are the same in every process
            network = builder(weights=None, progress=False)
        if self.weights_path is not None:
            state = torch.load(self.weights_path, map_location="cpu", weights_only=True)
            network.load_state_dict(state)
        return network.to(self.device)


def _raft_forward(network: torch.nn.Module, num_flow_updates: int, pairs: torch.Tensor) -> torch.Tensor:
    """(N, 2, H, W, 3) uint8 pairs on the device -> (N, 2, H, W) float32 flow of the last update."""
    import torch.nn.functional as F

    height, width = pairs.shape[2:4]
    # torchvision's OpticalFlow transform: to [0, 1], then normalise with mean = std = 0.5.
    images = (pairs.permute(1, 0, 4, 2, 3).float() / 255 - 0.5) / 0.5  # (2, N, 3, H, W)
    pad_h, pad_w = _padding(height), _padding(width)
    padding = (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2)
    first, second = (F.pad(image, padding, mode="replicate") if pad_h or pad_w else image for image in images)
    flow = network(first, second, num_flow_updates=num_flow_updates)[-1].float()
    return flow[..., padding[2]:padding[2] + height, padding[0]:padding[0] + width]


def _padding(size: int) -> int:
    """Pixels to add to a side of `size` px so that RAFT accepts it."""
    target = max(RAFT_MIN_SIZE, -(-size // RAFT_MULTIPLE) * RAFT_MULTIPLE)
    return target - size


@functools.lru_cache(maxsize=None)
def _sha256_once(path: str) -> str:
    return sha256_of(Path(path))
