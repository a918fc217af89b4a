"""One GPU benchmark run of the VIOLET pretraining step, sized to finish in under 5 minutes on one H100/H200.

Measures, in this order (each later section is skipped, with the reason printed, when the time
budget is spent or something it needs is missing):
  matmul    the device's bf16 matmul rate on 8192^3 (the practical peak);
  eager     the base step (Video Swin-B + 12 x 768 BERT fusion, 8 frames at 224^2, no MVM) at
            batch 8: time, FLOPs (torch.utils.flop_counter.FlopCounterMode) and MFU;
  profile   the CUDA kernels that take the most time in one step (which attention kernel runs);
  mvm       the overhead of a cached MVM target per layout (patch features, dense pixels, tokens);
  search    the largest batch that fits (doubling, then bisection), and the step there;
  loader    clips/s the pretraining loader (PretrainDataset + collate_pretrain through the trainer's
            BatchStream: persistent workers, pinned memory on CUDA) hands to the device with 0, 4 and 8
            worker processes, at the fixed batch, on a cache of 64 synthetic clips at the step's T and
            S written without decoding (benchmarks/loader_bench.py: frames, captions, sif's Swin-B
            feature layout (T, (S/32)^2, 1024) float16, pixel derived from the frames); against the
            clips/s the eager step consumes at batch 8 and at the largest batch, where this run
            measured them (ratio = loader / step; target: >= 3x with workers);
  compiled  the same step with the video and fusion encoders compiled (violet_core/compiled.py),
            at batch 8 and at the largest batch; compile time reported apart from step time;
  teachers  MVM teachers through `Target.compute` at random weights (benchmarks/teacher_bench.py):
            clips/s, GFLOP per clip and MFU for sif, mmf, tvf, vq (when dall_e imports), depth and
            flow:raft at T=4, 224 px, eager / channels_last (convolutional ones) / compiled. It needs
            minutes of its own: run it as `--only teachers --budget-s 540`.

    PYTHONPATH=. python benchmarks/gpu_suite.py [--out DIR]       # writes DIR/gpu_suite.json
    PYTHONPATH=. python benchmarks/gpu_suite.py --smoke           # CPU, tiny model, seconds

The JSON goes to --out, else to $OUT when set. The step's inputs are synthetic tensors of the
trainer's batch layout; the loader section writes its own small shard store in a temporary folder
(no video decoding), so this needs only torch, transformers, timm, h5py, numpy and this repository;
nothing here imports PyAV, DALL-E, OpenCV, numba or scikit-image (the teachers section measures vq
only where DALL-E imports, and needs timm for sif).

MFU = step FLOPs / step time / peak, against the data-sheet dense bf16 peak of a known GPU (or
--peak-tflops) and against the measured matmul rate. FLOPs are counted on the eager step; the
compiled step does the same arithmetic.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import statistics
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

# before CUDA initialises: large batches of varying shapes fragment the default allocator
os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, synchronize  # noqa: E402
import teacher_bench  # noqa: E402

from violet_core.config import ModelConfig, OptimConfig  # noqa: E402
from violet_core.loop import autocast  # noqa: E402
from violet_core.masking import MaskSampler  # noqa: E402
from violet_core.model import Violet  # noqa: E402
from violet_core.mvm import MvmObjective  # noqa: E402
from violet_core.objectives import PretrainObjective  # noqa: E402
from violet_core.optim import build_optimizer  # noqa: E402
from violet_core.target_info import TargetInfo  # noqa: E402

# Dense bf16 tensor-core peaks from NVIDIA's data sheets (TFLOP/s, no sparsity); the first name
# contained in torch.cuda.get_device_name() wins, so the more specific names come first.
GPU_PEAK_BF16_TFLOPS = {"H100 PCIe": 756.0, "H100 NVL": 835.0, "H100": 989.0, "H200": 989.0, "A100": 312.0,
                        "L40S": 362.0}

CLS_ID, SEP_ID, PAD_ID, MASK_ID, FIRST_WORD_ID = 1, 2, 0, 3, 5
# the loader should outpace the step with room to spare: a slower epoch, a busier host, MVM targets
LOADER_TARGET_RATIO = 3.0


@dataclass(frozen=True)
class Shape:
    """A model and the input sizes of one benchmark."""

    model: ModelConfig
    frames: int
    size: int
    text_len: int
    vocab: int


SHAPES = {
    # the paper's model as the trainer builds it without pretrained weights; bert-base-uncased's vocabulary
    "base": Shape(ModelConfig(video_backbone="swin-b", hidden=768, layers=12, heads=12, intermediate=3072),
                  frames=8, size=224, text_len=24, vocab=30522),
    # base-shaped at a third of the cost, for CPU proxies: full (8, 7, 7) windows, shifts in every stage
    "reduced": Shape(ModelConfig(video_backbone="swin-t", hidden=384, layers=4, heads=6, intermediate=1536),
                     frames=8, size=224, text_len=24, vocab=30522),
    "tiny": Shape(ModelConfig(), frames=4, size=128, text_len=24, vocab=500),
    "smoke": Shape(ModelConfig(hidden=32, layers=1, heads=2, intermediate=64), frames=2, size=64, text_len=8,
                   vocab=64),
}


def cached_target_infos(frames: int, size: int) -> dict[str, TargetInfo]:
    """One MVM target per layout the trainer reads from the cache, at the sizes of the real ones:
    patch features of width 768 (L2, like a CLIP or Swin teacher's), dense RGB (L1, like pixels)
    and 8192-way tokens on an 8-px grid (CE, like dVAE codes)."""
    side = size // 32
    return {
        "patch": TargetInfo(ref="patch", name="bench_patch", variant="bench", target_id="bench_patch", grid="patch",
                            loss="l2", clip_shape=(frames, side * side, 768)),
        "dense": TargetInfo(ref="dense", name="bench_dense", variant="bench", target_id="bench_dense", grid="dense",
                            loss="l1", clip_shape=(frames, 3, size, size)),
        "token": TargetInfo(ref="token", name="bench_token", variant="bench", target_id="bench_token", grid="token",
                            loss="ce", clip_shape=(frames, size // 8, size // 8), params={"vocab_size": 8192}),
    }


def synthetic_batch(shape: Shape, batch: int, device: torch.device, infos: list[TargetInfo] = (),
                    seed: int = 0) -> dict[str, Any]:
    """A pretraining batch in the trainer's layout: video (B, T, 3, S, S), text_ids / text_mask (B, L)
    with [CLS] ... [SEP] and padding after texts of random length, targets {ref: cached layout}."""
    generator = torch.Generator().manual_seed(seed)
    video = torch.randn(batch, shape.frames, 3, shape.size, shape.size, generator=generator)
    lengths = torch.randint(max(3, shape.text_len // 2), shape.text_len + 1, (batch,), generator=generator)
    positions = torch.arange(shape.text_len)[None]
    ids = torch.randint(FIRST_WORD_ID, shape.vocab, (batch, shape.text_len), generator=generator)
    ids[:, 0] = CLS_ID
    ids = torch.where(positions == (lengths[:, None] - 1), SEP_ID, ids)
    ids = torch.where(positions >= lengths[:, None], PAD_ID, ids)
    targets = {}
    for info in infos:
        if info.loss == "ce":
            targets[info.key] = torch.randint(0, int(info.params["vocab_size"]), (batch, *info.clip_shape),
                                              generator=generator)
        else:
            targets[info.key] = torch.randn(batch, *info.clip_shape, generator=generator)
    out = {"video": video, "text_ids": ids, "text_mask": (positions < lengths[:, None]).long(), "targets": targets,
           "extras": {}}
    return {k: ({n: t.to(device) for n, t in v.items()} if isinstance(v, dict) else v.to(device))
            for k, v in out.items()}


def special_mask(ids: torch.Tensor) -> torch.Tensor:
    """(B, L) bool: [CLS], [SEP] and [PAD], the positions MLM never masks."""
    return (ids == CLS_ID) | (ids == SEP_ID) | (ids == PAD_ID)


class StepRunner:
    """A model, its pretraining objective and optimizer, and one training step as the trainer takes it
    (autocast, loss, backward, gradient clipping at 1.0, AdamW)."""

    def __init__(self, shape: Shape, device: torch.device, infos: list[TargetInfo] = (), precision: str = "auto",
                 attention: str = "sdpa", seed: int = 0, backbone_lr_mult: float = 1.0) -> None:
        self.shape, self.device, self.precision = shape, device, precision
        torch.manual_seed(seed)
        self.model = Violet(shape.model, shape.vocab, shape.text_len, list(infos),
                            attention_weights=attention == "explicit").to(device)
        if attention == "explicit":
            swin = self.model.video.swin
            if not hasattr(swin, "set_fused_attention"):
                raise RuntimeError("this Video Swin has no explicit-attention switch (set_fused_attention)")
            swin.set_fused_attention(False)
        self.objective = PretrainObjective(self.model, MaskSampler(("rm", "bm"), 0.3, 0.15), MASK_ID)
        self.optim_config = OptimConfig(lr=1e-4, backbone_lr_mult=backbone_lr_mult)  # 0 freezes the Video Swin
        self.optimizer = build_optimizer(self.model, self.optim_config)
        self.parameters = [p for p in self.model.parameters() if p.requires_grad]
        self.generator = torch.Generator().manual_seed(seed)

    def step(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        self.model.train()
        with autocast(self.device, self.precision):
            losses = self.objective(batch, self.generator, special_mask(batch["text_ids"]))
        self.optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        torch.nn.utils.clip_grad_norm_(self.parameters, 1.0)
        self.optimizer.step()
        synchronize(self.device)
        return losses

    def compile(self, **options: Any) -> None:
        from violet_core.compiled import compile_model  # imported here: absent from older checkouts

        compile_model(self.model, **options)


def release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def time_steps(runner: StepRunner, batch: dict[str, Any], steps: int, warmup: int) -> dict[str, float]:
    """Seconds of the first step (compile, allocations) and the median / min / max of `steps` steps
    after `warmup` more; on CUDA also the peak memory allocated meanwhile."""
    if runner.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(runner.device)
    times = []
    for _ in range(1 + warmup + steps):
        start = time.perf_counter()
        runner.step(batch)
        times.append(time.perf_counter() - start)
    timed = times[1 + warmup:]
    out = {"first_step_s": times[0], "step_s": statistics.median(timed), "step_min_s": min(timed),
           "step_max_s": max(timed), "steps": len(timed)}
    if runner.device.type == "cuda":
        out["peak_memory_gib"] = torch.cuda.max_memory_allocated(runner.device) / 2**30
    return out


def _cpu_flash_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


def _cpu_flash_backward_flops(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out, query, key, value)


# FlopCounterMode knows the CUDA attention kernels but not the CPU one, which it would count as 0
_CPU_ATTENTION_FLOPS = {
    getattr(torch.ops.aten, name): formula
    for name, formula in (("_scaled_dot_product_flash_attention_for_cpu", _cpu_flash_flops),
                          ("_scaled_dot_product_flash_attention_for_cpu_backward", _cpu_flash_backward_flops))
    if hasattr(torch.ops.aten, name)
}


def count_flops(runner: StepRunner, batch: dict[str, Any]) -> int:
    """FLOPs of one whole training step (forward, backward and the matmuls inside attention)."""
    with FlopCounterMode(display=False, custom_mapping=_CPU_ATTENTION_FLOPS) as counter:
        runner.step(batch)
    return counter.get_total_flops()


def matmul_rate(n: int, device: torch.device, dtype: torch.dtype, iterations: int) -> dict[str, float]:
    """Achieved TFLOP/s of an n x n x n matmul (2 n^3 FLOPs), median of `iterations` after a warm-up."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    synchronize(device)
    times = []
    for _ in range(iterations):
        start = time.perf_counter()
        a @ b
        synchronize(device)
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    return {"n": n, "dtype": str(dtype).removeprefix("torch."), "seconds": seconds, "tflops": 2 * n**3 / seconds / 1e12,
            "tflops_best": 2 * n**3 / min(times) / 1e12}


def is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()


def largest_batch(fits: Callable[[int], bool], start: int, limit: int, granule: int = 1) -> tuple[int, list[dict]]:
    """The largest batch b <= limit, a multiple of `granule`, for which `fits(b)`, assuming that fitting
    is monotone: double from `start` until a batch fails or reaches `limit`, then bisect between the
    last fit and the first failure. Returns (b, probes); b is 0 when `start` itself does not fit."""
    probes: list[dict] = []

    def probe(b: int) -> bool:
        ok = fits(b)
        probes.append({"batch": b, "fits": ok})
        return ok

    if not probe(start):
        return 0, probes
    good, bad = start, None
    while bad is None and good < limit:
        candidate = min(limit, good * 2)
        if probe(candidate):
            good = candidate
        else:
            bad = candidate
    if bad is None:
        return good, probes
    while bad - good > granule:
        middle = (good + bad) // 2 // granule * granule
        if middle <= good:
            break
        if probe(middle):
            good = middle
        else:
            bad = middle
    return good, probes


def top_kernels(runner: StepRunner, batch: dict[str, Any], count: int = 15) -> list[dict[str, Any]]:
    """The ops with the most self time in one step (CUDA time on a GPU, CPU time otherwise)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if runner.device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        runner.step(batch)
    on_gpu = runner.device.type == "cuda"
    rows = []
    for event in prof.key_averages():
        self_us = getattr(event, "self_device_time_total", 0) if on_gpu else event.self_cpu_time_total
        rows.append({"name": event.key[:120], "self_ms": self_us / 1e3, "calls": event.count})
    rows.sort(key=lambda row: row["self_ms"], reverse=True)
    total = sum(row["self_ms"] for row in rows)
    return [{**row, "share": row["self_ms"] / total if total else 0.0} for row in rows[:count]]


class Suite:
    """Runs the sections in order under one time budget; records results and skip reasons."""

    def __init__(self, args: argparse.Namespace, shape: Shape, device: torch.device) -> None:
        self.args, self.shape, self.device = args, shape, device
        self.started = time.perf_counter()
        self.results: dict[str, Any] = {"skipped": {}}
        self.peak = args.peak_tflops or (next((p for k, p in GPU_PEAK_BF16_TFLOPS.items()
                                               if k in torch.cuda.get_device_name(device)), None)
                                         if device.type == "cuda" else None)

    def runner(self) -> StepRunner:
        return StepRunner(self.shape, self.device, precision=self.args.precision, attention=self.args.attention,
                          backbone_lr_mult=self.args.backbone_lr_mult)

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def skip(self, section: str, reason: str) -> None:
        self.results["skipped"][section] = reason
        print(f"[skip] {section}: {reason}", flush=True)

    def wanted(self, section: str, needs_s: float = 0.0) -> bool:
        if self.args.only and section not in self.args.only:
            return False
        left = self.args.budget_s - self.elapsed()
        if left < needs_s or left <= 0:
            self.skip(section, f"time budget: {max(left, 0):.0f} s of {self.args.budget_s:.0f} s left, "
                               f"about {needs_s:.0f} s needed")
            return False
        return True

    def run(self, section: str, body: Callable[[], None]) -> None:
        """Run one section; an error skips it with its reason instead of ending the suite."""
        try:
            body()
        except Exception as error:  # one failing measurement must not cost the others
            self.skip(section, f"{type(error).__name__}: {str(error).splitlines()[0][:300] if str(error) else ''}")
            if self.args.verbose:
                traceback.print_exc()
        finally:
            release(self.device)

    def rates(self, flops: int, seconds: float) -> dict[str, float | None]:
        achieved = flops / seconds / 1e12
        matmul = self.results.get("matmul", {}).get("tflops")
        return {"achieved_tflops": achieved, "mfu": achieved / self.peak if self.peak else None,
                "of_matmul": achieved / matmul if matmul else None}

    def report_step(self, label: str, batch: int, timing: dict[str, float], flops: int | None) -> dict[str, Any]:
        row = {"batch": batch, **timing}
        line = f"{label:<22} batch {batch:>4}: {timing['step_s'] * 1e3:9.1f} ms/step " \
               f"(min {timing['step_min_s'] * 1e3:.1f}, max {timing['step_max_s'] * 1e3:.1f}; first {timing['first_step_s']:.1f} s)"
        if flops:
            row.update(step_tflop=flops / 1e12, **self.rates(flops, timing["step_s"]))
            line += f", {flops / 1e12:.3f} TFLOP, {row['achieved_tflops']:.2f} TFLOP/s"
            if row["mfu"] is not None:
                line += f", MFU {row['mfu']:.1%}"
            if row["of_matmul"] is not None:
                line += f" ({row['of_matmul']:.1%} of matmul)"
        print(line, flush=True)
        return row

    # --- sections --------------------------------------------------------------------------

    def matmul(self) -> None:
        n = self.args.matmul_n
        # bf16 is the training precision on a GPU; a CPU trains in fp32 (violet_core.loop.autocast)
        dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self.results["matmul"] = rate = matmul_rate(n, self.device, dtype, iterations=self.args.matmul_iterations)
        print(f"matmul {n}^3 {rate['dtype']}: {rate['tflops']:.1f} TFLOP/s (best {rate['tflops_best']:.1f})"
              + (f", {rate['tflops'] / self.peak:.1%} of the {self.peak:.0f} TFLOP/s data-sheet peak" if self.peak else ""),
              flush=True)

    def eager(self) -> None:
        batch = self.args.batch
        runner = self.runner()
        data = synthetic_batch(self.shape, batch, self.device)
        timing = time_steps(runner, data, self.args.steps, self.args.warmup)
        flops = count_flops(runner, data)
        self.flops = {batch: flops}
        self.results["eager"] = {str(batch): self.report_step("eager", batch, timing, flops)}
        if self.wanted("profile"):
            self.run("profile", lambda: self._profile(runner, data))

    def _profile(self, runner: StepRunner, data: dict[str, Any]) -> None:
        rows = top_kernels(runner, data)
        self.results["profile"] = rows
        print("top ops by self time in one step:", flush=True)
        for row in rows[:10]:
            print(f"  {row['share']:6.1%} {row['self_ms']:9.2f} ms {row['calls']:6d}x  {row['name']}", flush=True)

    def mvm(self) -> None:
        batch = self.args.batch
        infos = cached_target_infos(self.shape.frames, self.shape.size)
        runner = self.runner()
        plain = synthetic_batch(self.shape, batch, self.device)
        none = time_steps(runner, plain, self.args.steps, self.args.warmup)
        rows = {"none": {"step_s": none["step_s"], "step_min_s": none["step_min_s"], "step_max_s": none["step_max_s"]}}
        print(f"mvm none: {none['step_s'] * 1e3:.1f} ms/step", flush=True)
        for layout, info in infos.items():
            # the same trunk with this target's head added, as the trainer builds it for one target
            runner.model.mvm = MvmObjective([info], self.shape.model.hidden).to(self.device)
            runner.optimizer = build_optimizer(runner.model, runner.optim_config)
            runner.parameters = [p for p in runner.model.parameters() if p.requires_grad]
            data = synthetic_batch(self.shape, batch, self.device, [info])
            timing = time_steps(runner, data, self.args.steps, self.args.warmup)
            overhead = timing["step_s"] / none["step_s"] - 1
            rows[layout] = {"target_shape": list(info.clip_shape), "step_s": timing["step_s"],
                            "step_min_s": timing["step_min_s"], "step_max_s": timing["step_max_s"],
                            "overhead": overhead}
            print(f"mvm {layout:<6} {str(info.clip_shape):<22}: {timing['step_s'] * 1e3:.1f} ms/step, "
                  f"{overhead:+.1%} over none", flush=True)
        self.results["mvm"] = {"batch": batch, **rows}

    def search(self) -> None:
        runner = self.runner()

        def fits(batch: int) -> bool:
            failed = False
            try:
                runner.step(synthetic_batch(self.shape, batch, self.device))
            except (torch.OutOfMemoryError, RuntimeError) as error:
                if not is_out_of_memory(error):
                    raise
                failed = True
            # outside the handler, so that the traceback's frames no longer hold the step's tensors
            runner.optimizer.zero_grad(set_to_none=True)
            release(self.device)
            print(f"  batch {batch}: {'fits' if not failed else 'out of memory'}", flush=True)
            return not failed

        best, probes = largest_batch(fits, self.args.batch, self.args.max_batch, self.args.granule)
        self.results["search"] = {"largest_batch": best, "limit": self.args.max_batch, "granule": self.args.granule,
                                  "probes": probes}
        print(f"largest batch that fits: {best} (limit {self.args.max_batch})", flush=True)
        self.largest = best
        if best and best != self.args.batch:
            # step down by a granule if the measurement itself runs out of memory (fragmentation)
            for batch in (best, best - self.args.granule):
                if batch < 1:
                    break
                try:
                    data = synthetic_batch(self.shape, batch, self.device)
                    timing = time_steps(runner, data, self.args.steps, self.args.warmup)
                    flops = count_flops(runner, data)
                except (torch.OutOfMemoryError, RuntimeError) as error:
                    if not is_out_of_memory(error):
                        raise
                    oom = True
                else:
                    oom = False
                if oom:
                    runner.optimizer.zero_grad(set_to_none=True)
                    release(self.device)
                    continue
                self.largest = batch
                self.flops[batch] = flops
                self.results.setdefault("eager", {})[str(batch)] = self.report_step("eager", batch, timing, flops)
                break

    def compiled(self, batch: int) -> None:
        runner = self.runner()
        options = {"dynamic": False}
        if self.args.compile_backend:
            options["backend"] = self.args.compile_backend
        runner.compile(**options)
        data = synthetic_batch(self.shape, batch, self.device)
        timing = time_steps(runner, data, self.args.steps, self.args.warmup)
        # the first step compiles the forward and the backward graphs; a steady step is the rest of it
        compile_s = max(0.0, timing["first_step_s"] - timing["step_s"])
        row = self.report_step(f"compiled ({options.get('backend', 'inductor')})", batch, timing,
                               self.flops.get(batch))
        row.update(compile_s=compile_s, options={k: str(v) for k, v in options.items()})
        eager = self.results.get("eager", {}).get(str(batch))
        if eager:
            row["speedup_over_eager"] = eager["step_s"] / timing["step_s"]
        print(f"  compile {compile_s:.1f} s" + (f", {row['speedup_over_eager']:.2f}x the eager step" if eager else ""),
              flush=True)
        self.results.setdefault("compiled", {})[str(batch)] = row
        self.compile_s = compile_s

    def step_consumption(self) -> dict[str, dict[str, float]]:
        """{batch: step seconds and clips/s} of the eager step at the fixed batch and at the largest
        batch, for those this run measured."""
        eager = self.results.get("eager", {})
        rows = {}
        for batch in dict.fromkeys((self.args.batch, self.largest)):
            row = eager.get(str(batch))
            if batch and row:
                rows[str(batch)] = {"step_s": row["step_s"], "clips_per_s": batch / row["step_s"],
                                    "largest": batch == self.largest}
        return rows

    def loader(self) -> None:
        import shutil
        import tempfile

        import loader_bench  # imported here: a failure skips this section only

        args, shape = self.args, self.shape
        root = Path(tempfile.mkdtemp(prefix="gpu_suite_loader_"))
        try:
            cache = loader_bench.build_cache(root, args.loader_clips, shape.frames, shape.size)
            print(f"loader cache: {cache['clips']} clips of {shape.frames} x {shape.size} px, "
                  f"{' + '.join(cache['targets'])} ({loader_bench.FEATURE_TARGET} {tuple(cache['feature_shape'])} "
                  f"{cache['feature_dtype']}); frames {cache['frames_mb']:.1f} MB stored of "
                  f"{cache['frames_raw_mb']:.1f} MB raw; written in {cache['write_s']:.1f} s "
                  f"(spec {cache['spec_s']:.1f} s)", flush=True)
            dataset = loader_bench.build_dataset(root, shape.frames, shape.size, shape.text_len, self.device)
            steps = self.step_consumption()
            rows: dict[str, Any] = {}
            for workers in args.loader_workers:
                left = args.budget_s - self.elapsed()
                if left < (0.0 if args.smoke else 10.0):
                    self.skip(f"loader.workers_{workers}",
                              f"time budget: {max(left, 0):.0f} s of {args.budget_s:.0f} s left")
                    continue
                row = loader_bench.loader_rate(dataset, args.batch, workers, self.device,
                                               timed=max(args.loader_batches, 4 * workers))
                row["ratio"] = {batch: row["clips_per_s"] / step["clips_per_s"] for batch, step in steps.items()}
                rows[str(workers)] = row
                print(loader_line(row, steps), flush=True)
            self.results["loader"] = {"cache": cache, "batch": args.batch, "step": steps, "workers": rows,
                                      **loader_verdict(rows, steps)}
            print(self.results["loader"]["verdict"], flush=True)
        finally:
            shutil.rmtree(root, ignore_errors=True)

    def teachers(self) -> None:
        from mvm_targets.teachers import runtime

        if self.args.compile_backend:
            runtime.COMPILE_OPTIONS["backend"] = self.args.compile_backend
        chosen = teacher_bench.SMOKE_TEACHERS if self.args.smoke else teacher_bench.TEACHERS
        if self.args.teachers:
            chosen = {name: chosen[name] for name in self.args.teachers}
        clips = teacher_bench.synthetic_clips(self.args.teacher_clips, self.args.teacher_frames, self.args.teacher_size)
        rows: dict[str, Any] = {"clips": self.args.teacher_clips, "frames": self.args.teacher_frames,
                                "size": self.args.teacher_size}
        for name, teacher in chosen.items():
            reason = teacher_bench.unavailable(teacher)
            left = self.args.budget_s - self.elapsed()
            if reason is None and left < (0.0 if self.args.smoke else 30.0):
                reason = f"time budget: {max(left, 0):.0f} s of {self.args.budget_s:.0f} s left"
            if reason is not None:
                self.skip(f"teachers.{name}", reason)
                continue
            try:
                rows[name] = teacher_bench.measure(teacher, self.device, clips, self.args.teacher_steps, self.rates,
                                                   lambda: self.args.budget_s - self.elapsed(), _CPU_ATTENTION_FLOPS)
            except Exception as error:  # one teacher failing (a missing package) must not cost the others
                self.skip(f"teachers.{name}", f"{type(error).__name__}: {str(error).splitlines()[0][:300] if str(error) else ''}")
                if self.args.verbose:
                    traceback.print_exc()
                continue
            finally:
                release(self.device)
            for setting, row in rows[name].items():
                print(teacher_bench.line(name, setting, row), flush=True)
        self.results["teachers"] = rows

    def execute(self) -> dict[str, Any]:
        if self.wanted("matmul"):
            self.run("matmul", self.matmul)
        self.flops: dict[int, int] = {}
        self.largest = 0
        self.compile_s = 0.0
        if self.wanted("eager"):
            self.run("eager", self.eager)
        if self.wanted("mvm"):
            self.run("mvm", self.mvm)
        if self.wanted("search"):
            self.run("search", self.search)
        # after the step sections, whose times it is compared with; before the long compile
        if self.wanted("loader", needs_s=0.0 if self.args.smoke else 30.0):
            self.run("loader", self.loader)
        # a base-sized compile takes a minute or more and cannot be cut short: start it only with time left
        if self.wanted("compiled", needs_s=0.0 if self.args.smoke else 90.0):
            self.run("compiled", lambda: self.compiled(self.args.batch))
            large = self.largest
            if not large:
                self.skip("compiled_largest", "no largest batch: the search did not run or nothing fitted")
            elif large == self.args.batch:
                self.skip("compiled_largest", f"the largest batch is the fixed batch {large}, measured above")
            elif "compiled" in self.results and self.wanted("compiled", needs_s=1.5 * self.compile_s):
                self.run("compiled_largest", lambda: self.compiled(large))
        if self.wanted("teachers", needs_s=0.0 if self.args.smoke else 60.0):
            self.run("teachers", self.teachers)
        self.results["wall_s"] = self.elapsed()
        return self.results


def loader_line(row: dict[str, Any], steps: dict[str, dict[str, float]]) -> str:
    """One worker count's printout: its clips/s and how many times the step's consumption that is."""
    noun = "worker: " if row["workers"] == 1 else "workers:"
    line = f"loader {row['workers']:>2} {noun} {row['clips_per_s']:8.1f} clips/s"
    if not steps:
        return line + " (the step was not measured in this run)"
    return line + "; " + ", ".join(f"{row['ratio'][batch]:.2f}x the step's {step['clips_per_s']:.1f} clips/s "
                                   f"at batch {batch}" for batch, step in steps.items())


def loader_verdict(rows: dict[str, dict[str, Any]], steps: dict[str, dict[str, float]]) -> dict[str, Any]:
    """The acceptance target against the best rate with worker processes: met when that rate is at least
    LOADER_TARGET_RATIO times the step's consumption at every batch measured; None when the step or the
    worker rows are missing."""
    target = f"loader >= {LOADER_TARGET_RATIO:g}x the step's consumption with workers"
    with_workers = [row for row in rows.values() if row["workers"] > 0]
    if not with_workers:
        return {"target": target, "meets_target": None, "verdict": f"{target}: not judged, no worker count ran"}
    best = max(with_workers, key=lambda row: row["clips_per_s"])
    summary = {"target": target, "target_ratio": LOADER_TARGET_RATIO, "best_workers": best["workers"],
               "best_clips_per_s": best["clips_per_s"]}
    if not steps:
        return {**summary, "meets_target": None,
                "verdict": f"{target}: not judged, the step was not measured in this run "
                           f"(best: {best['clips_per_s']:.1f} clips/s with {best['workers']} workers)"}
    meets = all(ratio >= LOADER_TARGET_RATIO for ratio in best["ratio"].values())
    ratios = ", ".join(f"{ratio:.2f}x at batch {batch}" for batch, ratio in best["ratio"].items())
    return {**summary, "meets_target": meets,
            "verdict": f"{target}: {'met' if meets else 'NOT met'} (best: {best['workers']} workers, "
                       f"{best['clips_per_s']:.1f} clips/s: {ratios})"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny model and sizes on the CPU: checks the suite runs")
    parser.add_argument("--shape", choices=sorted(SHAPES), help="model and input sizes (default base; smoke: smoke)")
    parser.add_argument("--device", help="cuda or cpu (default: cuda when available; smoke: cpu)")
    parser.add_argument("--frames", type=int, help="override the shape's frame count")
    parser.add_argument("--size", type=int, help="override the shape's frame size (a multiple of 32)")
    parser.add_argument("--batch", type=int, help="the fixed batch (default 8; smoke 2)")
    parser.add_argument("--max-batch", type=int, help="upper limit of the batch search (default 512; smoke 4)")
    parser.add_argument("--granule", type=int, help="batch search resolution (default 4; smoke 1)")
    parser.add_argument("--steps", type=int, help="timed steps per measurement (default 10; smoke 2)")
    parser.add_argument("--warmup", type=int, help="untimed steps after the first (default 3; smoke 0)")
    parser.add_argument("--matmul-n", type=int, help="matmul size (default 8192 on a GPU, 1024 on a CPU; smoke 128)")
    parser.add_argument("--matmul-iterations", type=int, default=20)
    parser.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                        help="the trainer's setting: auto is bf16 autocast on CUDA, fp32 on CPU")
    parser.add_argument("--attention", choices=("sdpa", "explicit"), default="sdpa",
                        help="explicit: the Video Swin's materialised softmax and BERT's eager attention")
    parser.add_argument("--backbone-lr-mult", type=float, default=1.0,
                        help="0 freezes the Video Swin, as the tiny CPU config does (default 1: trained)")
    parser.add_argument("--compile-backend", help="torch.compile backend (default inductor; smoke: eager)")
    parser.add_argument("--only", nargs="+",
                        choices=("matmul", "eager", "profile", "mvm", "search", "loader", "compiled", "teachers"),
                        help="run only these sections")
    parser.add_argument("--loader-workers", nargs="+", type=int,
                        help="loader worker processes to measure (default 0 4 8; smoke 0 1)")
    parser.add_argument("--loader-clips", type=int, help="clips in the loader's cache (default 64; smoke 8)")
    parser.add_argument("--loader-batches", type=int,
                        help="timed loader batches per worker count, at least 4 per worker (default 16; smoke 2)")
    parser.add_argument("--teachers", nargs="+", choices=sorted(teacher_bench.TEACHERS),
                        help="teachers to measure (default: all; smoke: a tiny tvf)")
    parser.add_argument("--teacher-clips", type=int, help="clips per compute call (default 8; smoke 1)")
    parser.add_argument("--teacher-frames", type=int, help="frames per clip (default 4; smoke 2)")
    parser.add_argument("--teacher-size", type=int, help="frame side in px (default 224; smoke 64)")
    parser.add_argument("--teacher-steps", type=int, help="timed compute calls per setting (default 3; smoke 1)")
    parser.add_argument("--budget-s", type=float, help="skip sections once this much time is spent (default 270)")
    parser.add_argument("--peak-tflops", type=float, help="device peak for MFU (default: known GPUs only)")
    parser.add_argument("--out", help="folder for gpu_suite.json (default $OUT when set)")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's; smoke: 1)")
    parser.add_argument("--verbose", action="store_true", help="print the traceback of a failed section")
    args = parser.parse_args(argv)
    # smoke: one thread, as a small model on a busy CPU spends its time waiting for descheduled threads
    defaults = dict(shape="smoke", device="cpu", batch=2, max_batch=4, granule=1, steps=2, warmup=0, matmul_n=128,
                    compile_backend="eager", budget_s=120.0, threads=1, teacher_clips=1, teacher_frames=2,
                    teacher_size=64, teacher_steps=1, loader_workers=[0, 1], loader_clips=8,
                    loader_batches=2) if args.smoke else \
        dict(shape="base", device="cuda" if torch.cuda.is_available() else "cpu", batch=8, max_batch=512, granule=4,
             steps=10, warmup=3, matmul_n=None, compile_backend=None, budget_s=270.0, threads=None, teacher_clips=8,
             teacher_frames=4, teacher_size=224, teacher_steps=3, loader_workers=[0, 4, 8], loader_clips=64,
             loader_batches=16)
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.matmul_n is None:
        args.matmul_n = 8192 if args.device.startswith("cuda") else 1024
    if args.size is not None and (args.size <= 0 or args.size % 32):
        parser.error(f"--size {args.size}: must be a positive multiple of 32 (the model's patch grid)")
    if args.smoke and args.teachers and set(args.teachers) - set(teacher_bench.SMOKE_TEACHERS):
        parser.error(f"--teachers: the smoke run measures only {', '.join(teacher_bench.SMOKE_TEACHERS)}")
    if args.teacher_size <= 0 or args.teacher_size % 32:
        parser.error(f"--teacher-size {args.teacher_size}: must be a positive multiple of 32 (the teachers' patch grid)")
    for key in ("batch", "max_batch", "granule", "steps", "matmul_n", "teacher_clips", "teacher_frames",
                "teacher_steps", "loader_clips", "loader_batches"):
        if getattr(args, key) < 1:
            parser.error(f"--{key.replace('_', '-')} must be at least 1, got {getattr(args, key)}")
    if min(args.loader_workers) < 0:
        parser.error(f"--loader-workers must be at least 0, got {min(args.loader_workers)}")
    if args.loader_clips < args.batch:
        parser.error(f"--loader-clips {args.loader_clips}: fewer than one batch (--batch {args.batch})")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: no CUDA device is available")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    shape = SHAPES[args.shape]
    shape = dataclasses.replace(shape, frames=args.frames or shape.frames, size=args.size or shape.size)
    if shape.frames > shape.model.max_frames:
        shape = dataclasses.replace(shape, model=dataclasses.replace(shape.model, max_frames=shape.frames))
    header = {
        "machine": machine(), "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "cuda": torch.version.cuda, "threads": torch.get_num_threads(),
        "allocator": os.environ.get("PYTORCH_CUDA_ALLOC_CONF"),
        "shape": {"name": args.shape, "frames": shape.frames, "size": shape.size, "text_len": shape.text_len,
                  "vocab": shape.vocab, "model": dataclasses.asdict(shape.model)},
        "precision": args.precision, "attention": args.attention, "backbone_lr_mult": args.backbone_lr_mult,
        "peak_tflops": None,
        "argv": sys.argv[1:] if argv is None else argv,
    }
    print(f"{header['device']} | torch {torch.__version__} | {args.shape}: {shape.model.video_backbone} + "
          f"{shape.model.layers} x {shape.model.hidden} fusion, {shape.frames} frames at {shape.size}^2, "
          f"{shape.text_len} text tokens | budget {args.budget_s:.0f} s", flush=True)
    suite = Suite(args, shape, device)
    header["peak_tflops"] = suite.peak
    results = {**header, **suite.execute()}
    out = args.out or os.environ.get("OUT")
    if out:
        path = Path(out) / "gpu_suite.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=2, default=str))
        print(f"wrote {path}", flush=True)
    print(f"done in {results['wall_s']:.0f} s; skipped: {sorted(results['skipped']) or 'nothing'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
