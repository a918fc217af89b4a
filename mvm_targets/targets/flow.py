"""`flow`: optical flow between consecutive frames (docs/method.md §4.4).

VIOLETv2 regresses RAFT-Large flow on the pairs (t, t+1) of each clip, in pixels at the frame
resolution, and drops a whole pair when its flow reaches 50 px anywhere. This module keeps the
target independent of the estimator: a `FlowBackend` turns frame pairs into flow, and
`FlowTarget` handles the clip layout, the storage dtype and the per-pair statistic the trainer
needs for the 50-px rule.

Backends:
- `dis`: OpenCV's DIS optical flow on grayscale frames. Needs no weights, runs on CPU.
- `raft`: the paper's teacher, torchvision RAFT with local weights (`flow_raft.RaftFlowBackend`).

Flow layout everywhere: channel 0 = u (horizontal, +x = rightwards), channel 1 = v (vertical,
+y = downwards), so a pixel at (x, y) in the first frame moves to (x + u, y + v) in the second.

Augmentations (`flow_augmentation`, both variants): a flip is exact as geometry: the motion of the
mirrored pair is the mirrored field with u negated (`flip_flow_horizontal`), and its largest
magnitude is unchanged. It equals an estimator's output on the mirrored frames only up to that
estimator's own error, since neither DIS nor RAFT is exactly flip-equivariant (for DIS on a smooth
texture moved by (3, 1) px the two differ by ~1e-4 px mean end-point error, against 6 px for a mirror
without the sign change; tests/test_flip_exact.py). A crop keeps the flow estimated on the whole
frame (`context`): both estimators use image context beyond any crop, so flow estimated on the
cropped frames differs, most near the edges.
The per-pair largest magnitude is recomputed on the cropped flow, so the 50-px pair rule looks at
the motion inside the crop.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping, Protocol, runtime_checkable

import cv2
import numpy as np

from mvm_targets.targets.flow_raft import RaftFlowBackend  # torch is imported lazily inside
from mvm_targets.targets.half import flow_to_float16
from mvm_targets.targets.registry import UnknownTargetError, register_target
from mvm_targets.targets.spec import (Augmentation, CropRule, FlipRule, Grid, PaperScaling, TargetSpec,
                                      register_augmentation)

DIS_PRESETS = {
    "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}
# "fast" = "ultrafast" + more patch iterations + variational refinement. On real 224^2 frames
# under known synthetic warps its end-point error is ~35-50% lower than "ultrafast" (e.g. 0.45 vs
# 0.87 px for a 4-degree rotation with 5% zoom), and with two pairs in flight it still reaches
# ~1,000 pairs/s on a 2-core CPU. "medium" is again twice as accurate but ~4x slower, and
# "ultrafast" ~2x faster: pick them per run with `preset=` (see benchmarks/bench_flow.py).
DEFAULT_DIS_PRESET = "fast"
DIS_MIN_SIZE = 12  # OpenCV's DIS refuses frames smaller than this


@runtime_checkable
class FlowBackend(Protocol):
    """Estimates dense optical flow for a batch of frame pairs.

    `params` holds every setting that changes the values; it becomes the target's spec params
    (and so its id). Execution settings such as thread counts must not appear there.
    """

    params: dict[str, Any]

    def estimate(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        """first, second: (P, S, S, 3) uint8 RGB -> (P, 2, S, S) float32 flow in pixels (u, v)."""
        ...


MAX_DEFAULT_WORKERS = 8  # beyond this the pool mostly competes with the decode processes


def default_num_workers() -> int:
    """CPU cores this process may use (affinity-aware), between 1 and MAX_DEFAULT_WORKERS."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not available on macOS / Windows
        cores = os.cpu_count() or 1
    return max(1, min(cores, MAX_DEFAULT_WORKERS))


class DISFlowBackend:
    """OpenCV DIS flow on grayscale frames, pairs run concurrently in a small thread pool.

    Each pair is an independent `calc` with no initial flow, on a DIS instance private to the
    worker thread (the instances keep scratch buffers and are not thread-safe). OpenCV releases
    the GIL inside `calc`, so threads give real parallelism. Results do not depend on batching
    or on OpenCV's own thread count: current OpenCV DIS (checked on 4.14) uses a fixed number of
    stripes for its propagating patch search, and its other parallel loops do not depend on the
    stripe split; the tests check the bit-identity.
    """

    def __init__(self, preset: str = DEFAULT_DIS_PRESET, num_workers: int | None = None) -> None:
        if preset not in DIS_PRESETS:
            raise ValueError(f"unknown DIS preset '{preset}'; choose one of {', '.join(DIS_PRESETS)}")
        self.preset = preset
        self.params: dict[str, Any] = {"backend": "dis", "preset": preset, "input": "gray"}
        self.num_workers = num_workers if num_workers is not None else default_num_workers()
        if self.num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {self.num_workers}")
        self._local = threading.local()
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    def estimate(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        """first, second: (P, S, S, 3) uint8 RGB -> (P, 2, S, S) float32 flow in pixels (u, v)."""
        _check_pairs(first, second)
        num_pairs, height, width = first.shape[:3]
        out = np.empty((num_pairs, 2, height, width), dtype=np.float32)

        def run(i: int) -> None:
            out[i] = self._estimate_one(first[i], second[i]).transpose(2, 0, 1)

        if self.num_workers == 1 or num_pairs == 1:
            for i in range(num_pairs):
                run(i)
        else:
            # list() re-raises the first worker exception here instead of losing it
            list(self._get_pool().map(run, range(num_pairs)))
        return out

    def close(self) -> None:
        """Stop the worker threads (they are restarted lazily if `estimate` runs again)."""
        with self._pool_lock:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None

    def _estimate_one(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        """(S, S, 3) uint8 pair -> (S, S, 2) float32 flow."""
        dis = getattr(self._local, "dis", None)
        if dis is None:
            dis = self._local.dis = cv2.DISOpticalFlow_create(DIS_PRESETS[self.preset])
        gray0 = cv2.cvtColor(np.ascontiguousarray(first), cv2.COLOR_RGB2GRAY)
        gray1 = cv2.cvtColor(np.ascontiguousarray(second), cv2.COLOR_RGB2GRAY)
        return dis.calc(gray0, gray1, None)

    def _get_pool(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.num_workers, thread_name_prefix="dis-flow")
            return self._pool

    def __getstate__(self) -> dict[str, Any]:
        # Threads, locks and cv2 objects cannot be pickled (e.g. into DataLoader workers);
        # they are recreated on first use.
        state = self.__dict__.copy()
        state.update(_local=None, _pool=None, _pool_lock=None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._local = threading.local()
        self._pool_lock = threading.Lock()


def _check_pairs(first: np.ndarray, second: np.ndarray) -> None:
    if first.shape != second.shape or first.ndim != 4 or first.shape[-1] != 3:
        raise ValueError(f"expected two (P, S, S, 3) arrays of equal shape, got {first.shape} and {second.shape}")
    if first.dtype != np.uint8 or second.dtype != np.uint8:
        raise ValueError(f"expected uint8 frames, got {first.dtype} and {second.dtype}")
    if min(first.shape[1:3]) < DIS_MIN_SIZE:
        raise ValueError(f"DIS flow needs frames of at least {DIS_MIN_SIZE} px, got {first.shape[1:3]}")


def flow_clip_shape(num_frames: int, size: int) -> tuple[int, ...]:
    """One clip's data shape: (T-1, 2, S, S). A named function, not a lambda, so targets pickle."""
    return (num_frames - 1, 2, size, size)


class FlowTarget:
    """Flow on consecutive frame pairs: (B, T, S, S, 3) uint8 -> T-1 flows per clip."""

    def __init__(self, backend: FlowBackend, variant: str) -> None:
        self.backend = backend
        self.spec = TargetSpec(
            name="flow", variant=variant, version=1, grid=Grid.DENSE, dtype="float16", loss="l1",
            clip_shape=flow_clip_shape, frames_needed=2, params=dict(backend.params),
            description="optical flow of pairs (t, t+1) in pixels, (T-1, 2, S, S) float16, "
                        "channels (u=x, v=y); extra max_magnitude (T-1,) per pair for the 50-px rule",
            augmentation=flow_augmentation(variant, backend.params),
            paper_scaling=PaperScaling("mean", 1 / 2, "released code: masked mean / 2"),
            picture=flow_pictures,
        )

    def compute(self, frames: np.ndarray) -> dict[str, np.ndarray]:
        """frames: (B, T, S, S, 3) uint8 -> {"data": (B, T-1, 2, S, S) float16,
        "max_magnitude": (B, T-1) float32}, the largest per-pixel |flow| of each stored pair.

        |flow| cannot exceed the frame diagonal (< 6,000 px for S <= 4096), far inside float16; the
        cast still clips at +-65504 so that a backend returning garbage cannot store inf. The
        magnitude is that of the clipped values, so the trainer's 50-px rule agrees with the target.
        """
        if frames.ndim != 5 or frames.shape[-1] != 3:
            raise ValueError(f"expected frames of shape (B, T, S, S, 3), got {frames.shape}")
        batch, num_frames, height, width = frames.shape[:4]
        if num_frames < 2:
            raise ValueError(f"flow needs at least 2 frames per clip (pairs t, t+1), got T={num_frames}")
        first = frames[:, :-1].reshape(-1, height, width, 3)
        second = frames[:, 1:].reshape(-1, height, width, 3)
        flow = self.backend.estimate(first, second)
        data, largest = flow_to_float16(flow)
        return {"data": data.reshape(batch, num_frames - 1, 2, height, width),
                "max_magnitude": largest.reshape(batch, num_frames - 1)}


def flow_pictures(data: np.ndarray, size: int) -> list[np.ndarray]:
    """One clip's flow (T-1, 2, S, S) -> one colour-wheel (S, S, 3) uint8 picture per pair, all on one
    colour scale (the clip's largest magnitude), so speeds compare across pairs."""
    from mvm_targets import visualize

    flow = data.astype(np.float32)
    largest = float(np.linalg.norm(flow, axis=1).max()) or 1.0
    return [visualize.flow_to_rgb(pair, largest) for pair in flow]


def max_magnitude(flow: np.ndarray) -> np.ndarray:
    """(..., 2, H, W) flow -> (...) float32 largest per-pixel Euclidean magnitude."""
    u = flow[..., 0, :, :].astype(np.float32)
    v = flow[..., 1, :, :].astype(np.float32)
    return np.sqrt(u * u + v * v).max(axis=(-2, -1))


def flip_flow_horizontal(flow: np.ndarray) -> np.ndarray:
    """(..., 2, H, W) flow of a pair -> the flow of the horizontally mirrored pair.

    Mirroring the frames mirrors the field along W and reverses horizontal motion, so u changes
    sign; v is unchanged. Use it when a clip is flipped after its flow was computed.
    """
    flipped = flow[..., ::-1].copy()
    flipped[..., 0, :, :] *= -1
    return flipped


def mirror_flow(data: np.ndarray, extras: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """One clip's flow (T-1, 2, S, S) and extras -> those of the mirrored clip (|flow| is unchanged)."""
    return flip_flow_horizontal(data), extras


def cropped_flow_extras(data: np.ndarray, extras: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A cropped clip's flow (T-1, 2, s, s) -> its extras, max_magnitude taken inside the crop (from the
    float16 values, so it may exceed the stored float32-based maximum by a float16 rounding)."""
    return {**extras, "max_magnitude": max_magnitude(data)} if "max_magnitude" in extras else extras


@register_augmentation("flow")
def flow_augmentation(variant: str, params: Mapping[str, Any]) -> Augmentation:
    """Both variants: mirror with u negated; crops keep whole-frame flow (module docstring)."""
    return Augmentation(flip=FlipRule.EXACT, mirror=mirror_flow, crop=CropRule.CONTEXT,
                        crop_extras=cropped_flow_extras,
                        note="the mirrored motion field is the mirrored flow with u negated")


@register_target("flow", variants=("dis", "raft"))
def build_flow(variant: str, device: str = "cpu", weights: str = "pretrained", weights_dir: Path | None = None,
               **options: Any) -> FlowTarget:
    """`flow:dis` (options: preset, num_workers; needs no device or weights) or `flow:raft` (options: model,
    num_flow_updates, batch_size, precision; see `flow_raft.RaftFlowBackend`)."""
    if variant == "dis":
        return FlowTarget(DISFlowBackend(**options), variant)
    if variant == "raft":
        backend = RaftFlowBackend(device=device, weights=weights, weights_dir=weights_dir, **options)
        target = FlowTarget(backend, variant)
        target.spec = replace(target.spec, model_id=backend.model_id)
        return target
    raise UnknownTargetError(f"unknown variant '{variant}' for target 'flow'; known variants: dis, raft")
