"""Storage codecs: bytes per clip as written, and fidelity against the targets' float32 values.

Extracts the sample video (../shared/videos, or `--videos DIR`; synthetic clips when there is none)
at T=4, S=224 with each weights-free target (hog:paper, hog:maskfeat, flow:dis, pixelnorm; pixel is
the frames set, stored as uint8) and one random-weight feature teacher at its smallest architecture
(sif:timm, Swin-T), once per storage codec that fits it, through `extract` into a temporary cache,
and reads every set back with `CacheReader` (which decodes). Per (target, codec):

- bytes per clip: what a clip adds to an lzf shard plus its share of a 64-clip shard's fixed bytes,
  fitted by the store's own shard writer (`estimate.measure_set`, the same bytes `extract` writes);
- fidelity against the float32 values the target computed before its own cast to float16 (captured
  by wrapping that cast: the teacher runtime's `run_batched` for teachers, the float16 helpers for
  flow and pixelnorm; HOG's kernels return them directly): mean (min) cosine similarity per token
  and the mean error relative to the mean value for patch-grid features, end-point error in pixels
  for flow, for other dense maps the mean error relative to the mean value and the largest error in
  units of its frame's int8 step max|x| / 127, and for integer targets (token ids) the share of
  values read back exactly.

Depth is left out here: `bench_storage.py` measures it (and every other paper target) with
random-weight teachers at the paper's architectures, using the helpers of this file.

    python benchmarks/bench_codecs.py [--videos DIR] [--clips N] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA_DIR, write_json  # noqa: E402

from mvm_targets.estimate import measure_set  # noqa: E402
from mvm_targets.extract import ExtractConfig, clip_record, extract, shard_attrs  # noqa: E402
from mvm_targets.store import schema  # noqa: E402
from mvm_targets.store.codecs import CODEC_NAMES, codec_named  # noqa: E402
from mvm_targets.store.reader import CacheReader  # noqa: E402
from mvm_targets.targets import flow as flow_module  # noqa: E402
from mvm_targets.targets import pixel_norm  # noqa: E402
from mvm_targets.targets.build import build_targets  # noqa: E402
from mvm_targets.targets.pixel import channels_first  # noqa: E402
from mvm_targets.video.decode import DecodedClip, SamplingConfig  # noqa: E402
from mvm_targets.video.inputs import discover_inputs  # noqa: E402

SHARED_VIDEOS = Path(__file__).resolve().parents[2] / "shared" / "videos"
SAMPLING = SamplingConfig(num_frames=4, size=224)
CLIPS_PER_SHARD = 64
COMPRESSION = "lzf"  # the store's default (ExtractConfig.compression)
PIXEL_ROW = "pixel (frames set)"
# Where a target's float32 values come from, before its cast to the stored dtype:
KERNEL = None  # `target.compute_float32` (HOG's kernels)
TEACHER = "teacher"  # the teacher runtime's `run_batched`, which casts on the device
STORED = "stored"  # integer targets (token ids): the computed values are the exact ones
# ref -> (options, where its float32 values come from: KERNEL, TEACHER, STORED or (module, cast function name))
TARGETS: dict[str, tuple[dict[str, Any], Any]] = {
    "hog:paper": ({}, KERNEL),
    "hog:maskfeat": ({}, KERNEL),
    "flow:dis": ({}, (flow_module, "flow_to_float16")),
    "pixelnorm": ({}, (pixel_norm, "to_float16")),
    "sif:timm": ({"model": "swin_tiny_patch4_window7_224", "weights": "random"}, TEACHER),
}


@contextlib.contextmanager
def float32_capture(module: Any, name: str) -> Iterator[list[np.ndarray]]:
    """Record the float32 array handed to `module.name` (a target's cast to float16) while inside."""
    captured: list[np.ndarray] = []
    original = getattr(module, name)

    def spy(values, *args, **kwargs):
        captured.append(np.array(values, dtype=np.float32, copy=True))
        return original(values, *args, **kwargs)

    setattr(module, name, spy)
    try:
        yield captured
    finally:
        setattr(module, name, original)


@contextlib.contextmanager
def teacher_float32_capture() -> Iterator[list[np.ndarray]]:
    """Record, while inside, what each `run_batched` call of the teacher runtime computes in float32.

    Teachers ask `run_batched` for their stored dtype (float16), cast on the device. The spy runs the
    same call with `out_dtype=float32`, keeps a copy, and returns it cast to the dtype asked for: on
    the CPU that cast rounds exactly as the device cast does (to nearest even), so the target's
    output is unchanged. Modules that imported the function by name are patched too.
    """
    import torch

    from mvm_targets.teachers import runtime

    captured: list[np.ndarray] = []
    original = runtime.run_batched

    def spy(fn, inputs, *args, out_dtype: torch.dtype = torch.float32, **kwargs):
        values = original(fn, inputs, *args, out_dtype=torch.float32, **kwargs)
        captured.append(values.numpy().copy())
        return values.to(out_dtype)

    holders = [module for name, module in list(sys.modules.items())
               if name.startswith("mvm_targets") and getattr(module, "run_batched", None) is original]
    for module in holders:
        module.run_batched = spy
    try:
        yield captured
    finally:
        for module in holders:
            module.run_batched = original


def float32_values(target: Any, frames: np.ndarray, source: Any) -> np.ndarray:
    """One clip's (T, S, S, 3) uint8 frames -> its target values before the cast to the stored dtype,
    shaped like its data (`source`: KERNEL, TEACHER, STORED or (module, cast function name))."""
    if source is KERNEL:
        return target.compute_float32(frames[None])[0]
    if source == STORED:
        return target.compute(frames[None])["data"][0]
    with (teacher_float32_capture() if source == TEACHER else float32_capture(*source)) as captured:
        data = target.compute(frames[None])["data"][0]
    return captured[-1].reshape(data.shape)


def fidelity(grid: str, ref: str, decoded: np.ndarray, exact: np.ndarray) -> tuple[str, dict[str, float]]:
    """What was read back (`decoded`) against the exact values, both (clips, *clip_shape): a sentence
    and its numbers (see the module docstring for which measure each kind of target gets)."""
    if exact.dtype.kind in "ui":
        equal = float((decoded == exact).mean())
        return (f"exact ({exact.size} ids)" if equal == 1 else f"{100 * equal:.4f} % of ids exact"), \
            {"equal_fraction": equal}
    decoded, exact = decoded.astype(np.float64), exact.astype(np.float64)
    error = np.abs(decoded - exact)
    if ref.startswith("flow"):
        epe = np.sqrt(((decoded - exact) ** 2).sum(axis=1))  # (T-1, S, S) px
        return f"EPE {epe.mean():.4f} px (p99 {np.percentile(epe, 99):.3f}, max {epe.max():.2f})", \
            {"epe_mean": float(epe.mean()), "epe_p99": float(np.percentile(epe, 99)), "epe_max": float(epe.max())}
    relative = float(error.mean() / np.abs(exact).mean())
    if grid == "patch":
        norms = np.linalg.norm(decoded, axis=-1) * np.linalg.norm(exact, axis=-1)
        cosine = (decoded * exact).sum(-1) / np.where(norms > 0, norms, 1)
        return f"cos {cosine.mean():.6f} (min {cosine.min():.5f}), mean abs {100 * relative:.2f} % of mean abs value", \
            {"cos_mean": float(cosine.mean()), "cos_min": float(cosine.min()), "abs_mean_relative": relative}
    step = np.abs(exact).max(axis=(-2, -1), keepdims=True) / 127  # the frame's int8 step
    in_steps = float((error / np.where(step > 0, step, 1)).max())
    return f"mean abs {100 * relative:.2f} % of mean abs value, max {in_steps:.2f} int8 steps", \
        {"abs_mean_relative": relative, "max_in_int8_steps": in_steps}


def clip_folder(videos: Path | None) -> tuple[Path, str]:
    """The videos to measure (`videos`, else ../shared/videos, else synthetic clips) and a description."""
    videos = videos or (SHARED_VIDEOS if any(SHARED_VIDEOS.glob("*.mp4")) else None)
    if videos is not None:
        return videos, f"real sample video(s) in {videos}"
    from mvm_targets.synth import build_synthetic_dataset

    folder = DATA_DIR / "synthetic_codecs"
    if not (folder / "dataset.json").exists():
        build_synthetic_dataset(folder, clips=4, seed=0)
    return folder, "synthetic clips (112 px, upscaled)"


def build_coded(table: Mapping[str, tuple[dict[str, Any], Any]]) -> tuple[dict[str, Any], dict[tuple[str, str], Any]]:
    """The targets of `table` as built with their options ({ref: target}), and once per storage codec
    that fits each ({(ref, codec name): target}, the default codec included)."""
    plain = {ref: build_targets([ref], options={ref.split(":")[0]: options})[0] for ref, (options, _) in table.items()}
    coded = {}
    for ref, (options, _) in table.items():
        spec = plain[ref].spec
        for name in CODEC_NAMES:
            if codec_named(name).problem(spec.grid.value, spec.dtype, spec.stored) is None:
                coded[ref, name] = build_targets([ref], options={ref.split(":")[0]: {**options, "codec": name}})[0]
    return plain, coded


@dataclass
class CodecMeasurement:
    rows: list[dict[str, Any]]  # the frames row first, then one per (target, codec)
    clips: int
    extract_seconds: float


def measure_codecs(items: Sequence[Any], table: Mapping[str, tuple[dict[str, Any], Any]],
                   other_compressions: Sequence[str] = ()) -> CodecMeasurement:
    """Extract `items` with every target of `table` once per codec that fits it into a temporary
    cache, read everything back with `CacheReader`, and measure bytes per clip and fidelity.

    Each row: target, codec, set_id, bytes (per clip, `COMPRESSION`, `CLIPS_PER_SHARD`-clip shards),
    `bytes_<name>` for each of `other_compressions` (the same shards compressed so instead, e.g.
    "gzip"), fidelity (a sentence) and its numbers. The frames row also checks that the `pixel`
    target, which the reader derives from the frames, is the frames bit for bit.
    """
    plain, coded = build_coded(table)
    with tempfile.TemporaryDirectory() as temporary:
        config = ExtractConfig(cache_root=Path(temporary), dataset="bench", sampling=SAMPLING,
                               clips_per_shard=CLIPS_PER_SHARD, compression=COMPRESSION)
        summary = extract(items, list(coded.values()), config)
        reader = CacheReader(Path(temporary), "bench", targets=[t.spec.target_id for t in coded.values()] + ["pixel"])
        clips = [reader[key] for key in reader.keys]
        reader.close()
    if not clips:
        raise SystemExit(f"no clip could be extracted ({summary.failed} failed): nothing to measure")

    def sizes(set_id: str, records: list, targets: list) -> dict[str, float]:
        attrs = shard_attrs(config, set_id, targets)
        bytes_for = {name: measure_set(set_id, records, attrs, name).bytes_per_clip(CLIPS_PER_SHARD)
                     for name in (COMPRESSION, *other_compressions)}
        return {"bytes": bytes_for.pop(COMPRESSION), **{f"bytes_{name}": size for name, size in bytes_for.items()}}

    pixel_exact = all(np.array_equal(c["pixel"], channels_first(c["frames"])) for c in clips)
    rows: list[dict[str, Any]] = [{
        "target": PIXEL_ROW, "codec": "uint8", "set_id": schema.FRAMES_SET,
        **sizes(schema.FRAMES_SET, [frames_record(c) for c in clips], []),
        "fidelity": "exact (the decoded frames; `pixel` read back equals them)" if pixel_exact
        else "`pixel` read back DIFFERS from the frames", "equal_fraction": 1.0 if pixel_exact else 0.0}]
    exact = {ref: np.stack([float32_values(plain[ref], c["frames"], source) for c in clips])
             for ref, (_, source) in table.items()}
    for (ref, name), target in coded.items():
        set_id = target.spec.target_id
        default_id = coded[ref, "fp16"].spec.target_id
        records = [clip_record(as_decoded(c), set_id, {set_id: {"data": c[default_id], **extras(c, default_id)}})
                   for c in clips]
        text, numbers = fidelity(target.spec.grid.value, ref, np.stack([c[set_id] for c in clips]), exact[ref])
        rows.append({"target": ref, "codec": name, "set_id": set_id, **sizes(set_id, records, [target]),
                     "fidelity": text, **numbers})
    return CodecMeasurement(rows, len(clips), summary.seconds)


def input_items(videos: Path | None, clips: int | None) -> tuple[list[Any], str]:
    """The first `clips` inputs (all when None) of `clip_folder(videos)`, and their description."""
    folder, source = clip_folder(videos)
    items = discover_inputs([folder])
    return (items if clips is None else items[:clips]), source


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--videos", type=Path, help="folder of videos (default: ../shared/videos, else synthetic)")
    parser.add_argument("--clips", type=int, help="measure only the first N videos (default: all)")
    parser.add_argument("--json")
    args = parser.parse_args()
    started = time.perf_counter()
    items, source = input_items(args.videos, args.clips)
    measured = measure_codecs(items, TARGETS)
    rows = measured.rows
    fp16 = {row["target"]: row["bytes"] for row in rows if row["codec"] == "fp16"}
    print(f"{source}: {measured.clips} clip(s), T={SAMPLING.num_frames}, S={SAMPLING.size}, {COMPRESSION}, "
          f"{CLIPS_PER_SHARD}-clip shards; extract {measured.extract_seconds:.1f} s, "
          f"all {time.perf_counter() - started:.1f} s")
    print("| target | codec | bytes per clip | vs fp16 | fidelity against float32 |")
    print("|---|---|---|---|---|")
    for row in rows:
        ratio = f"{row['bytes'] / fp16[row['target']]:.2f}x" if row["target"] in fp16 else ""
        print(f"| `{row['target']}` | {row['codec']} | {row['bytes'] / 1e3:.1f} kB | {ratio} | {row['fidelity']} |")
    write_json(args.json, {"source": source, "clips": measured.clips, "rows": rows})


def frames_record(clip: dict[str, Any]):
    return clip_record(as_decoded(clip), schema.FRAMES_SET, {})


def as_decoded(clip: dict[str, Any]) -> DecodedClip:
    return DecodedClip(key=clip["key"], frames=clip["frames"], frame_indices=clip["frame_indices"],
                       timestamps=clip["timestamps"], source={})


def extras(clip: dict[str, Any], set_id: str) -> dict[str, np.ndarray]:
    return {name.split("/", 1)[1]: value for name, value in clip.items() if name.startswith(f"{set_id}/")}


if __name__ == "__main__":
    main()
