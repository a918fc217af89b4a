"""Pipeline benchmark on real decoded clips: decode, each target, and shard writes.

Builds the synthetic dataset (64 clips), decodes every clip once at T=4, S=224, then times each
weights-free target on the decoded batch and the shard write of its output through the real
`ShardSet.commit` (temporary file, fsync, rename) with and without lzf compression.

    python benchmarks/bench_pipeline.py [--clips 64] [--json out.json]
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
from common import DATA_DIR, best_of, write_json  # noqa: E402

from mvm_targets.store.shard_set import ClipRecord, ShardSet  # noqa: E402
from mvm_targets.synth import build_synthetic_dataset  # noqa: E402
from mvm_targets.targets import build_target  # noqa: E402
from mvm_targets.video.decode import SamplingConfig, decode_clip  # noqa: E402
from mvm_targets.video.inputs import discover_inputs  # noqa: E402

TARGETS = ("hog:paper", "hog:maskfeat", "flow:dis")


def time_shard_write(outputs: dict[str, np.ndarray], compression: str | None) -> dict:
    directory = Path(tempfile.mkdtemp())
    try:
        clips = len(outputs["data"])
        records = [ClipRecord(f"k{i}", outputs["data"][i], np.arange(4), np.arange(4) / 4.0, {},
                              {k: v[i] for k, v in outputs.items() if k != "data"}) for i in range(clips)]
        start = time.perf_counter()
        result = ShardSet(directory / "set").commit(records, {"target_spec": "{}"}, compression)
        seconds = time.perf_counter() - start
        raw = sum(v.nbytes for v in outputs.values())
        return {"compression": compression or "none", "MB_per_s": raw / 1e6 / seconds,
                "bytes_per_clip": result.bytes_written / clips}
    finally:
        shutil.rmtree(directory)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clips", type=int, default=64)
    parser.add_argument("--json")
    args = parser.parse_args()
    dataset = DATA_DIR / f"synthetic_{args.clips}"
    if not (dataset / "dataset.json").exists():
        build_synthetic_dataset(dataset, clips=args.clips, seed=0)
    items = discover_inputs([dataset / "captions.csv"])
    config = SamplingConfig(num_frames=4, size=224)

    start = time.perf_counter()
    clips = [decode_clip(item.key, item.path, config) for item in items]
    decode_seconds = time.perf_counter() - start
    frames = np.stack([c.frames for c in clips])  # (N, 4, 224, 224, 3)
    rows = [{"stage": "decode (PyAV seek + resize + crop, 112px mp4 -> 224)", "per_s": frames.shape[0] * 4 / decode_seconds,
             "unit": "frames/s"}]
    frames_write = time_shard_write({"data": frames}, "lzf")
    rows.append({"stage": "frames shard write (lzf)", "per_s": frames_write["MB_per_s"], "unit": "MB/s",
                 "bytes_per_clip": frames_write["bytes_per_clip"]})
    for ref in TARGETS:
        target = build_target(ref)
        target.compute(frames[:2])  # JIT / thread-pool warm-up
        seconds = best_of(lambda: target.compute(frames), repeats=3)
        outputs = target.compute(frames)
        units = frames.shape[0] * (3 if ref.startswith("flow") else 4)
        rows.append({"stage": f"{ref} compute", "per_s": units / seconds,
                     "unit": "pairs/s" if ref.startswith("flow") else "frames/s"})
        for compression in (None, "lzf"):
            written = time_shard_write(outputs, compression)
            rows.append({"stage": f"{ref} shard write ({written['compression']})", "per_s": written["MB_per_s"],
                         "unit": "MB/s", "bytes_per_clip": written["bytes_per_clip"]})
    for row in rows:
        size = f"  {row['bytes_per_clip'] / 1e3:8.1f} kB/clip" if "bytes_per_clip" in row else ""
        print(f"{row['stage']:58} {row['per_s']:9.0f} {row['unit']}{size}")
    write_json(args.json, {"pipeline": rows, "clips": len(items), "T": 4, "S": 224})


if __name__ == "__main__":
    main()
