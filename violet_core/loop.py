"""The step loop shared by pretraining and finetuning: AMP, clipping, logging, checkpoints, NaN stop."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
from torch import Tensor, nn

from violet_core.distributed import Dist, all_reduce_mean


class NonFiniteLossError(RuntimeError):
    """A loss became NaN or infinite; the run stops and is recorded as failed with class 'nan'."""

    def __init__(self, phase: str, step: int, names: list[str]) -> None:
        super().__init__(f"{phase} step {step}: non-finite loss in {', '.join(names)}")
        self.phase, self.step = phase, step


@dataclass
class LoopState:
    """Where a phase stands; saved in checkpoints so a resumed run continues the same curve.

    `window` holds this process's losses since the last log line: a checkpoint between two log
    lines must carry them, or the next logged mean would average fewer steps after a resume.
    """

    step: int = 0
    samples: int = 0
    window: dict[str, list[Tensor]] = field(default_factory=dict)

    def state_dict(self) -> dict[str, Any]:
        """Plain data; the window as float32 values, so the resumed mean is bit-identical."""
        return {"step": self.step, "samples": self.samples,
                "window": {name: torch.stack(values).cpu() for name, values in self.window.items()}}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any], device: torch.device) -> "LoopState":
        window = {name: list(values.to(device).unbind()) for name, values in state["window"].items()}
        return cls(step=int(state["step"]), samples=int(state["samples"]), window=window)


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA by default; on CPU only when asked (it is slower without AMX)."""
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    if not use_bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def run_steps(phase: str, compute: Callable[[dict], dict[str, Tensor]], parameters: list[nn.Parameter],
              optimizer: torch.optim.Optimizer, schedule: torch.optim.lr_scheduler.LRScheduler,
              batches: Iterator[dict], state: LoopState, total_steps: int, *, device: torch.device,
              precision: str, grad_clip: float, dist: Dist, log: Callable[[dict], None], log_every: int,
              checkpoint: Callable[[], None] | None = None, checkpoint_every: int = 0) -> dict[str, float]:
    """Train from `state.step` to `total_steps`; returns the mean of each loss over the last log window."""
    window = state.window
    last: dict[str, float] = {}
    started = time.perf_counter()
    while state.step < total_steps:
        batch = next(batches)
        with autocast(device, precision):
            losses = compute(batch)
        bad = [name for name, value in losses.items() if not torch.isfinite(value).all()]
        if bad:
            raise NonFiniteLossError(phase, state.step + 1, bad)
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(parameters, grad_clip) if grad_clip > 0 else None
        optimizer.step()
        schedule.step()
        state.step += 1
        state.samples += batch["video"].shape[0] * dist.world
        for name, value in losses.items():
            window.setdefault(name, []).append(value.detach().float())
        if grad_norm is not None:
            window.setdefault("grad_norm", []).append(grad_norm.detach().float())
        if state.step % max(1, log_every) == 0 or state.step == total_steps:
            elapsed = time.perf_counter() - started
            names = sorted(window)
            means = all_reduce_mean(torch.stack([torch.stack(window[n]).mean() for n in names]), dist)
            last = dict(zip(names, means.tolist()))
            log({"phase": phase, "step": state.step, "lr": schedule.get_last_lr()[0],
                 "samples": state.samples, "step_s": elapsed / len(window["loss"]), **last})
            window.clear()
            started = time.perf_counter()
        if checkpoint is not None and checkpoint_every and state.step % checkpoint_every == 0 and state.step < total_steps:
            checkpoint()
    return last
