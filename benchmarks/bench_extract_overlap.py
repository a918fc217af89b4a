"""Does `extract` run at the pace of its slowest stage? Decode, compute and shard writes, alone and overlapped.

Makes the synthetic set with `mvmtargets synth` in a temporary folder, then measures, in clips/s:
- decode alone: `decode_in_order` with the extract's decode workers (pool start-up included, as in
  extract);
- each target's compute alone, on the pre-decoded clips in batches of --batch-size (after a warm-up);
- shard writes alone: the frames and every target's outputs committed shard by shard through the
  extract's own commit (temporary file, fsync, rename, ledger lines);
- end to end: `extract` with decode workers into a fresh cache, where decoding runs in worker
  processes and commits in the writer thread while the main loop computes.
It prints the ratio end to end / slowest stage alone (1.0: the stages overlap perfectly) and the
stage the summary says bounded the run. For comparison it gives the rate with no overlap at all (the
stage sum), with decode overlapped but compute and writes one after the other in the loop (how
extract ran before commits moved to a thread), and the cores bound: stages that overlap share the
machine's cores, so on a small machine the run cannot beat cores x the stage-sum rate either.

    python benchmarks/bench_extract_overlap.py [--clips 64] [--frames 4] [--size 224] [--workers 1]
        [--batch-size 8] [--clips-per-shard 8] [--json out.json]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_json  # noqa: E402

from mvm_targets.decode_pool import DecodeFailure, decode_in_order  # noqa: E402
from mvm_targets.extract import (ExtractConfig, bounding_stage, clip_record, extract, format_stages,  # noqa: E402
                                 shard_attrs)
from mvm_targets.shard_writer import ShardWriter  # noqa: E402
from mvm_targets.store import schema  # noqa: E402
from mvm_targets.store.layout import ClipCache  # noqa: E402
from mvm_targets.store.ledger import Ledger  # noqa: E402
from mvm_targets.targets import build_target  # noqa: E402
from mvm_targets.video.decode import DecodedClip, SamplingConfig  # noqa: E402
from mvm_targets.video.inputs import discover_inputs  # noqa: E402

TARGETS = ("hog", "flow:dis")  # weights-free: nothing to download


def make_synthetic(folder: Path, clips: int) -> Path:
    """The synthetic set through the CLI users run."""
    out = folder / "synthetic"
    subprocess.run([sys.executable, "-c", "from mvm_targets.cli import main; main()", "synth", str(out),
                    "--clips", str(clips)], check=True, capture_output=True)
    return out


def time_decode(items, sampling: SamplingConfig, workers: int) -> tuple[float, list[DecodedClip]]:
    started = time.perf_counter()
    outcomes = [outcome for _, outcome in decode_in_order(items, sampling, workers)]
    seconds = time.perf_counter() - started
    bad = [o for o in outcomes if isinstance(o, DecodeFailure)]
    if bad:
        raise SystemExit(f"synthetic clip failed to decode: {bad[0].message}")
    return seconds, outcomes


def time_compute(target, clips: list[DecodedClip], batch_size: int) -> tuple[float, dict[str, dict]]:
    """Seconds to compute every batch, and each clip's outputs (for the write stage)."""
    target.compute(np.stack([c.frames for c in clips[:batch_size]]))  # JIT and thread pools warm up
    outputs: dict[str, dict] = {}
    started = time.perf_counter()
    for first in range(0, len(clips), batch_size):
        batch = clips[first:first + batch_size]
        computed = target.compute(np.stack([c.frames for c in batch]))
        for i, clip in enumerate(batch):
            outputs[clip.key] = {name: array[i] for name, array in computed.items()}
    return time.perf_counter() - started, outputs


def time_writes(folder: Path, config: ExtractConfig, targets, clips: list[DecodedClip],
                outputs: dict[str, dict[str, dict]]) -> float:
    """Seconds to commit every set shard by shard, synchronously, as the writer thread does."""
    clip_cache = ClipCache(folder / config.dataset / config.sampling.frames_id)
    sets = {schema.FRAMES_SET: clip_cache.frames} | {t.spec.target_id: clip_cache.target_set(t.spec.target_id)
                                                      for t in targets}
    attrs = {set_id: shard_attrs(config, set_id, targets) for set_id in sets}
    writer = ShardWriter(sets, attrs, config.compression, Ledger(clip_cache.ledger_path))
    per_clip = {clip.key: {set_id: outputs[set_id][clip.key] for set_id in sets if set_id != schema.FRAMES_SET}
                for clip in clips}
    shards = [clips[i:i + config.clips_per_shard] for i in range(0, len(clips), config.clips_per_shard)]
    started = time.perf_counter()
    for shard in shards:
        for set_id in sets:
            writer.commit_set(set_id, [clip_record(c, set_id, per_clip[c.key]) for c in shard])
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clips", type=int, default=64)
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--workers", type=int, default=1, help="decode worker processes")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--clips-per-shard", type=int, default=8)
    parser.add_argument("--json")
    args = parser.parse_args()
    sampling = SamplingConfig(num_frames=args.frames, size=args.size)
    targets = [build_target(ref) for ref in TARGETS]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        items = discover_inputs([make_synthetic(folder, args.clips)])

        def config(cache: str) -> ExtractConfig:
            return ExtractConfig(cache_root=folder / cache, dataset="synthetic", sampling=sampling,
                                 batch_size=args.batch_size, workers=args.workers,
                                 clips_per_shard=args.clips_per_shard)

        seconds = {}
        seconds["decode"], clips = time_decode(items, sampling, args.workers)
        outputs = {}
        for target in targets:
            set_id = target.spec.target_id
            seconds[set_id], outputs[set_id] = time_compute(target, clips, args.batch_size)
        seconds["write"] = time_writes(folder / "writes_alone", config("unused"), targets, clips, outputs)
        summary = extract(items, targets, config("end_to_end"))
    if summary.done != len(items):
        raise SystemExit(f"extract completed {summary.done} of {len(items)} clips")
    rates = {stage: len(items) / s for stage, s in seconds.items()}
    slowest = min(rates, key=rates.get)
    end_to_end = len(items) / summary.seconds
    compute = sum(s for stage, s in seconds.items() if stage not in ("decode", "write"))
    serial_all = len(items) / sum(seconds.values())
    serial_compute_write = len(items) / max(seconds["decode"], compute + seconds["write"])
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    cores_bound = min(rates[slowest], cores * serial_all)
    stage_line = format_stages(summary, args.workers)
    print(f"{args.clips} synthetic clips, T={args.frames}, S={args.size}, {args.workers} decode worker(s), "
          f"batch {args.batch_size}, {args.clips_per_shard} clips per shard")
    for stage, rate in rates.items():
        print(f"  {stage + ' alone':34} {rate:7.1f} clips/s ({seconds[stage]:.2f}s)")
    print(f"  {'end to end (extract)':34} {end_to_end:7.1f} clips/s ({summary.seconds:.2f}s)")
    print(f"  {'no overlap (stage sum)':34} {serial_all:7.1f} clips/s")
    print(f"  {'decode overlapped, write in loop':34} {serial_compute_write:7.1f} clips/s")
    print(f"  {f'cores bound ({cores} cores)':34} {cores_bound:7.1f} clips/s")
    print(f"ratio end to end / slowest stage alone ({slowest}): {end_to_end / rates[slowest]:.2f}; "
          f"to the cores bound: {end_to_end / cores_bound:.2f}")
    print(f"summary: {stage_line}")
    write_json(args.json, {
        "clips": len(items), "T": args.frames, "S": args.size, "workers": args.workers,
        "batch_size": args.batch_size, "clips_per_shard": args.clips_per_shard, "targets": list(TARGETS),
        "alone_clips_per_s": rates, "alone_seconds": seconds, "slowest_stage": slowest,
        "end_to_end_clips_per_s": end_to_end, "end_to_end_seconds": summary.seconds,
        "ratio_to_slowest_stage": end_to_end / rates[slowest],
        "no_overlap_clips_per_s": serial_all, "write_in_loop_clips_per_s": serial_compute_write,
        "cores": cores, "cores_bound_clips_per_s": cores_bound, "ratio_to_cores_bound": end_to_end / cores_bound,
        "bounding_stage": bounding_stage(summary), "summary_stages": stage_line,
        "stages": {name: {"busy": s.busy, "wall": s.wall} for name, s in summary.stages.items()},
    })


if __name__ == "__main__":
    main()
