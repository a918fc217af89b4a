"""Shared plumbing of the feature targets on the 32-px patch grid (`sif`, `mmf`).

A feature teacher sees each frame at its own input size and returns a native grid of feature
vectors (7 x 7 for Swin or ResNet-50 at 224, 14 x 14 for a /16 ViT). VIOLETv2 regresses one vector
per 32-px patch of the S x S frame, an (S/32) x (S/32) grid, so the native grid is resampled onto
it: unchanged when equal, adaptive average pooling when the native grid is an integer multiple
(each patch averages the teacher cells it covers exactly), bilinear interpolation otherwise (no
exact cell correspondence exists). The rule is fixed here so that both targets record it alike.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Callable, Protocol, Sequence, TypeVar

import numpy as np
import torch
import torch.nn.functional as F

from mvm_targets.targets.spec import PATCH_PX, TargetSpec
from mvm_targets.teachers import runtime
from mvm_targets.teachers.weights import sha256_of

REFERENCE_SIZE = 224  # the paper's frame size; grid notes spell out the resampling at this S
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ModuleT = TypeVar("ModuleT", bound=torch.nn.Module)


def patch_grid_side(size: int) -> int:
    """S -> S / 32, the side of the patch grid; S must be a positive multiple of 32."""
    if size <= 0 or size % PATCH_PX:
        raise ValueError(f"feature targets need the frame size S to be a positive multiple of {PATCH_PX} "
                         f"(one vector per {PATCH_PX}-px patch), got S={size}")
    return size // PATCH_PX


def patch_clip_shape(num_frames: int, size: int, dim: int) -> tuple[int, int, int]:
    """One clip's data shape: (T, (S/32)**2, D)."""
    return (num_frames, patch_grid_side(size) ** 2, dim)


class PatchClipShape:
    """`clip_shape` for a D-dimensional feature target; a class, not a lambda, so targets pickle."""

    def __init__(self, dim: int) -> None:
        self.dim = dim

    def __call__(self, num_frames: int, size: int) -> tuple[int, int, int]:
        return patch_clip_shape(num_frames, size, self.dim)


def resample_method(native: Sequence[int], grid: Sequence[int]) -> str:
    """How a native (h, w) grid reaches the patch grid: "identity", "avg-pool" or "bilinear"."""
    (h, w), (gh, gw) = native, grid
    if (h, w) == (gh, gw):
        return "identity"
    if h % gh == 0 and w % gw == 0:
        return "avg-pool"
    return "bilinear"


def grid_note(native: Sequence[int]) -> str:
    """What the spec records, e.g. "14x14 -> S/32 x S/32 (at S=224: 14x14 -> 7x7 avg-pool)"."""
    side = REFERENCE_SIZE // PATCH_PX
    h, w = native
    return (f"{h}x{w} -> S/32 x S/32 (at S={REFERENCE_SIZE}: {h}x{w} -> {side}x{side} "
            f"{resample_method(native, (side, side))}; avg-pool for integer ratios, else bilinear)")


def to_patch_grid(features: torch.Tensor, side: int) -> torch.Tensor:
    """(N, C, h, w) native features -> (N, side * side, C) on the patch grid, row-major like the frames."""
    method = resample_method(features.shape[-2:], (side, side))
    if method == "avg-pool":
        features = F.adaptive_avg_pool2d(features, side)
    elif method == "bilinear":
        # antialias only matters when shrinking: it averages instead of skipping teacher cells
        # float32: CPU antialiased resize has no bf16 kernel, and teachers may run under bf16 autocast
        features = F.interpolate(features.float(), size=(side, side), mode="bilinear", align_corners=False,
                                 antialias=True)
    return features.flatten(2).transpose(1, 2)


def tokens_to_map(tokens: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    """(N, h * w, C) row-major patch tokens -> (N, C, h, w)."""
    h, w = grid
    if tokens.shape[1] != h * w:
        raise ValueError(f"expected {h}x{w}={h * w} tokens, got {tokens.shape[1]}")
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], h, w)


def check_frames(frames: np.ndarray, name: str) -> tuple[int, int, int]:
    """Validate (B, T, S, S, 3) uint8 frames; returns (B, T, S)."""
    if not isinstance(frames, np.ndarray) or frames.ndim != 5 or frames.shape[-1] != 3:
        raise ValueError(f"{name} expects frames shaped (B, T, S, S, 3), got {getattr(frames, 'shape', type(frames))}")
    if frames.dtype != np.uint8:
        raise ValueError(f"{name} expects uint8 frames, got {frames.dtype}")
    batch, num_frames, height, width = frames.shape[:4]
    if height != width:
        raise ValueError(f"{name} expects square S x S frames, got {height} x {width}")
    patch_grid_side(height)
    return batch, num_frames, height


def prepare_images(images: torch.Tensor, input_size: int, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(N, S, S, 3) uint8 -> (N, 3, input_size, input_size) float32, normalised for the teacher.

    Runs on the images' device, so only uint8 travels to the accelerator. Frames are resized only
    when S differs from the teacher's input size (bilinear, antialiased when shrinking).
    """
    x = images.permute(0, 3, 1, 2).float().div_(255.0)
    if x.shape[-1] != input_size:
        x = F.interpolate(x, size=(input_size, input_size), mode="bilinear", align_corners=False, antialias=True)
    mean_t = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean_t) / std_t


def resize_note(input_size: int) -> str:
    """What the spec records about the input resize."""
    return f"S x S -> {input_size} x {input_size} bilinear (antialiased) when S != {input_size}"


@functools.lru_cache(maxsize=None)
def weights_digest(path: str) -> str:
    """sha256 of a weights file, computed once per process (a Swin-L checkpoint is ~0.8 GB)."""
    return sha256_of(Path(path))


RANDOM_SEED = 0  # weights="random" initialises every teacher from this torch seed


def seeded_init(build: Callable[[], ModuleT]) -> ModuleT:
    """Call `build()` with torch's CPU RNG seeded to RANDOM_SEED, leaving the caller's RNG untouched,
    so that `weights="random"` gives the same teacher in every process."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        return build()


class FeatureExtractor(Protocol):
    """A frozen teacher seen as a feature map: uint8 frames in, native grid out."""

    device: str

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(N, S, S, 3) uint8 on `device` -> (N, D, h, w) features on the teacher's native grid."""
        ...


def probe(extractor: FeatureExtractor, input_size: int) -> tuple[int, tuple[int, int]]:
    """(D, native (h, w)) of a teacher, from one blank frame at its input size."""
    device = runtime.resolve_device(extractor.device)
    blank = torch.zeros((1, input_size, input_size, 3), dtype=torch.uint8, device=device)
    with runtime.inference(device, bf16=False):
        out = extractor.features(blank)
    return int(out.shape[1]), (int(out.shape[2]), int(out.shape[3]))


class PatchFeatureTarget:
    """A feature target on the patch grid: (B, T, S, S, 3) uint8 -> (B, T, (S/32)**2, D) float16.

    Frames are independent: they are flattened to B * T images and run through the teacher in
    chunks of `batch_size` (`runtime.run_batched`: inference mode, bf16 autocast when `precision`
    is "bf16"). `precision` is the effective one ("fp32" / "bf16", `runtime.resolve_precision`),
    and `spec.params["precision"]` must record it (bf16 changes the values, so it is part of the id).
    `compile` runs the teacher's forward through torch.compile; it changes speed only, so no id records it.
    """

    def __init__(self, spec: TargetSpec, extractor: FeatureExtractor, batch_size: int = 32,
                 precision: str = "fp32", compile: bool | str = False) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        precision = runtime.resolve_precision(precision, runtime.resolve_device(extractor.device))
        if spec.params.get("precision") != precision:
            raise ValueError(f"spec.params['precision'] must record the effective precision '{precision}', "
                             f"got {spec.params.get('precision')!r}")
        self.spec, self.extractor, self.batch_size, self.precision = spec, extractor, batch_size, precision
        self.compile = runtime.as_flag(compile, "compile")

    def compute(self, frames: np.ndarray) -> dict[str, np.ndarray]:
        """frames: (B, T, S, S, 3) uint8 -> {"data": (B, T, (S/32)**2, D) float16}."""
        batch, num_frames, size = check_frames(frames, self.spec.name)
        side = patch_grid_side(size)
        if batch * num_frames == 0:
            return {"data": np.zeros((batch, *self.spec.clip_shape(num_frames, size)), np.float16)}
        images = torch.from_numpy(np.ascontiguousarray(frames)).reshape(batch * num_frames, size, size, 3)

        def run(chunk: torch.Tensor) -> torch.Tensor:
            return to_patch_grid(self.extractor.features(chunk), side)

        device = runtime.resolve_device(self.extractor.device)
        # cast to the stored float16 on the device: half the bytes travel back
        features = runtime.run_batched(run, images, self.batch_size, device, bf16=self.precision == "bf16",
                                       out_dtype=torch.float16, compile=self.compile)  # (N, side^2, D)
        data = features.numpy()
        return {"data": data.reshape(batch, num_frames, side * side, -1)}


class ReloadsModelWhenUnpickled:
    """For feature extractors holding `self.model` built by `self.teacher.load()`: the network is not
    pickled (e.g. into worker processes); each process loads it once."""

    def __getstate__(self) -> dict:
        return {**self.__dict__, "model": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.model = self.teacher.load()
