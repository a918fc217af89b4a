"""How teachers run: device choice, bf16 autocast where it pays, inference mode, load once.

Every teacher target calls `load_teacher(key, build)` so that one process builds each network
once, however many targets or batches use it, and runs it through `run_batched`, which splits
the input into chunks, disables autograd and applies the autocast policy.
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path
from typing import Callable, Iterator

import torch

_TEACHERS: dict[tuple, torch.nn.Module] = {}


def resolve_device(device: str | torch.device = "cpu") -> torch.device:
    """`"cuda"` / `"cuda:1"` / `"cpu"`; a one-line error when CUDA is asked for but absent."""
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device '{device}' requested but CUDA is not available on this machine")
    return resolved


@functools.lru_cache(maxsize=None)
def cpu_has_amx() -> bool:
    """bf16 matmuls are fast on CPUs with AMX tiles (Sapphire Rapids and later); elsewhere they are not.

    Read from the kernel's CPU flags (torch exposes no stable query for it).
    """
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags.split()


def bf16_autocast_helps(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_bf16_supported() or device.type == "cpu" and cpu_has_amx()


PRECISIONS = ("auto", "fp32", "bf16")


def resolve_precision(precision: str, device: str | torch.device) -> str:
    """A teacher's effective precision: "fp32" or "bf16" ("auto": bf16 where `bf16_autocast_helps`).

    Targets record the result in `spec.params["precision"]` (bf16 changes the values, so it is part
    of the target id) and pass `bf16=(precision == "bf16")` to `run_batched`.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got '{precision}'")
    if precision == "auto":
        return "bf16" if bf16_autocast_helps(torch.device(device)) else "fp32"
    return precision


@contextlib.contextmanager
def inference(device: torch.device, bf16: bool | None = None) -> Iterator[None]:
    """No autograd; bf16 autocast when `bf16` is True, or by default where it helps."""
    use_bf16 = bf16_autocast_helps(device) if bf16 is None else bf16
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
        yield


def load_teacher(key: tuple, build: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    """Build a teacher once per process (keyed by everything that defines it), frozen in eval mode."""
    teacher = _TEACHERS.get(key)
    if teacher is None:
        teacher = build().eval()
        for parameter in teacher.parameters():
            parameter.requires_grad_(False)
        _TEACHERS[key] = teacher
    return teacher


def run_batched(fn: Callable[[torch.Tensor], torch.Tensor], inputs: torch.Tensor, batch_size: int,
                device: torch.device, bf16: bool | None = None) -> torch.Tensor:
    """Apply `fn` to `inputs` (N, ...) in chunks of `batch_size` on `device`; float32 results on CPU."""
    outputs = []
    with inference(device, bf16):
        for start in range(0, inputs.shape[0], batch_size):
            chunk = inputs[start:start + batch_size].to(device, non_blocking=True)
            outputs.append(fn(chunk).float().cpu())
    return torch.cat(outputs) if outputs else inputs.new_zeros((0,))
