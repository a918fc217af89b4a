"""Throughput of the `flow:dis` backend: pairs/s per DIS preset, one thread vs the worker pool.

    PYTHONPATH=. python benchmarks/bench_flow.py [--size 224] [--pairs 256] [--repeats 5] [--json out.json]

Frames are synthetic multi-scale textures moving by a few pixels per frame, so DIS does real work
(its cost barely depends on content). Each configuration is timed `--repeats` times after one
warm-up run; the table shows the median and the best run, since shared CPUs are noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import cv2
import numpy as np

from mvm_targets.targets.flow import DEFAULT_DIS_PRESET, DIS_PRESETS, DISFlowBackend, default_num_workers


def synthetic_pairs(num_pairs: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(P, S, S, 3) uint8 first frames and their copies shifted by small random integer offsets."""
    rng = np.random.default_rng(seed)
    firsts, seconds = [], []
    for _ in range(num_pairs):
        texture = np.zeros((size, size), np.float32)
        for sigma in (1.0, 3.0, 8.0):
            texture += cv2.GaussianBlur(rng.standard_normal((size, size)).astype(np.float32), (0, 0), sigma)
        gray = cv2.normalize(texture, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
        rgb = np.repeat(gray[..., None], 3, axis=-1)
        dy, dx = rng.integers(-6, 7, size=2)
        firsts.append(rgb)
        seconds.append(np.roll(rgb, (dy, dx), axis=(0, 1)))
    return np.stack(firsts), np.stack(seconds)


def time_backend(backend: DISFlowBackend, first: np.ndarray, second: np.ndarray, repeats: int) -> list[float]:
    """Pairs/s of each timed run (after one warm-up that also starts the pool)."""
    backend.estimate(first, second)
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        backend.estimate(first, second)
        rates.append(len(first) / (time.perf_counter() - start))
    return rates


def run(size: int, num_pairs: int, repeats: int, workers: int) -> list[dict]:
    first, second = synthetic_pairs(num_pairs, size)
    results = []
    for preset in DIS_PRESETS:
        for num_workers in sorted({1, workers}):
            backend = DISFlowBackend(preset, num_workers=num_workers)
            rates = time_backend(backend, first, second, repeats)
            backend.close()
            results.append({"preset": preset, "workers": num_workers, "size": size, "pairs": num_pairs,
                            "median_pairs_per_s": statistics.median(rates), "best_pairs_per_s": max(rates)})
    return results


def print_table(results: list[dict]) -> None:
    print(f"{'preset':<10} {'workers':>7} {'median pairs/s':>15} {'best pairs/s':>13}")
    for r in results:
        mark = "  (default)" if r["preset"] == DEFAULT_DIS_PRESET else ""
        print(f"{r['preset']:<10} {r['workers']:>7} {r['median_pairs_per_s']:>15.0f} "
              f"{r['best_pairs_per_s']:>13.0f}{mark}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--pairs", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workers", type=int, default=default_num_workers(), help="pool size (default: cores)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    load_before = os.getloadavg()[0]
    results = run(args.size, args.pairs, args.repeats, args.workers)
    # a busy machine (other jobs on the same cores) shows up here and explains noisy numbers
    print(f"DIS flow at {args.size}x{args.size}, {args.pairs} pairs, opencv {cv2.__version__}, "
          f"{default_num_workers()} cores, load average before {load_before:.2f}")
    print_table(results)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        meta = {"opencv": cv2.__version__, "cores": default_num_workers(), "machine": platform.machine(),
                "default_preset": DEFAULT_DIS_PRESET, "load_average_before": load_before}
        args.json.write_text(json.dumps({"meta": meta, "results": results}, indent=2))


if __name__ == "__main__":
    main()
