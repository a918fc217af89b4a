"""Small helpers shared by the benchmark scripts: timing, machine description, JSON output."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Callable

DATA_DIR = Path(__file__).resolve().parent / ".data"  # generated inputs; git-ignored


def best_of(fn: Callable[[], object], repeats: int = 3) -> float:
    """Smallest wall time of `repeats` calls, in seconds (the least disturbed run)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d")}


def write_json(path: str | None, payload: dict) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps({"machine": machine(), **payload}, indent=2))


def synchronize(device) -> None:
    """Wait for the work queued on `device` (a torch.device) when it is a GPU, so a timer reads
    finished work; nothing to wait for on a CPU."""
    if device.type == "cuda":
        import torch  # here: the CPU-only benchmarks that use this module need not import torch

        torch.cuda.synchronize(device)
