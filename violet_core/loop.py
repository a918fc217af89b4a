"""The training engine shared by pretraining and finetuning: one phase of steps from start to end.

`Engine.fit` builds the phase's optimizer and schedule, wraps its objective for DDP, resumes from the
phase's checkpoint when there is one, and runs `run_steps`: the step loop (AMP, clipping, logging,
checkpoints, NaN stop). A task brings its model, objective and data, and says what a step feeds the
objective; nothing here depends on which task it trains.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset

from violet_core import distributed
from violet_core.batching import BatchStream
from violet_core.checkpoint import FORMAT, CheckpointError, capture_rng, load_checkpoint, restore_rng
from violet_core.config import OptimConfig
from violet_core.distributed import Dist, all_reduce_mean
from violet_core.optim import build_optimizer, build_schedule
from violet_core.run_dir import RunDir

log = logging.getLogger("violet_core")


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


@dataclass(frozen=True)
class Engine:
    """What every phase of a run trains with: its processes, device and precision, its folder (log
    lines and checkpoints), a log line every `log_every` steps, and the data order's `seed` and
    loader workers."""

    dist: Dist
    device: torch.device
    precision: str
    run_dir: RunDir
    log_every: int
    seed: int
    num_workers: int

    def wrap(self, module: nn.Module) -> nn.Module:
        """`module` as this process's replica under DDP; itself in a single process."""
        if not self.dist.enabled:
            return module
        # heads of targets a 1-frame batch cannot use stay idle; DDP must not wait for them
        return DistributedDataParallel(module, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                                       find_unused_parameters=True)

    def fit(self, phase: str, model: nn.Module, objective: nn.Module, dataset: Dataset, collate: Callable[[list], dict],
            optim: OptimConfig, *, fill: Callable[[dict], dict] | None = None,
            inputs: Callable[[dict], tuple] = lambda batch: (batch,), checkpoint: Path | None = None,
            checkpoint_every: int = 0, generators: dict[str, torch.Generator] | None = None
            ) -> tuple[dict[str, float], int]:
        """Train `model` through `objective` for `optim.steps` steps on batches of `dataset`.

        A step calls `objective(*inputs(batch))`, which returns named losses with the total under
        "loss"; `fill` completes each batch as it is drawn (`BatchStream`). With `checkpoint`, the
        phase resumes from that file when it exists and saves it every `checkpoint_every` steps, with
        the state of `generators` (per rank). Returns the mean of each loss over the last log window
        and the step reached.
        """
        optimizer = build_optimizer(model, optim)  # first: it freezes the backbone that DDP must not sync
        schedule = build_schedule(optimizer, optim)
        trainable = self.wrap(objective)
        batches = BatchStream(dataset, collate, optim.batch_size, self.seed, self.dist, self.device, self.num_workers,
                              fill=fill)
        state, save = LoopState(), None
        if checkpoint is not None:
            parts = _Resumable(model, optimizer, schedule, batches, generators or {})
            if checkpoint.exists():
                state = self._restore(checkpoint, parts, phase)
            # lines past the checkpoint (or every line, when killed before the first) are about to be written again
            self.run_dir.truncate_log(phase, state.step)
            save = functools.partial(self._save, checkpoint, parts, state)
        model.train()
        losses = run_steps(phase, lambda batch: trainable(*inputs(batch)), list(model.parameters()), optimizer,
                           schedule, batches, state, optim.steps, device=self.device, precision=self.precision,
                           grad_clip=optim.grad_clip, dist=self.dist, log=self.run_dir.log, log_every=self.log_every,
                           checkpoint=save, checkpoint_every=checkpoint_every)
        return losses, state.step

    def _save(self, path: Path, parts: _Resumable, state: LoopState) -> None:
        # each rank's RNGs and log window: ranks draw different masks and average their own losses
        loop = state.state_dict()
        ranks = distributed.all_gather_objects({"rng": capture_rng(parts.generators), "window": loop["window"]},
                                               self.dist)
        self.run_dir.save_checkpoint(path, {
            "format": FORMAT, "model": parts.model.state_dict(), "optimizer": parts.optimizer.state_dict(),
            "schedule": parts.schedule.state_dict(), "step": loop["step"], "samples": loop["samples"],
            "data": parts.batches.state_dict(), "ranks": ranks,
        })

    def _restore(self, path: Path, parts: _Resumable, phase: str) -> LoopState:
        """Load the checkpoint into the live objects. The RNGs go last: nothing may draw between their
        restore and the first resumed step, exactly as nothing did between the save and the next step."""
        saved = load_checkpoint(path)
        try:
            parts.model.load_state_dict(saved["model"])
            parts.optimizer.load_state_dict(saved["optimizer"])
            parts.schedule.load_state_dict(saved["schedule"])
            parts.batches.load_state_dict(saved["data"])
        except (KeyError, RuntimeError, ValueError) as error:  # a checkpoint of another config or data
            reason = " ".join(str(error).split())[:300] or type(error).__name__
            raise CheckpointError(f"{path}: does not fit this run: {reason}") from None
        mine = saved["ranks"][self.dist.rank]
        state = LoopState.from_state_dict({"step": saved["step"], "samples": saved["samples"],
                                           "window": mine["window"]}, self.device)
        restore_rng(mine["rng"], parts.generators)
        log.info("resumed %s at step %d from %s", _PHASE_NAMES.get(phase, phase), state.step, path)
        return state


_PHASE_NAMES = {"pretrain": "pretraining"}  # as the resume line names the phase


@dataclass
class _Resumable:
    """What a checkpoint holds besides the loop's own state: the live objects it is loaded into."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    batches: BatchStream
    generators: dict[str, torch.Generator]
