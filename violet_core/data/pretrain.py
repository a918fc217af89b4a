"""The pretraining Dataset: cached clips, augmented together with their MVM targets, plus a caption.

One item, for T frames of S x S pixels and L text tokens (layout of targets: violet_core.target_info):
    video      (T, S, S, 3) uint8, the augmented clip; the training device normalises the whole batch
               (violet_core.data.device_batch, docs/method.md §1), and the training step computes
               online targets from it (violet_core.online_targets, docs/method.md §11)
    text_ids   (L,) int64 "[CLS] ... [SEP] [PAD]...", text_mask (L,) int64
    targets    key -> tensor in the training layout (key: the target reference's one file-safe spelling,
               `ref_key`, as in heads and `mvm_<key>` losses: "flow:dis" -> "flow_dis"), floats as stored (float16 stays float16 until the
               device); a target whose spec says `normalize_as_input` (such as the frames themselves)
               stays uint8 and is listed under "targets_as_input", to be normalised exactly as `video`
    targets_as_input  [key, ...]
    extras     "key/name" -> tensor (e.g. "flow_dis/max_magnitude" (T-1,) float32)
    aug        {"start", "top", "left", "flip"}: the draw that made the item (ints)
    key        str
With `device_augment`, video is the window's frames before the crop and flip, (T, Sc, Sc, 3) at the
cached size Sc, and "video_crop_px" (PENDING_CROP) holds S: the device crops and flips the whole batch
by the items' `aug` draws (violet_core.data.device_augment), giving the frames described above.
With `cpu_normalize`, the item is normalised here instead, as it used to be: video (T, 3, S, S) float32,
`normalize_as_input` targets float32 normalised, every float target float32, "targets_as_input" empty.
Augmentation: a temporal window of T frames, a grid-aligned S-px crop and a horizontal flip. The
item is the crop of the flipped window: a flip is applied to the whole window first (a target that
is recomputed on flipped frames sees the whole frame, as the stored target did) and the crop is then
taken at the mirrored position, which gives the same pixels as flipping the crop.
Every random draw comes from a generator seeded by (seed, epoch, index, draw), so an item depends on
nothing else: not on worker count, worker id or the order in which items are fetched.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from torch.utils.data import Dataset

from mvm_targets.store.reader import CacheReader
from violet_core.data.augment import check_crop_size, check_flips, crop_clip, hflip_clip, temporal_window
from violet_core.data.device_augment import PENDING_CROP
from violet_core.data.device_batch import AS_INPUT
from violet_core.data.device_batch import normalize_channels_first as _normalize_channels_first
from violet_core.data.device_batch import normalize_video
from violet_core.data.tokenizer import TextTokenizer
from violet_core.target_info import PATCH_PX, TargetInfo

logger = logging.getLogger(__name__)

# Independent streams per decision, so that switching one augmentation off leaves the others' draws
# unchanged.
_WINDOW, _CROP, _FLIP, _CAPTION = range(4)


class PretrainDataset(Dataset):
    """Cache-backed video-text pretraining items (see the module docstring for the item layout).

    Args:
        reader: a CacheReader loading every target in `infos` (those that are never stored are derived
            here from the augmented frames, by their module's `derive`).
        infos: the MVM targets, from `read_target_infos`, plus any online ones (`TargetInfo.online`):
            those are neither read nor augmented here; the training step computes them from `video`.
        tokenizer: the run's tokenizer.
        keys: the clips of this split (`split_keys`).
        num_frames: T per item, at most the cached T; 1 treats clips as images, for which targets
            that need a video (pairs, clip-level teachers) are left out.
        size: S per item, a multiple of 32 at most the cached size.
        max_text_len: L, [CLS] and [SEP] included.
        hflip_prob: probability of a horizontal flip.
        approximate_flips: mirror targets that refuse flips (their cached values, not the teacher's
            output on the mirrored clip); off, such a target with `hflip_prob` > 0 is a ConfigError.
            Targets recomputed on flipped frames run their kernels in the process that builds the
            item. numba's OpenMP layer aborts a process that forks after running parallel kernels, so
            a process that has computed such targets itself must not then start DataLoader workers
            (the trainer's main process never computes them).
        random_crop: random grid-aligned crop when S is below the cached size, else the centre crop.
        random_window: random temporal window when T is below the cached T, else the centre window.
        seed: base of every random draw.
        cpu_normalize: normalise video and `normalize_as_input` targets here, in float32 (4x the bytes
            of uint8 from here to the device); the values equal those the device computes. For
            comparisons; training normalises on the device.
        device_augment: hand over the frames of the temporal window uncropped and unflipped, with the
            crop size under PENDING_CROP, for the device to crop and flip the whole batch by the same
            draws (violet_core.data.device_augment); targets are still augmented here.
    """

    def __init__(self, reader: CacheReader, infos: list[TargetInfo], tokenizer: TextTokenizer, keys: list[str],
                 num_frames: int, size: int, max_text_len: int = 32, hflip_prob: float = 0.5,
                 random_crop: bool = True, random_window: bool = True, seed: int = 0,
                 approximate_flips: bool = False, cpu_normalize: bool = False, device_augment: bool = False) -> None:
        self.reader, self.tokenizer = reader, tokenizer
        self.keys = list(keys)
        self.num_frames, self.size, self.max_text_len = num_frames, size, max_text_len
        self.hflip_prob, self.random_crop, self.random_window = hflip_prob, random_crop, random_window
        self.approximate_flips, self.cpu_normalize = approximate_flips, cpu_normalize
        self.device_augment = device_augment
        self.seed, self.epoch = seed, 0
        self.cached_frames, self.cached_size = cached_geometry(reader)
        self._check_args()
        # A 1-frame item has no frame pairs and no clip context: such targets are left out of every
        # item, once and for all, and said once.
        kept = [i for i in infos if not (num_frames == 1 and i.needs_video)]
        self.infos = [i for i in kept if not i.online]  # read from the cache and augmented here
        self.online_infos = [i for i in kept if i.online]  # computed by the training step from "video"
        self.skipped_refs = [i.ref for i in infos if num_frames == 1 and i.needs_video]
        if self.skipped_refs:
            logger.info("%s: 1-frame items (images); leaving out the targets that need a video: %s",
                        _cache_name(reader), ", ".join(self.skipped_refs))
        self._check_keys_and_targets()
        check_flips(self.infos, self.hflip_prob, self.approximate_flips)

    def set_epoch(self, epoch: int) -> None:
        """Draws for `epoch`. A worker process has its own copy of the dataset: `BatchStream` sends the
        epoch with every index and sets it in the copy that builds the item."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index: int) -> dict[str, Any]:
        key = self.keys[index]
        clip = self.reader[key]
        derived = [i for i in self.infos if not i.stored]
        for info in derived:
            clip.pop(info.ref, None)  # derived below from the augmented frames
        stored = [i for i in self.infos if i.stored]

        start = self._offset(index, _WINDOW, self.cached_frames - self.num_frames + 1, self.random_window)
        clip = temporal_window(clip, stored, self.num_frames, start)
        window_frames = clip["frames"]
        side, wanted = check_crop_size(self.cached_size, self.size)
        if self.random_crop:
            top, left = (int(v) for v in self._rng(index, _CROP).integers(0, side - wanted + 1, size=2))
        else:
            top = left = (side - wanted) // 2
        flip = self.hflip_prob > 0 and bool(self._rng(index, _FLIP).random() < self.hflip_prob)
        if flip:
            clip = hflip_clip(clip, stored, self.approximate_flips)
        if wanted != side:
            # columns [left, left + n) of the frame are columns [side - left - n, side - left) of its mirror
            clip = crop_clip(clip, stored, top, side - left - wanted if flip else left, wanted)

        frames = torch.from_numpy(np.ascontiguousarray(window_frames if self.device_augment else clip["frames"]))
        video = normalize_video(frames) if self.cpu_normalize else frames
        captions = clip["captions"]
        caption = captions[int(self._rng(index, _CAPTION).integers(len(captions)))]
        text_ids, text_mask = self.tokenizer.encode([caption], self.max_text_len)

        targets, extras = {}, {}
        for info in self.infos:
            data = clip[info.ref] if info.stored else info.spec.derive(clip["frames"])
            targets[info.key] = target_tensor(info, data, self.cpu_normalize)
            prefix = f"{info.ref}/"  # the reader's clip speaks the reference; the batch speaks its key
            extras.update({f"{info.key}/{name[len(prefix):]}": extra_tensor(value)
                           for name, value in clip.items() if name.startswith(prefix)})
        as_input = [] if self.cpu_normalize else [i.key for i in self.infos if i.spec.normalize_as_input]
        item = {"video": video, "text_ids": text_ids[0], "text_mask": text_mask[0], "targets": targets,
                AS_INPUT: as_input, "extras": extras,
                "aug": {"start": start, "top": top, "left": left, "flip": int(flip)}, "key": key}
        if self.device_augment:
            item[PENDING_CROP] = self.size
        return item

    # -- helpers ---------------------------------------------------------------------------------

    def _rng(self, index: int, draw: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, index, draw])

    def _offset(self, index: int, draw: int, choices: int, random: bool) -> int:
        return int(self._rng(index, draw).integers(choices)) if random else (choices - 1) // 2

    def _check_args(self) -> None:
        name = _cache_name(self.reader)
        if not 1 <= self.num_frames <= self.cached_frames:
            raise ValueError(f"{name}: num_frames={self.num_frames} but the cache holds {self.cached_frames} "
                             f"frames per clip; use 1..{self.cached_frames} or extract with more frames")
        if self.size <= 0 or self.size % PATCH_PX or self.size > self.cached_size:
            raise ValueError(f"{name}: size={self.size} must be a multiple of {PATCH_PX} px no larger than the "
                             f"cached frames ({self.cached_size} px)")
        if self.max_text_len < 2:
            raise ValueError(f"max_text_len must leave room for [CLS] and [SEP], got {self.max_text_len}")
        if not 0.0 <= self.hflip_prob <= 1.0:
            raise ValueError(f"hflip_prob must be in [0, 1], got {self.hflip_prob}")
        if self.cpu_normalize and self.device_augment:
            raise ValueError("cpu_normalize hands over normalised frames; the device can crop and flip only uint8 "
                             "frames (device_augment)")

    def _check_keys_and_targets(self) -> None:
        name = _cache_name(self.reader)
        if not self.keys:
            raise ValueError(f"{name}: no keys given for the pretraining dataset")
        cached = set(self.reader.keys)
        missing = [k for k in self.keys if k not in cached]
        if missing:
            raise ValueError(f"{name}: {len(missing)} of {len(self.keys)} keys are not in the cache (or lack one of "
                             f"the reader's targets), e.g. {missing[:3]}")
        loaded = set(getattr(self.reader, "target_refs", ()))
        absent = [i.ref for i in self.infos if i.stored and i.ref not in loaded]
        if absent:
            raise ValueError(f"{name}: the reader does not load the targets {absent}; build it with "
                             f"CacheReader(..., targets=[...]) naming them")
        uncaptioned = [k for k in self.keys if not self.reader.captions.get(k)]
        if uncaptioned:
            raise ValueError(f"{name}: {len(uncaptioned)} clips have no caption, e.g. {uncaptioned[:3]}; "
                             f"pretraining needs text for every clip")


def normalize_channels_first(values: np.ndarray) -> torch.Tensor:
    """(T, 3, S, S) values in 0..255 -> (T, 3, S, S) float32 ((x / 255) - mean) / std, on the CPU: the
    device's formula (violet_core.data.device_batch)."""
    return _normalize_channels_first(torch.from_numpy(np.ascontiguousarray(values)))


def target_tensor(info: TargetInfo, data: np.ndarray, cpu_normalize: bool = False) -> torch.Tensor:
    """One clip's target values (as stored, or as its module computes them) -> its training tensor.

    A target whose spec says `normalize_as_input` stays uint8 (T, 3, S, S), to be normalised like the
    video on the device (a new tensor there, as the trainer masks the video in place); with
    `cpu_normalize` it is normalised here. Any other target: `training_layout`.
    """
    if info.spec.normalize_as_input:
        array = np.ascontiguousarray(data)
        return normalize_channels_first(array) if cpu_normalize else torch.from_numpy(array)
    return training_layout(info, data, widen=cpu_normalize)


def training_layout(info: TargetInfo, data: np.ndarray, widen: bool = True) -> torch.Tensor:
    """One clip's stored target -> its training tensor (violet_core.target_info):
    DENSE (T', C, S, S) float (C = 1 added when stored without a channel axis), PATCH (T, h*w, D)
    float, TOKEN and any "ce" target int64 ids. Floats are float32, except that a float16 target stays
    float16 unless `widen`: the device widens it (half the bytes on the way there, the same values)."""
    array = np.ascontiguousarray(data)
    if info.grid == "token" or info.loss == "ce":
        return torch.from_numpy(array.astype(np.int64))
    keep = array.dtype == np.float16 and not widen
    tensor = torch.from_numpy(array if keep else array.astype(np.float32))
    if info.grid == "dense" and tensor.ndim == 3:
        tensor = tensor.unsqueeze(1)
    return tensor


def collate_pretrain(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack items into a batch: video (B, T, S, S, 3) uint8 (or (B, T, 3, S, S) float32 from
    `cpu_normalize` items), text_ids / text_mask (B, L), targets and extras (B, ...) for the refs every
    item has (others are dropped), targets_as_input (those of the kept targets), aug ints (B,), keys list."""
    if not items:
        raise ValueError("cannot collate an empty batch")

    def common(field: str) -> dict[str, torch.Tensor]:
        names = [n for n in items[0][field] if all(n in item[field] for item in items)]
        return {n: torch.stack([item[field][n] for item in items]) for n in names}

    batch = {
        "video": torch.stack([item["video"] for item in items]),
        "text_ids": torch.stack([item["text_ids"] for item in items]),
        "text_mask": torch.stack([item["text_mask"] for item in items]),
        "targets": common("targets"),
        "extras": common("extras"),
        "aug": {n: torch.tensor([item["aug"][n] for item in items], dtype=torch.int64) for n in items[0]["aug"]},
        "keys": [item["key"] for item in items],
    }
    batch[AS_INPUT] = [ref for ref in items[0].get(AS_INPUT, ()) if ref in batch["targets"]]
    if PENDING_CROP in items[0]:
        batch[PENDING_CROP] = items[0][PENDING_CROP]  # one crop size per dataset
    return batch


def split_keys(source_dir: Path | str, split: str, reader_keys: Iterable[str]) -> list[str]:
    """The cached keys of `split`, in the order of the dataset's splits.json ({"train": [...], ...}).

    Keys listed there but not cached are skipped with one warning. Without a splits.json every cached
    key is "train" (sorted) and the other splits are empty.
    """
    cached = set(reader_keys)
    path = Path(source_dir) / "splits.json"
    if not path.is_file():
        if split != "train":
            logger.warning("%s not found: every cached clip is 'train', split %r is empty", path, split)
            return []
        return sorted(cached)
    splits = json.loads(path.read_text())
    if split not in splits:
        raise ValueError(f"{path}: no split {split!r}; it has {', '.join(sorted(splits))}")
    keys = [k for k in splits[split] if k in cached]
    skipped = [k for k in splits[split] if k not in cached]
    if skipped:
        logger.warning("%s: %d of %d %r keys are not cached and are skipped, e.g. %s",
                       path, len(skipped), len(splits[split]), split, skipped[:3])
    return keys


def cached_geometry(reader: CacheReader) -> tuple[int, int]:
    """(T, S) of the reader's cached frames."""
    if not reader.keys:
        raise ValueError(f"{_cache_name(reader)}: the cache has no clips with all the requested targets")
    sampling = reader.attrs("frames").get("sampling")
    if isinstance(sampling, dict) and "num_frames" in sampling and "size" in sampling:
        return int(sampling["num_frames"]), int(sampling["size"])
    frames = reader[reader.keys[0]]["frames"]
    return int(frames.shape[0]), int(frames.shape[1])


def _cache_name(reader: Any) -> str:
    clip_cache = getattr(reader, "clip_cache", None)
    return f"cache {clip_cache.root}" if clip_cache is not None else f"cache {type(reader).__name__}"


def extra_tensor(value: Any) -> torch.Tensor:
    """One clip's extra (e.g. a per-pair statistic) as a tensor: floats float32, integers int64."""
    array = np.ascontiguousarray(value)
    if array.dtype.kind == "f":
        return torch.from_numpy(array.astype(np.float32))
    if array.dtype.kind in "iu":
        return torch.from_numpy(array.astype(np.int64))
    return torch.from_numpy(array)
