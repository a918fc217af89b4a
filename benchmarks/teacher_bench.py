"""Teacher throughput through the product path: `Target.compute` on synthetic uint8 clips.

Each target comes from its own module's factory (what `build_targets` calls), so that a missing
dependency of another target (OpenCV for flow:dis, DALL-E for vq) does not stop the rest. Without
OpenCV, flow:raft is timed through its backend's `estimate` on the clip's frame pairs, the teacher
part of its `compute` (the row says so).

For each teacher (random weights, so no weights files are needed) and each speed setting (eager;
channels_last for convolutional teachers; torch.compile), the median seconds per `compute` call give
clips/s; FLOPs per clip come from one eager call under torch.utils.flop_counter.FlopCounterMode
(convolutions, matmuls and attention), and MFU is FLOP/s over the device's bf16 peak. The first call
of a setting (weights to the device, probes, compilation) is reported apart as `first_call_s`.
"""

from __future__ import annotations

import importlib.util
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode


@dataclass(frozen=True)
class Teacher:
    """One teacher as the suite builds it: its target module, factory and variant, factory options,
    and whether its convolutions make channels_last worth measuring."""

    module: str
    factory: str
    variant: str
    options: dict[str, Any] = field(default_factory=dict)
    convolutional: bool = False
    needs: str | None = None  # a module that must be importable (vq's dall_e)


# the paper's teachers at their default architectures and precisions
TEACHERS = {
    "sif": Teacher("sif", "build_sif", "swin-b-in22k", needs="timm"),
    "mmf": Teacher("mmf", "build_mmf", "vit-b32"),
    "tvf": Teacher("tvf", "build_tvf", "k600"),
    "vq": Teacher("vq", "build_vq", "v2", convolutional=True, needs="dall_e"),
    "depth": Teacher("depth", "build_depth", "dpt-large", convolutional=True),
    "flow:raft": Teacher("flow", "build_flow", "raft", convolutional=True),
}
# seconds of CPU time: a tiny Video Swin is the one teacher small enough for the smoke run
SMOKE_TEACHERS = {"tvf": Teacher("tvf", "build_tvf", "k600", {"arch": "tiny"})}


def settings(teacher: Teacher) -> dict[str, dict[str, Any]]:
    """The speed settings measured for `teacher`: name -> options added to its own."""
    out: dict[str, dict[str, Any]] = {"eager": {"compile": False}}
    if teacher.convolutional:
        out["eager"]["channels_last"] = False
        out["channels_last"] = {"compile": False, "channels_last": True}
        out["compiled"] = {"compile": True, "channels_last": True}
    else:
        out["compiled"] = {"compile": True}
    return out


def unavailable(teacher: Teacher) -> str | None:
    """Why `teacher` cannot be measured here, or None."""
    if teacher.needs and importlib.util.find_spec(teacher.needs) is None:
        return f"{teacher.needs} is not importable"
    return None


def synthetic_clips(clips: int, frames: int, size: int, seed: int = 0) -> np.ndarray:
    """(B, T, S, S, 3) uint8 noise: teachers at random weights need no real video."""
    return np.random.default_rng(seed).integers(0, 256, (clips, frames, size, size, 3), dtype=np.uint8)


class _FlowPairs:
    """flow:raft's teacher part without OpenCV: RAFT on the clip's (t, t+1) pairs, float32 flow."""

    def __init__(self, backend: Any) -> None:
        self.backend, self.params = backend, backend.params

    def compute(self, frames: np.ndarray) -> dict[str, np.ndarray]:
        """(B, T, S, S, 3) uint8 -> {"data": (B * (T-1), 2, S, S) float32}."""
        size = frames.shape[2]
        first, second = frames[:, :-1].reshape(-1, size, size, 3), frames[:, 1:].reshape(-1, size, size, 3)
        return {"data": self.backend.estimate(first, second)}


def build(teacher: Teacher, device: torch.device, extra: dict[str, Any]) -> Any:
    """The teacher's target at random weights on `device`, with its options and `extra`."""
    import importlib

    options = {**teacher.options, **extra}
    if teacher.module == "flow" and importlib.util.find_spec("cv2") is None:
        from mvm_targets.targets.flow_raft import RaftFlowBackend

        return _FlowPairs(RaftFlowBackend(device=device, weights="random", **options))
    factory = getattr(importlib.import_module(f"mvm_targets.targets.{teacher.module}"), teacher.factory)
    return factory(teacher.variant, device=str(device), weights="random", **options)


def time_compute(target: Any, clips: np.ndarray, steps: int) -> dict[str, float]:
    """Seconds of the first `compute` and the median / min of `steps` more (each returns numpy arrays,
    so every call ends with its results on the host)."""
    start = time.perf_counter()
    target.compute(clips)
    first = time.perf_counter() - start
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        target.compute(clips)
        times.append(time.perf_counter() - start)
    return {"first_call_s": first, "call_s": statistics.median(times), "call_min_s": min(times)}


def count_flops(target: Any, clips: np.ndarray, custom: dict | None = None) -> int:
    """FLOPs of one eager `compute` (forward only)."""
    with FlopCounterMode(display=False, custom_mapping=custom or {}) as counter:
        target.compute(clips)
    return counter.get_total_flops()


def measure(teacher: Teacher, device: torch.device, clips: np.ndarray, steps: int,
            rates: Callable[[int, float], dict[str, float | None]], left_s: Callable[[], float],
            custom_flops: dict | None = None) -> dict[str, Any]:
    """Every setting of one teacher: a row per setting, FLOPs counted on the eager one."""
    from mvm_targets.teachers import runtime

    rows: dict[str, Any] = {}
    flops = None
    for name, extra in settings(teacher).items():
        if left_s() <= 0:
            rows[name] = {"skipped": "time budget spent"}
            continue
        runtime.forget_teachers()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        target = build(teacher, device, extra)
        timing = time_compute(target, clips, steps)
        if flops is None:
            flops = count_flops(target, clips, custom_flops)
        row = {**extra, "precision": _precision(target), **timing, "clips_per_s": len(clips) / timing["call_s"]}
        if isinstance(target, _FlowPairs):
            row["path"] = "RaftFlowBackend.estimate on the frame pairs (OpenCV missing: no FlowTarget)"
        if flops:
            row.update(gflop_per_clip=flops / len(clips) / 1e9, **rates(flops, timing["call_s"]))
        rows[name] = row
    runtime.forget_teachers()
    torch._dynamo.reset()  # the compiled graphs hold the teacher's weights on the device
    eager = rows.get("eager", {}).get("call_s")
    for row in rows.values():
        if eager and "call_s" in row:
            row["speedup_over_eager"] = eager / row["call_s"]
    return rows


def _precision(target: Any) -> str | None:
    params = target.params if isinstance(target, _FlowPairs) else target.spec.params
    return params.get("precision", "fp32")  # vq records none: its dVAE always runs in float32


def line(name: str, setting: str, row: dict[str, Any]) -> str:
    """One printed line of a teacher row."""
    if "call_s" not in row:
        return f"teacher {name:<10} {setting:<14} skipped: {row.get('skipped')}"
    text = (f"teacher {name:<10} {setting:<14} {row['clips_per_s']:8.2f} clips/s "
            f"({row['call_s'] * 1e3:.0f} ms/call, first {row['first_call_s']:.1f} s, {row['precision']})")
    if "gflop_per_clip" in row:
        text += f", {row['gflop_per_clip']:.1f} GFLOP/clip, {row['achieved_tflops']:.2f} TFLOP/s"
        if row.get("mfu") is not None:
            text += f", MFU {row['mfu']:.1%}"
    if "speedup_over_eager" in row and setting != "eager":
        text += f", {row['speedup_over_eager']:.2f}x eager"
    return text
