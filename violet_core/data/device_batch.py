"""A batch on the training device: non-blocking copies, a one-batch prefetch, and the input
normalisation, which runs there on the whole uint8 batch (docs/method.md §1).

Datasets hand over frames as uint8, a quarter of the bytes of float32 through collation, worker
pipes and the host-to-device copy. On the device:

    video                       (B, T, S, S, 3) uint8 -> (B, T, 3, S, S) float32, ((x / 255) - mean) / std
    targets[ref], ref listed in (B, ...) uint8 values in 0..255, channels first (..., 3, S, S)
      batch[AS_INPUT]           -> float32, normalised exactly as the video
    other float16 targets       -> float32 (widening is exact); ids stay int64, float32 stays as is

The normalisation is the same sequence of float32 operations as the CPU path it replaces (convert,
divide by 255, subtract the mean, divide by the standard deviation), so the values are bit-identical;
the constants are tensors on the batch's device, not Python numbers, because CUDA turns a division by
a host scalar into a multiplication by its reciprocal, which may differ in the last bit.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Iterator

import torch
from torch import Tensor

from violet_core.data.device_augment import apply_pending_crop

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# batch field: the target refs whose values are frames (0..255) to be normalised like the video
AS_INPUT = "targets_as_input"


@lru_cache(maxsize=None)
def _constants(device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """(255, mean (3, 1, 1), std (3, 1, 1)) float32 on `device`, made once: building them per batch
    would be a synchronous host-to-device copy every step."""
    scale = torch.tensor(255.0, dtype=torch.float32, device=device)
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32, device=device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32, device=device).view(3, 1, 1)
    return scale, mean, std


def normalize_channels_first(values: Tensor) -> Tensor:
    """(..., 3, S, S) values in 0..255 (uint8 or float) -> (..., 3, S, S) float32 ((x / 255) - mean) / std,
    ImageNet statistics, on the device of `values`."""
    scale, mean, std = _constants(values.device)
    video = values.to(torch.float32) / scale
    return ((video - mean) / std).contiguous()


def normalize_video(frames: Tensor) -> Tensor:
    """(..., S, S, 3) uint8 frames -> (..., 3, S, S) float32, as `normalize_channels_first`."""
    return normalize_channels_first(frames.movedim(-1, -3))


def normalize_batch(batch: dict[str, Any]) -> dict[str, Any]:
    """The batch with its uint8 video and the targets listed under AS_INPUT normalised, and float16
    targets widened to float32 (module docstring). A new dict; the AS_INPUT list is consumed, and a
    video that is not uint8 is taken as normalised already, so a second call changes nothing."""
    out = dict(batch)
    video = batch.get("video")
    if isinstance(video, Tensor) and video.dtype == torch.uint8:
        out["video"] = normalize_video(video)
    as_input = set(out.pop(AS_INPUT, ()))
    if isinstance(batch.get("targets"), dict):
        out["targets"] = {ref: _target(value, ref in as_input) for ref, value in batch["targets"].items()}
    return out


def _target(value: Tensor, as_input: bool) -> Tensor:
    if as_input:
        return normalize_channels_first(value)
    if value.dtype == torch.float16:
        return value.to(torch.float32)
    return value


def move_to_device(value: Any, device: torch.device) -> Any:
    """Every tensor in `value` (nested dicts, lists, tuples) on `device`; non-blocking, so a copy from
    pinned host memory overlaps whatever the device is running."""
    if isinstance(value, Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, dict):
        return {k: move_to_device(v, device) for k, v in value.items()}
    if isinstance(value, (list, tuple)) and any(isinstance(v, Tensor) for v in value):
        return type(value)(move_to_device(v, device) for v in value)
    return value


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """`batch` copied to `device`, its frames cropped and flipped there when its dataset left that to
    the device (`apply_pending_crop`), and normalised (`normalize_batch`): what a step consumes."""
    return normalize_batch(apply_pending_crop(move_to_device(batch, device)))


def _tensors(value: Any) -> Iterator[Tensor]:
    if isinstance(value, Tensor):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)


class DevicePrefetcher:
    """Batches of `batches` on `device`, the next one already on its way.

    On CUDA each call hands over the batch copied during the previous call and starts the copy of
    the following one on a side stream, so that the copy runs while the step computes; the caller's
    stream waits for that batch's copy only. Elsewhere a batch is moved when it is asked for (on the
    CPU: nothing to do). Reading ahead takes one batch more from `batches` than was handed over;
    whoever records a data position must count the batches handed over (`BatchStream` does).
    """

    def __init__(self, batches: Iterator[dict[str, Any]], device: torch.device) -> None:
        self.batches, self.device = batches, device
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self._staged: tuple[dict[str, Any], torch.cuda.Event] | None = None

    def __iter__(self) -> "DevicePrefetcher":
        return self

    def __next__(self) -> dict[str, Any]:
        if self.stream is None:
            return move_to_device(next(self.batches), self.device)
        if self._staged is None:
            self._staged = self._stage()
        batch, copied = self._staged
        try:
            self._staged = self._stage()
        except StopIteration:
            self._staged = None
        current = torch.cuda.current_stream(self.device)
        current.wait_event(copied)
        for tensor in _tensors(batch):
            # allocated on the side stream, used on this one: the allocator must not reuse it early
            tensor.record_stream(current)
        return batch

    def _stage(self) -> tuple[dict[str, Any], torch.cuda.Event]:
        host = next(self.batches)
        with torch.cuda.stream(self.stream):
            batch = move_to_device(host, self.device)
            copied = torch.cuda.Event()
            copied.record(self.stream)
        return batch, copied
