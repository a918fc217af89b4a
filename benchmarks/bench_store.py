"""Shard-write benchmark: MB/s and bytes per clip for frames-like and HOG-like payloads.

Writes shards of 64 clips through the real `ShardSet.commit` (temporary file, fsync, rename)
with each compression setting, on realistic content: decoded frames of the synthetic dataset
when available, else smooth noise.

    python benchmarks/bench_store.py [--json out.json]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_json  # noqa: E402

from mvm_targets.store import schema  # noqa: E402
from mvm_targets.store.shard_set import ClipRecord, ShardSet  # noqa: E402

T, S, CLIPS = 4, 224, 64


def smooth_frames(rng: np.random.Generator) -> np.ndarray:
    """(T, S, S, 3) uint8 with image-like spatial correlation (upsampled noise)."""
    coarse = rng.integers(0, 255, (T, S // 8, S // 8, 3), dtype=np.uint8)
    return np.repeat(np.repeat(coarse, 8, axis=1), 8, axis=2)


def sparse_hog_like(rng: np.random.Generator) -> np.ndarray:
    """(T, S, S) float16 with the sparsity of the paper's HOG image (about 15% non-zero)."""
    values = rng.random((T, S, S)).astype(np.float16)
    values[rng.random((T, S, S)) > 0.15] = 0
    return values


def bench(payload: list[np.ndarray], compression: str | None) -> dict:
    directory = Path(tempfile.mkdtemp())
    try:
        records = [ClipRecord(f"k{i}", array, np.arange(T), np.arange(T) / 4.0, {}) for i, array in enumerate(payload)]
        spec = schema.frames_spec_json(T, S)
        start = time.perf_counter()
        result = ShardSet(directory / "set").commit(records, {"target_spec": spec}, compression)
        seconds = time.perf_counter() - start
        raw = sum(a.nbytes for a in payload)
        return {"compression": compression or "none", "raw_MB": raw / 1e6, "file_MB": result.bytes_written / 1e6,
                "MB_per_s_raw": raw / 1e6 / seconds, "bytes_per_clip": result.bytes_written / len(payload),
                "clips_per_s": len(payload) / seconds}
    finally:
        shutil.rmtree(directory)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    payloads = {"frames (T,S,S,3) uint8": [smooth_frames(rng) for _ in range(CLIPS)],
                "hog paper (T,S,S) fp16": [sparse_hog_like(rng) for _ in range(CLIPS)]}
    results = []
    for name, payload in payloads.items():
        for compression in (None, "lzf", "gzip"):
            row = {"payload": name, **bench(payload, compression)}
            results.append(row)
            print(f"{name:26} {row['compression']:5}: {row['MB_per_s_raw']:7.0f} MB/s raw, "
                  f"{row['bytes_per_clip'] / 1e3:7.1f} kB/clip, {row['clips_per_s']:7.0f} clips/s")
    write_json(args.json, {"store": results})


if __name__ == "__main__":
    main()
