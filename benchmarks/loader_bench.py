"""The GPU suite's loader section: clips/s the pretraining loader delivers to the device, per worker count.

The cache is written without decoding anything (mvm_targets/cache_frames.py), so this runs on a host
without PyAV, OpenCV, numba or scikit-image:
  - frames: `clips` clips of T frames at S x S, uint8: a smooth gradient drifting over each clip, a disc
    moving across it and fine texture below a horizon, so that lzf compresses them like video, between
    flat shapes and noise (stored against raw size is reported: about half);
  - one caption per clip;
  - `sif`, stored: the layout of the paper's Swin-B teacher feature, (T, (S/32)^2, 1024) float16, under
    sif's real spec (built without weights). Its values are stand-ins (normal draws): the loader reads,
    crops and batches them without looking at them, so only their layout and dtype count;
  - `pixel`, derived from the frames by its module, never stored.
The loader is the trainer's: `PretrainDataset` + `collate_pretrain` through `BatchStream` (one run-long
DataLoader with persistent workers, pinned memory on CUDA, the copy to the device one batch ahead and the
normalisation there), with the trainer's default data settings (no flip, the crop and window draws on the
device on CUDA as `data.augment_on: auto` does). A worker count's rate is clips handed to the caller per
second over `timed` batches, after warm-up batches that start the workers and drain what they read
ahead while starting (3 per worker), so the rate is the steady one.
"""

from __future__ import annotations

import gc
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from common import synchronize
from mvm_targets.cache_frames import cache_decoded_clips
from mvm_targets.store.reader import CacheReader
from mvm_targets.targets.registry import build_without_weights
from mvm_targets.targets.spec import TargetSpec
from mvm_targets.video.decode import DecodedClip
from violet_core.batching import BatchStream
from violet_core.config import DataConfig, augments_on_device
from violet_core.data.pretrain import PretrainDataset, collate_pretrain
from violet_core.data.tokenizer import train_wordpiece
from violet_core.distributed import Dist
from violet_core.target_info import read_target_infos

DATASET = "loader_bench"
FEATURE_TARGET = "sif"  # the paper's winning target: Swin-B IN-22K last-stage features, 1024 wide
TARGETS = (FEATURE_TARGET, "pixel")
ORIGIN = "synthetic frames drawn by benchmarks/loader_bench.py (gradients and moving discs)"
WORDS = ("a", "red", "blue", "green", "ball", "disc", "moves", "slowly", "quickly", "left", "right", "across",
         "over", "the", "dark", "bright", "sky", "field", "then", "stops")


def synthetic_frames(rng: np.random.Generator, frames: int, size: int) -> np.ndarray:
    """(T, S, S, 3) uint8: a two-colour gradient drifting over the clip and a disc moving across it."""
    position = np.arange(size, dtype=np.float32) / size
    y, x = position[:, None], position[None, :]
    t = np.arange(frames, dtype=np.float32)[:, None, None] / max(frames, 1)
    angle, drift = rng.uniform(0, np.pi), rng.uniform(0.2, 0.6)
    ramp = (np.cos(angle) * x + np.sin(angle) * y + drift * t) % 1.0  # (T, S, S), in [0, 1)
    low, high = rng.uniform(20, 235, size=(2, 3)).astype(np.float32)
    video = low + ramp[..., None] * (high - low)  # (T, S, S, 3)
    start, velocity = rng.uniform(0.2, 0.8, size=2), rng.uniform(-0.4, 0.4, size=2)
    radius = rng.uniform(0.08, 0.2)
    centre_y = start[0] + velocity[0] * t
    centre_x = start[1] + velocity[1] * t
    inside = (y - centre_y) ** 2 + (x - centre_x) ** 2 < radius ** 2  # (T, S, S)
    video[inside] = rng.uniform(0, 255, size=3)
    # texture below a horizon (grass, a crowd): fine noise that lzf cannot shorten, as in real footage,
    # while the smooth part above compresses like a cartoon
    horizon = int(size * rng.uniform(0.4, 0.7))
    video[:, horizon:] += rng.uniform(-12, 12, size=video[:, horizon:].shape).astype(np.float32)
    return np.clip(np.round(video), 0, 255).astype(np.uint8)


def synthetic_caption(rng: np.random.Generator) -> str:
    return " ".join(rng.choice(WORDS, size=int(rng.integers(5, 12))))


class StandInFeatures:
    """A `Target` with the feature target's real spec whose values are normal draws of its layout."""

    def __init__(self, spec: TargetSpec, seed: int = 0) -> None:
        self.spec, self.rng = spec, np.random.default_rng(seed)

    def compute(self, frames: np.ndarray) -> dict[str, np.ndarray]:
        """(B, T, S, S, 3) uint8 -> {"data": (B, *clip_shape(T, S)) float16}."""
        batch, count, size = frames.shape[:3]
        shape = (batch, *self.spec.clip_shape(count, size))
        return {"data": self.rng.standard_normal(shape, dtype=np.float32).astype(np.float16)}


def synthetic_clips(count: int, frames: int, size: int, seed: int) -> Iterator[tuple[DecodedClip, str]]:
    rng = np.random.default_rng(seed)
    for index in range(count):
        clip = DecodedClip(key=f"clip{index:05d}", frames=synthetic_frames(rng, frames, size),
                           frame_indices=np.arange(frames), timestamps=np.arange(frames) / 8.0,
                           source={"synthetic": True})
        yield clip, synthetic_caption(rng)


def build_cache(root: Path, clips: int, frames: int, size: int, seed: int = 0) -> dict[str, Any]:
    """Write the benchmark's cache under `root`; returns what it took (seconds, stored and raw MB)."""
    started = time.perf_counter()
    feature = StandInFeatures(build_without_weights(FEATURE_TARGET).spec, seed)
    spec_s = time.perf_counter() - started
    drawn = list(synthetic_clips(clips, frames, size, seed))
    clip_cache = cache_decoded_clips([clip for clip, _ in drawn], {clip.key: [caption] for clip, caption in drawn},
                                     root, DATASET, targets=[feature], origin=ORIGIN)

    def stored_mb(folder: Path) -> float:
        return sum(p.stat().st_size for p in folder.glob("shard-*.h5")) / 1e6

    return {"clips": clips, "frames": frames, "size": size, "targets": list(TARGETS),
            "feature_shape": list(feature.spec.clip_shape(frames, size)), "feature_dtype": feature.spec.dtype,
            "spec_s": spec_s, "write_s": time.perf_counter() - started - spec_s,
            "frames_mb": stored_mb(clip_cache.frames.directory),
            "frames_raw_mb": clips * frames * size * size * 3 / 1e6,
            "feature_mb": stored_mb(clip_cache.target_set(feature.spec.target_id).directory)}


def build_dataset(root: Path, frames: int, size: int, text_len: int, device: torch.device) -> PretrainDataset:
    """The trainer's dataset over the benchmark's cache: the data defaults, without flips (as the base
    config: sif refuses them), crop and window draws on the device on CUDA (`data.augment_on: auto`)."""
    reader = CacheReader(root, DATASET, list(TARGETS))
    infos = read_target_infos(reader, list(TARGETS))
    tokenizer = train_wordpiece([c for k in reader.keys for c in reader.captions[k]], vocab_size=200)
    data = DataConfig(num_frames=frames, size=size, max_text_len=text_len, hflip_prob=0.0)
    return PretrainDataset(reader, infos, tokenizer, reader.keys, frames, size, text_len, data.hflip_prob,
                           data.random_crop, device_augment=augments_on_device(data, device.type))


def loader_rate(dataset: PretrainDataset, batch: int, workers: int, device: torch.device, timed: int,
                seed: int = 0) -> dict[str, float]:
    """Clips/s `BatchStream` hands over with `workers` worker processes: `timed` batches after
    max(1, 3 x workers) warm-up batches (the workers' start and what they read ahead meanwhile)."""
    stream = BatchStream(dataset, collate_pretrain, batch, seed, Dist(), device, num_workers=workers)
    warmup = max(1, 3 * workers)
    try:
        started = time.perf_counter()
        for _ in range(warmup):
            next(stream)
        synchronize(device)
        warm = time.perf_counter()
        for _ in range(timed):
            next(stream)
        synchronize(device)
        seconds = time.perf_counter() - warm
    finally:
        del stream  # its loader's iterator ends the worker processes
        gc.collect()
    return {"workers": workers, "clips_per_s": timed * batch / seconds, "batches": timed, "seconds": seconds,
            "warmup_batches": warmup, "warmup_s": warm - started}
