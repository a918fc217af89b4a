"""Train-step time per MVM target: cached target vs no MVM vs the teacher run on the fly (the official way).

For each target, in the same process and on the same clips:
- `none`:      a VIOLET pretraining step (MLM + VTM) without MVM: the baseline;
- `cached`:    the same step plus the MVM head and loss, the target read from the shard store;
- `on the fly`: the cached step plus computing the target from the clip's frames at every step, as
                the official code does (teachers with random weights: same architecture and cost).
Also the loader throughput (clips/s out of the DataLoader with its real augmentation) against the
clips/s the cached step consumes; the goal is a ratio >= 3.

    PYTHONPATH=. python benchmarks/bench_train_step.py [--size 128] [--batch 4] [--steps 5]
        [--targets pixel hog hog:maskfeat flow:dis sif mmf tvf vq depth flow:raft] [--json out.json]

Model: the tiny preset (Video Swin tiny + 2 x 128 fusion) on CPU, or `--preset base` (Swin-B +
12 x 768) on a GPU. Teachers that need weights are built with `weights="random"`.

MFU: the no-MVM step's FLOPs (forward + backward, counted by torch's FlopCounterMode) over its time,
divided by the device's dense bf16 peak: a known GPU from the table below, or `--peak-tflops`.

    python benchmarks/bench_train_step.py --preset base --size 224 --frames 8 --batch 8 --targets sif

`--compile` compiles the video and fusion encoders (violet_core/compiled.py) of every model timed;
the first step of the baseline, which includes the compile, is reported apart as `compile_s`.
For GPU numbers without building a cache see benchmarks/gpu_suite.py.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_json  # noqa: E402
from gpu_suite import GPU_PEAK_BF16_TFLOPS, count_flops  # noqa: E402

from mvm_targets.extract import ExtractConfig, extract  # noqa: E402
from mvm_targets.store.reader import CacheReader  # noqa: E402
from mvm_targets.synth import build_synthetic_dataset  # noqa: E402
from mvm_targets.targets.registry import build_target  # noqa: E402
from mvm_targets.video.decode import SamplingConfig  # noqa: E402
from mvm_targets.video.inputs import discover_inputs  # noqa: E402
from violet_core.batching import to_device  # noqa: E402
from violet_core.compiled import compile_model  # noqa: E402
from violet_core.config import ModelConfig, OptimConfig  # noqa: E402
from violet_core.data.pretrain import PretrainDataset, collate_pretrain  # noqa: E402
from violet_core.data.tokenizer import build_tokenizer  # noqa: E402
from violet_core.loop import autocast  # noqa: E402
from violet_core.masking import MaskSampler  # noqa: E402
from violet_core.model import Violet  # noqa: E402
from violet_core.objectives import PretrainObjective  # noqa: E402
from violet_core.optim import build_optimizer  # noqa: E402
from violet_core.target_info import read_target_infos  # noqa: E402

WEIGHT_FREE = ("pixel", "hog", "hog:maskfeat", "flow:dis")
PRESETS = {
    "tiny": ModelConfig(),
    "base": ModelConfig(video_backbone="swin-b", hidden=768, layers=12, heads=12, intermediate=3072),
}


def build_cache(root: Path, refs: list[str], clips: int, size: int, frames: int) -> None:
    build_synthetic_dataset(root / "data", clips=clips, seed=0, num_frames=12, size=max(size, 112), fps=8)
    items = discover_inputs([root / "data" / "captions.csv"])
    targets = [build_target(r) if r in WEIGHT_FREE else build_target(r, weights="random") for r in refs if r != "pixel"]
    extract(items, targets, ExtractConfig(cache_root=root / "cache", dataset="synthetic", batch_size=8,
                                          sampling=SamplingConfig(num_frames=frames, size=size)))


class StepBench:
    """Builds the model for one target set and times its pretraining steps on fixed batches."""

    def __init__(self, reader: CacheReader, refs: list[str], preset: str, batch: int, device: torch.device,
                 tokenizer, backbone_lr_mult: float = 1.0, compile: bool = False) -> None:
        self.device = device
        self.infos = read_target_infos(reader, refs)
        self.dataset = PretrainDataset(reader, self.infos, tokenizer, reader.keys, reader[0]["frames"].shape[0],
                                       reader[0]["frames"].shape[1], 24, hflip_prob=0.0)
        torch.manual_seed(0)
        self.model = Violet(PRESETS[preset], tokenizer.vocab_size, 24, self.infos).to(device)
        if compile:
            compile_model(self.model)
        self.objective = PretrainObjective(self.model, MaskSampler(("rm", "bm"), 0.3, 0.15), tokenizer.mask_id)
        # the trainer's optimizer: backbone_lr_mult 0 freezes the Swin, as the tiny preset does
        self.optimizer = build_optimizer(self.model, OptimConfig(lr=1e-4, backbone_lr_mult=backbone_lr_mult))
        self.tokenizer, self.batch, self.generator = tokenizer, batch, torch.Generator().manual_seed(0)

    def batch_at(self, step: int) -> dict:
        indices = [(step * self.batch + i) % len(self.dataset) for i in range(self.batch)]
        return collate_pretrain([self.dataset[i] for i in indices])

    def step(self, batch: dict) -> None:
        batch = to_device(batch, self.device)
        with autocast(self.device, "auto"):
            losses = self.objective(batch, self.generator, self.tokenizer.special_mask(batch["text_ids"]))
        self.optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        self.optimizer.step()
        if self.device.type == "cuda":
            torch.cuda.synchronize()


def peak_tflops(device: torch.device, override: float | None) -> float | None:
    if override:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in GPU_PEAK_BF16_TFLOPS.items() if key in name), None)


def step_flops(bench: StepBench, batch: dict) -> int:
    """FLOPs of one full training step (forward, backward and the matmuls inside attention)."""
    return count_flops(bench, batch)


def time_steps(bench: StepBench, steps: int, teacher=None, frames_of=None, first: list | None = None) -> float:
    """Median seconds per step over `steps` steps after one warm-up step (its time goes to `first`)."""
    times = []
    for step in range(steps + 1):
        batch = bench.batch_at(step)
        start = time.perf_counter()
        if teacher is not None:
            teacher.compute(frames_of(step))  # the official way: the teacher runs every step
        bench.step(batch)
        if step:
            times.append(time.perf_counter() - start)
        elif first is not None:
            first.append(time.perf_counter() - start)
    return statistics.median(times)


def loader_rate(bench: StepBench, workers: int, clips: int) -> float:
    loader = torch.utils.data.DataLoader(bench.dataset, batch_size=bench.batch, shuffle=True, num_workers=workers,
                                         collate_fn=collate_pretrain, persistent_workers=False)
    start, seen = time.perf_counter(), 0
    while seen < clips:
        for batch in loader:
            seen += batch["video"].shape[0]
            if seen >= clips:
                break
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--clips", type=int, default=24)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--targets", nargs="+", default=list(WEIGHT_FREE) + ["sif", "mmf", "tvf", "vq", "depth",
                                                                               "flow:raft"])
    parser.add_argument("--peak-tflops", type=float, help="device peak for MFU (default: known GPUs only)")
    parser.add_argument("--backbone-lr-mult", type=float, default=1.0, help="0 freezes the video backbone")
    parser.add_argument("--compile", action="store_true", help="torch.compile the video and fusion encoders")
    parser.add_argument("--json")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    results = {"preset": args.preset, "size": args.size, "frames": args.frames, "batch": args.batch,
               "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
               "threads": torch.get_num_threads(), "backbone_lr_mult": args.backbone_lr_mult,
               "compile": args.compile, "targets": {}}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        build_cache(root, args.targets, args.clips, args.size, args.frames)
        reader = CacheReader(root / "cache", "synthetic", targets=args.targets)
        tokenizer = build_tokenizer(None, [c for cs in reader.captions.values() for c in cs], vocab_size=500)
        frames = np.stack([reader[k]["frames"] for k in reader.keys])

        def frames_of(step: int) -> np.ndarray:
            return frames[[(step * args.batch + i) % len(frames) for i in range(args.batch)]]

        baseline = StepBench(reader, [], args.preset, args.batch, device, tokenizer, args.backbone_lr_mult,
                             args.compile)
        first: list[float] = []
        none_s = time_steps(baseline, args.steps, first=first)
        consumed = args.batch / none_s
        results["none_step_s"] = none_s
        if args.compile:
            # the first step compiles the forward and backward graphs; the rest of it is an ordinary step
            results["compile_s"] = max(0.0, first[0] - none_s)
            print(f"compile: {results['compile_s']:.1f} s (first step {first[0]:.1f} s)", flush=True)
        flops = step_flops(baseline, baseline.batch_at(0))
        achieved = flops / none_s / 1e12
        peak = peak_tflops(device, args.peak_tflops)
        results.update(none_step_tflop=flops / 1e12, achieved_tflops=achieved, peak_tflops=peak,
                       mfu=achieved / peak if peak else None)
        print(f"no-MVM step: {none_s:.3f} s, {flops / 1e12:.3f} TFLOP -> {achieved:.2f} TFLOP/s"
              + (f", MFU {achieved / peak:.1%} of {peak:.0f}" if peak else " (no known peak: pass --peak-tflops)"),
              flush=True)
        for workers in sorted({0, args.workers}):
            rate = loader_rate(baseline, workers, clips=max(4 * args.batch, 32))
            results[f"loader_clips_per_s_w{workers}"] = rate
            print(f"loader ({workers} workers): {rate:.1f} clips/s vs {consumed:.1f} consumed by a step "
                  f"-> {rate / consumed:.1f}x", flush=True)
        print(f"{'target':<14}{'none s':>9}{'cached s':>10}{'on the fly s':>14}{'cached/none':>13}{'fly/cached':>12}")
        for ref in args.targets:
            bench = StepBench(reader, [ref], args.preset, args.batch, device, tokenizer, args.backbone_lr_mult,
                              args.compile)
            cached = time_steps(bench, args.steps)
            teacher = None if ref == "pixel" else (build_target(ref) if ref in WEIGHT_FREE else
                                                   build_target(ref, weights="random", device=str(device)))
            fly = time_steps(bench, args.steps, teacher, frames_of) if teacher is not None else cached
            results["targets"][ref] = {"cached_s": cached, "on_the_fly_s": fly}
            print(f"{ref:<14}{none_s:>9.3f}{cached:>10.3f}{fly:>14.3f}{cached / none_s:>13.2f}{fly / cached:>12.1f}",
                  flush=True)
    write_json(args.json, results)


if __name__ == "__main__":
    main()
