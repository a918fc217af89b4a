"""Storage codecs: bytes per clip as written, and fidelity against the targets' float32 values.

Extracts the sample video (../shared/videos, or `--videos DIR`; synthetic clips when there is none)
at T=4, S=224 with each weights-free target (hog:paper, hog:maskfeat, flow:dis, pixelnorm; pixel is
the frames set, stored as uint8) and one random-weight feature teacher at its smallest architecture
(sif:timm, Swin-T), once per storage codec that fits it, through `extract` into a temporary cache,
and reads every set back with `CacheReader` (which decodes). Per (target, codec):

- bytes per clip: what a clip adds to an lzf shard plus its share of a 64-clip shard's fixed bytes,
  fitted by the store's own shard writer (`estimate.measure_set`, the same bytes `extract` writes);
- fidelity against the float32 values the target computed before its own cast to float16 (captured
  by wrapping that cast; HOG's kernels return them directly): mean (min) cosine similarity per token
  for patch-grid features, end-point error in pixels for flow, and for the HOG image the mean error
  relative to the mean value and the largest error in units of its frame's int8 step max|x| / 127.

Depth is left out: its teachers need their weights (hundreds of MB even when random).

    python benchmarks/bench_codecs.py [--videos DIR] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA_DIR, write_json  # noqa: E402

from mvm_targets.estimate import measure_set  # noqa: E402
from mvm_targets.extract import ExtractConfig, clip_record, extract, shard_attrs  # noqa: E402
from mvm_targets.store import schema  # noqa: E402
from mvm_targets.store.codecs import CODEC_NAMES, codec_named  # noqa: E402
from mvm_targets.store.reader import CacheReader  # noqa: E402
from mvm_targets.targets import flow as flow_module  # noqa: E402
from mvm_targets.targets import patch_grid, pixel_norm  # noqa: E402
from mvm_targets.targets.build import build_targets  # noqa: E402
from mvm_targets.video.decode import DecodedClip, SamplingConfig  # noqa: E402
from mvm_targets.video.inputs import discover_inputs  # noqa: E402

SHARED_VIDEOS = Path(__file__).resolve().parents[2] / "shared" / "videos"
SAMPLING = SamplingConfig(num_frames=4, size=224)
CLIPS_PER_SHARD = 64
# ref -> (options, the module attribute that casts its float32 values to float16, or None: kernel float32)
TARGETS = {
    "hog:paper": ({}, None),
    "hog:maskfeat": ({}, None),
    "flow:dis": ({}, (flow_module, "flow_to_float16")),
    "pixelnorm": ({}, (pixel_norm, "to_float16")),
    "sif:timm": ({"model": "swin_tiny_patch4_window7_224", "weights": "random"}, (patch_grid, "to_float16")),
}


@contextlib.contextmanager
def float32_capture(module, name: str):
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


def float32_values(target, frames: np.ndarray, cast) -> np.ndarray:
    """One clip's target values before the float16 cast, shaped like its data."""
    if cast is None:
        return target.compute_float32(frames[None])[0]
    with float32_capture(*cast) as captured:
        data = target.compute(frames[None])["data"][0]
    return captured[-1].reshape(data.shape)


def fidelity(grid: str, ref: str, decoded: np.ndarray, exact: np.ndarray) -> tuple[str, dict]:
    decoded, exact = decoded.astype(np.float64), exact.astype(np.float64)
    if grid == "patch":
        norms = np.linalg.norm(decoded, axis=-1) * np.linalg.norm(exact, axis=-1)
        cosine = (decoded * exact).sum(-1) / np.where(norms > 0, norms, 1)
        return f"cos {cosine.mean():.6f} (min {cosine.min():.5f})", {"cos_mean": cosine.mean(),
                                                                      "cos_min": cosine.min()}
    if ref.startswith("flow"):
        epe = np.sqrt(((decoded - exact) ** 2).sum(axis=1))  # (T-1, S, S) px
        return f"EPE {epe.mean():.4f} px (p99 {np.percentile(epe, 99):.3f}, max {epe.max():.2f})", \
            {"epe_mean": epe.mean(), "epe_p99": np.percentile(epe, 99), "epe_max": epe.max()}
    step = np.abs(exact).max(axis=(-2, -1), keepdims=True) / 127  # the frame's int8 step
    error = np.abs(decoded - exact)
    in_steps = (error / np.where(step > 0, step, 1)).max()
    relative = error.mean() / np.abs(exact).mean()
    return f"mean abs {100 * relative:.2f} % of mean abs value, max {in_steps:.2f} int8 steps", \
        {"abs_mean_relative": relative, "max_in_int8_steps": in_steps}


def clip_folder(args: argparse.Namespace) -> tuple[Path, str]:
    videos = args.videos or (SHARED_VIDEOS if any(SHARED_VIDEOS.glob("*.mp4")) else None)
    if videos is not None:
        return videos, f"real sample video(s) in {videos}"
    from mvm_targets.synth import build_synthetic_dataset

    folder = DATA_DIR / "synthetic_codecs"
    if not (folder / "dataset.json").exists():
        build_synthetic_dataset(folder, clips=4, seed=0)
    return folder, "4 synthetic clips (112 px, upscaled)"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--videos", type=Path, help="folder of videos (default: ../shared/videos, else synthetic)")
    parser.add_argument("--json")
    args = parser.parse_args()
    started = time.perf_counter()
    folder, source = clip_folder(args)
    items = discover_inputs([folder])
    plain = {ref: build_targets([ref], options={ref.split(":")[0]: options})[0]
             for ref, (options, _) in TARGETS.items()}
    coded = {}
    for ref, (options, _) in TARGETS.items():
        spec = plain[ref].spec
        for name in CODEC_NAMES:
            if codec_named(name).problem(spec.grid.value, spec.dtype, spec.stored) is None:
                coded[ref, name] = build_targets([ref], options={ref.split(":")[0]: {**options, "codec": name}})[0]
    with tempfile.TemporaryDirectory() as temporary:
        config = ExtractConfig(cache_root=Path(temporary), dataset="bench", sampling=SAMPLING,
                               clips_per_shard=CLIPS_PER_SHARD)
        summary = extract(items, list(coded.values()), config)
        reader = CacheReader(Path(temporary), "bench", targets=[t.spec.target_id for t in coded.values()])
        clips = [reader[key] for key in reader.keys]
        rows = []
        frames_size = measure_set(schema.FRAMES_SET, [frames_record(c) for c in clips],
                                  shard_attrs(config, schema.FRAMES_SET, []), "lzf")
        rows.append({"target": "pixel (frames set)", "codec": "uint8", "bytes": frames_size.bytes_per_clip(
            CLIPS_PER_SHARD), "fidelity": "exact (the decoded frames)"})
        exact = {ref: [float32_values(plain[ref], c["frames"], cast) for c in clips]
                 for ref, (_, cast) in TARGETS.items()}
        for (ref, name), target in coded.items():
            set_id = target.spec.target_id
            default_id = coded[ref, "fp16"].spec.target_id
            records = [clip_record(as_decoded(c), set_id, {set_id: {"data": c[default_id], **extras(c, default_id)}})
                       for c in clips]
            size = measure_set(set_id, records, shard_attrs(config, set_id, [target]), "lzf")
            text, numbers = fidelity(target.spec.grid.value, ref, np.stack([c[set_id] for c in clips]),
                                     np.stack(exact[ref]))
            rows.append({"target": ref, "codec": name, "bytes": size.bytes_per_clip(CLIPS_PER_SHARD),
                         "fidelity": text, **{k: float(v) for k, v in numbers.items()}})
        reader.close()
    fp16 = {row["target"]: row["bytes"] for row in rows if row["codec"] == "fp16"}
    print(f"{source}: {len(clips)} clip(s), T={SAMPLING.num_frames}, S={SAMPLING.size}, lzf, "
          f"{CLIPS_PER_SHARD}-clip shards; extract {summary.seconds:.1f} s, all {time.perf_counter() - started:.1f} s")
    print("| target | codec | bytes per clip | vs fp16 | fidelity against float32 |")
    print("|---|---|---|---|---|")
    for row in rows:
        ratio = f"{row['bytes'] / fp16[row['target']]:.2f}x" if row["target"] in fp16 else ""
        print(f"| `{row['target']}` | {row['codec']} | {row['bytes'] / 1e3:.1f} kB | {ratio} | {row['fidelity']} |")
    write_json(args.json, {"source": source, "clips": len(clips), "rows": rows})


def frames_record(clip: dict):
    return clip_record(as_decoded(clip), schema.FRAMES_SET, {})


def as_decoded(clip: dict) -> DecodedClip:
    return DecodedClip(key=clip["key"], frames=clip["frames"], frame_indices=clip["frame_indices"],
                       timestamps=clip["timestamps"], source={})


def extras(clip: dict, set_id: str) -> dict[str, np.ndarray]:
    return {name.split("/", 1)[1]: value for name, value in clip.items() if name.startswith(f"{set_id}/")}


if __name__ == "__main__":
    main()
