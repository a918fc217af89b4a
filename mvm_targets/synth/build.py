"""Writes a complete synthetic video-text dataset to disk; the only module that touches the filesystem.

Layout under `out_dir` (a clip's *key* is its path without extension, e.g. `videos/clip_00000`):

    videos/clip_00000.mp4 ...  H.264 yuv420p, num_frames x size x size at fps
    captions.csv               path,caption,split
    splits.json                {"train": [keys], "val": [keys], "test": [keys]}
    retrieval.json             text-to-video retrieval on the test split
    qa_mc.jsonl / qa_oe.jsonl  multiple-choice and open-ended (one-word) QA
    ground_truth.jsonl         full ClipSpec plus per-frame object states, per clip
    dataset.json               build parameters; written last, so it marks a finished build
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .render import encode_mp4, render_clip
from .scene import TWIN_FRACTION, ClipSpec, clip_to_dict, sample_clips
from .text import caption, multiple_choice, open_ended

GENERATOR_VERSION = 1  # bump whenever the same seed would produce different files
SPLIT_FRACTIONS = {"val": 0.15, "test": 0.15}  # train gets the rest (~70%)


@dataclass(frozen=True)
class SynthSummary:
    """What `build_synthetic_dataset` did."""

    out_dir: Path
    clips: int
    seed: int
    files_written: int
    seconds: float


def dataset_manifest(clips: int, seed: int, num_frames: int, size: int, fps: int,
                     object_scale: float = 1.0) -> dict[str, Any]:
    """What `dataset.json` records for these arguments; equal manifests mean byte-identical datasets."""
    values = {"seed": seed, "clips": clips, "num_frames": num_frames, "size": size, "fps": fps}
    for name, value in values.items():
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
            raise ValueError(f"{name} must be an integer, got {value!r}")
    manifest = {"name": "synthetic", "generator_version": GENERATOR_VERSION, **{k: int(v) for k, v in values.items()}}
    if object_scale != 1.0:  # only when set, so datasets built before the option keep their manifest
        manifest["object_scale"] = float(object_scale)
    return manifest


def _check_args(out_dir: Path, manifest: dict[str, Any]) -> None:
    if manifest["clips"] < 1:
        raise ValueError(f"clips must be >= 1, got {manifest['clips']}")
    if manifest["size"] < 32 or manifest["size"] % 2:
        raise ValueError(f"size must be even and >= 32 (yuv420p needs even sides), got {manifest['size']}")
    if manifest["num_frames"] < 2:
        raise ValueError(f"num_frames must be >= 2 (motion needs two frames), got {manifest['num_frames']}")
    if manifest["fps"] < 1:
        raise ValueError(f"fps must be >= 1, got {manifest['fps']}")
    if not 0.25 <= manifest.get("object_scale", 1.0) <= 3.0:
        raise ValueError(f"object_scale must be in [0.25, 3], got {manifest['object_scale']}")
    if manifest["seed"] < 0:
        raise ValueError(f"seed must be >= 0, got {manifest['seed']}")
    if out_dir.exists():
        if not out_dir.is_dir():
            raise ValueError(f"out_dir {out_dir} exists and is not a directory")
        if any(out_dir.iterdir()):
            try:
                differences = built_differences(out_dir, manifest)
            except ValueError:
                differences = None
            if differences != []:
                params = ", ".join(f"{k}={v}" for k, v in manifest.items() if k != "name")
                raise ValueError(f"out_dir {out_dir} is not empty and is not a synthetic dataset built with the "
                                 f"same parameters ({params}); use an empty or new directory")


def built_differences(out_dir: Path, manifest: dict[str, Any]) -> list[str] | None:
    """How the dataset already in `out_dir` differs from `manifest`, e.g. ["clips: 4 there, 16 asked"].

    [] means the same build; None means `out_dir` holds no `dataset.json` (not a synthetic build).
    Raises ValueError when `dataset.json` is unreadable.
    """
    recorded = out_dir / "dataset.json"
    if not recorded.is_file():
        return None
    try:
        previous = json.loads(recorded.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"{recorded}: unreadable dataset manifest ({error})") from None
    return [f"{key}: {previous.get(key)} there, {manifest.get(key)} asked"
            for key in sorted(set(previous) | set(manifest)) if previous.get(key) != manifest.get(key)]


def _plan_groups(clips: int, rng: np.random.Generator) -> list[int]:
    """Group sizes in generation order: 2 for a motion-twin pair, 1 for a lone clip."""
    pairs = max(1, round(clips * TWIN_FRACTION / 2)) if clips >= 2 else 0
    sizes = [2] * pairs + [1] * (clips - 2 * pairs)
    return [sizes[i] for i in rng.permutation(len(sizes))]


def _assign_splits(groups: list[list[int]], clips: int, rng: np.random.Generator) -> list[str]:
    """Split name per clip, ~70/15/15, every split non-empty when clips >= 3.

    Twins go to the same split whenever the counts allow, so test retrieval contains hard negatives
    that differ only in motion.
    """
    targets = {s: (max(1, round(f * clips)) if clips >= 3 else 0) for s, f in SPLIT_FRACTIONS.items()}
    if clips == 2:
        targets["test"] = 1
    split = ["train"] * clips
    counts = {"val": 0, "test": 0}
    for gi in rng.permutation(len(groups)):
        for name in ("test", "val"):
            if counts[name] + len(groups[gi]) <= targets[name]:
                for i in groups[gi]:
                    split[i] = name
                counts[name] += len(groups[gi])
                break
    # Only pairs were left when a split still needed one clip: break a pair rather than leave it short.
    for name in ("test", "val"):
        while counts[name] < targets[name]:
            donor = max(i for i in range(clips) if split[i] == "train")
            split[donor] = name
            counts[name] += 1
    return split


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r, separators=(",", ":")) + "\n" for r in rows))


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n")


def build_synthetic_dataset(out_dir: Path, clips: int = 64, seed: int = 0, num_frames: int = 24,
                            size: int = 112, fps: int = 8, object_scale: float = 1.0) -> SynthSummary:
    """Render `clips` captioned clips of coloured shapes over drifting textures into `out_dir`.

    `object_scale` multiplies the shapes' sizes (default radius 8-11 % of the frame side); small
    CPU-scale students learn from larger objects much sooner (docs/performance.md).

    Output is byte-identical for identical arguments. Rebuilding into a directory that holds a
    finished build with the same arguments is allowed; any other non-empty directory is refused.

    Raises:
        ValueError: bad argument, or `out_dir` holds something other than this exact dataset.
    """
    start = time.perf_counter()
    out_dir = Path(out_dir)
    manifest = dataset_manifest(clips, seed, num_frames, size, fps, object_scale)
    _check_args(out_dir, manifest)
    clips, seed = manifest["clips"], manifest["seed"]

    rng = np.random.default_rng([seed, 0])
    specs: list[ClipSpec] = []
    groups: list[list[int]] = []
    for g, group_size in enumerate(_plan_groups(clips, rng)):
        # One generator per group keeps a group's content independent of how the others were drawn.
        group_rng = np.random.default_rng([seed, 1, g])
        members = sample_clips(group_rng, len(specs), num_frames, size, twin=group_size == 2,
                               twin_group=g if group_size == 2 else None, object_scale=object_scale)
        groups.append([c.index for c in members])
        specs.extend(members)
    splits = _assign_splits(groups, clips, rng)

    (out_dir / "videos").mkdir(parents=True, exist_ok=True)
    keys = [f"videos/clip_{c.index:05d}" for c in specs]
    captions = [caption(c) for c in specs]
    for key, clip in zip(keys, specs):
        encode_mp4(render_clip(clip), out_dir / f"{key}.mp4", fps)

    with open(out_dir / "captions.csv", "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["path", "caption", "split"])
        writer.writerows([f"{k}.mp4", c, s] for k, c, s in zip(keys, captions, splits))
    _write_json(out_dir / "splits.json",
                {name: [k for k, s in zip(keys, splits) if s == name] for name in ("train", "val", "test")})
    test = [i for i, s in enumerate(splits) if s == "test"]
    _write_json(out_dir / "retrieval.json", {"split": "test", "videos": [keys[i] for i in test],
                                             "captions": [captions[i] for i in test],
                                             "caption_to_video": list(range(len(test)))})
    mc, oe, truth = [], [], []
    for key, clip, split, text in zip(keys, specs, splits, captions):
        head = {"key": key, "split": split}
        mc += [{**head, **q} for q in multiple_choice(clip, np.random.default_rng([seed, 2, clip.index]))]
        oe += [{**head, **q} for q in open_ended(clip)]
        truth.append({**head, "caption": text, **clip_to_dict(clip)})
    _write_jsonl(out_dir / "qa_mc.jsonl", mc)
    _write_jsonl(out_dir / "qa_oe.jsonl", oe)
    _write_jsonl(out_dir / "ground_truth.jsonl", truth)
    _write_json(out_dir / "dataset.json", manifest)

    return SynthSummary(out_dir=out_dir, clips=clips, seed=seed, files_written=clips + 7,
                        seconds=time.perf_counter() - start)
