"""Storage codecs: how a float target's values are laid out in its shards, and turned back into floats.

A codec is chosen per target (`-o NAME.codec=int8`), recorded in the target's spec params (so it is
part of the target id: a different codec is a different cached set) and applied when a shard is
built from the spec stamped into it; the reader decodes, so the trainer sees float values of the
target's own shape (docs/method.md §8.1). Everything here follows from the grid and the shape, never
from which target made the values:

- `fp16` (the default): the values as the target computed them (float16 for every float target).
  Its spec carries no codec param, so the ids of existing caches do not move.
- `int8`: symmetric int8 with one float16 scale per stored vector, `scale = max|x| / 127` rounded up
  to the next float16 (so `|x| / scale <= 127` and no value clips), `q = round(x / scale)`. A vector
  is the last axis on the PATCH grid (one scale per token, `(T, h*w)`) and the last two (one S x S
  map) on the DENSE grid (one scale per frame and channel, `(T', C)` or `(T',)`). Decoding `q * scale`
  is exact in float32, so each value is within `scale / 2` of what was stored.
- `fp16-half`, `int8-half` (DENSE only): the map is 2 x 2 average pooled before storing (S/2 x S/2),
  then stored as above, and bilinearly upsampled (half-pixel centres, edges clamped) on read.

The stored arrays are `data` (the codec's dtype and shape) and, for int8, `codec/scale` next to it:
one chunk per clip with a Fletcher-32 checksum, like every other dataset of a shard.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

DEFAULT_CODEC = "fp16"
CODEC_NAMES = ("fp16", "int8", "fp16-half", "int8-half")
CODEC_PARAM = "codec"  # the spec params key (absent: the default codec)
SCALE = "scale"  # int8: the per-vector scales, `codec/scale` in a shard
INT8_MAX = 127
_VECTOR_AXES = {"patch": 1, "dense": 2}  # trailing axes one scale covers, per grid


class CodecError(ValueError):
    """A codec that does not exist, or does not fit a target's grid, dtype or shape."""


@dataclass(frozen=True)
class Codec:
    """One storage layout. `quantize`: int8 with per-vector scales; `half`: 2 x 2 pooled DENSE maps."""

    name: str
    quantize: bool
    half: bool

    @property
    def is_default(self) -> bool:
        return self.name == DEFAULT_CODEC

    def problem(self, grid: str, dtype: str, stored: bool = True) -> str | None:
        """Why this codec cannot store a target of this grid and dtype (None when it can)."""
        if self.is_default:
            return None
        if not stored:
            return "needs a stored target (this one is derived from the cached frames)"
        if np.dtype(dtype).kind != "f":
            return f"needs float values, not {dtype}"
        if self.half and grid != "dense":
            return f"pools dense maps, not the {grid} grid"
        if grid not in _VECTOR_AXES:
            return f"stores patch or dense grids, not the {grid} grid"
        return None

    def shape_problem(self, grid: str, clip_shape: Sequence[int]) -> str | None:
        """Why one clip of `clip_shape` cannot be stored (None when it can)."""
        if self.is_default:
            return None
        axes = _VECTOR_AXES.get(grid, 0)
        if len(clip_shape) <= axes:
            return f"needs a clip shape with more than {axes} axes, got {tuple(clip_shape)}"
        if self.half and any(int(n) % 2 for n in clip_shape[-2:]):
            return f"needs an even map size to pool 2 x 2, got {tuple(clip_shape[-2:])}"
        return None

    def stored_shape(self, grid: str, clip_shape: Sequence[int]) -> tuple[int, ...]:
        """The shape of one clip's `data` as stored."""
        shape = tuple(int(n) for n in clip_shape)
        return (*shape[:-2], shape[-2] // 2, shape[-1] // 2) if self.half else shape

    def stored_dtype(self, dtype: str) -> str:
        return "int8" if self.quantize else str(np.dtype(dtype))

    def side_shapes(self, grid: str, clip_shape: Sequence[int]) -> dict[str, tuple[int, ...]]:
        """The shapes of one clip's side arrays (`codec/<name>`): the scales of int8, one per vector."""
        if not self.quantize:
            return {}
        return {SCALE: self.stored_shape(grid, clip_shape)[:-_VECTOR_AXES[grid]]}

    def encode(self, data: np.ndarray, grid: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """One clip's values, shaped `clip_shape` -> (stored `data`, {side array name: array})."""
        problem = self.problem(grid, str(data.dtype)) or self.shape_problem(grid, data.shape)
        if problem:
            raise CodecError(f"codec '{self.name}' {problem}")
        if self.is_default:
            return data, {}
        values = np.asarray(data, dtype=np.float32)
        if self.half:
            values = pool2(values)
        if not self.quantize:
            return values.astype(data.dtype), {}
        codes, scale = quantize_int8(values, _VECTOR_AXES[grid])
        return codes, {SCALE: scale}

    def decode(self, stored: np.ndarray, side: Mapping[str, np.ndarray], grid: str) -> np.ndarray:
        """The inverse of `encode`: one clip's stored `data` and side arrays -> float32 values of the
        target's own shape (the default codec returns `stored` as it is)."""
        if self.is_default:
            return stored
        values = dequantize_int8(stored, side[SCALE]) if self.quantize else np.asarray(stored, np.float32)
        return upsample2(values) if self.half else values


_CODECS = {name: Codec(name, quantize=name.startswith("int8"), half=name.endswith("-half")) for name in CODEC_NAMES}


def codec_named(name: Any) -> Codec:
    """The codec called `name`; anything else is a one-line `CodecError` listing the known ones."""
    codec = _CODECS.get(str(name).strip().lower()) if isinstance(name, str) else None
    if codec is None:
        raise CodecError(f"unknown codec {name!r}; known codecs: {', '.join(CODEC_NAMES)}")
    return codec


def codec_of_record(record: Mapping[str, Any]) -> Codec:
    """The codec of a stamped target spec (its `params["codec"]`; absent: the default)."""
    return codec_named((record.get("params") or {}).get(CODEC_PARAM, DEFAULT_CODEC))


def codec_of_attrs(attrs: Mapping[str, Any]) -> tuple[Codec, dict[str, Any]]:
    """The codec and the spec record of a shard's attributes (those a shard is built from, or read back)."""
    raw = attrs.get("target_spec")
    if raw is None:
        return _CODECS[DEFAULT_CODEC], {}
    record = json.loads(raw.decode() if isinstance(raw, bytes) else raw) if isinstance(raw, (str, bytes)) else raw
    return codec_of_record(record), dict(record)


def quantize_int8(values: np.ndarray, vector_axes: int) -> tuple[np.ndarray, np.ndarray]:
    """float values -> (int8 codes of the same shape, float16 scales of shape `values.shape[:-vector_axes]`).

    Each scale is max|x| / 127 over its vector, rounded up to a float16, so |x| / scale <= 127 and
    |x - q * scale| <= scale / 2. An all-zero vector gets scale 0 and codes 0.
    """
    values = np.asarray(values, dtype=np.float32)
    axes = tuple(range(values.ndim - vector_axes, values.ndim))
    peak = np.abs(values).max(axis=axes)
    scale = scale_float16(peak)
    wide = scale.astype(np.float32).reshape(*scale.shape, *(1,) * vector_axes)
    ratio = np.divide(values, wide, out=np.zeros_like(values), where=wide > 0)
    codes = np.clip(np.rint(ratio), -INT8_MAX, INT8_MAX).astype(np.int8)
    return codes, scale


def scale_float16(peak: np.ndarray) -> np.ndarray:
    """The smallest float16 `s` with `127 * s >= peak` (to within one float16 step), per element."""
    peak = np.asarray(peak, dtype=np.float32)
    with np.errstate(over="ignore"):
        scale = (peak / INT8_MAX).astype(np.float16)
    # float16 * 127 is exact in float32 (11 + 7 significant bits), so this compare is exact
    short = scale.astype(np.float32) * INT8_MAX < peak
    scale = np.where(short, np.nextafter(scale, np.float16(np.inf)), scale).astype(np.float16)
    if not np.isfinite(scale).all():
        raise CodecError(f"codec 'int8': values up to {float(peak.max()):.3g} need a scale beyond float16's range")
    return scale


def dequantize_int8(codes: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """int8 codes and their per-vector float16 scales -> float32 values (`q * scale`, exact in float32)."""
    vector_axes = codes.ndim - scale.ndim
    return codes.astype(np.float32) * scale.astype(np.float32).reshape(*scale.shape, *(1,) * vector_axes)


def pool2(values: np.ndarray) -> np.ndarray:
    """(..., H, W) -> (..., H/2, W/2): the mean of each 2 x 2 block (H and W even)."""
    *lead, height, width = values.shape
    return values.reshape(*lead, height // 2, 2, width // 2, 2).mean(axis=(-3, -1), dtype=np.float32)


def upsample2(values: np.ndarray) -> np.ndarray:
    """(..., h, w) -> (..., 2h, 2w) float32, bilinear with half-pixel centres and clamped edges: output
    pixel i samples the input at i / 2 - 1/4, i.e. 3/4 of its nearer and 1/4 of its next input pixel."""
    out = np.asarray(values, dtype=np.float32)
    for axis in (-2, -1):
        out = _upsample_axis(out, axis)
    return out


def _upsample_axis(values: np.ndarray, axis: int) -> np.ndarray:
    moved = np.moveaxis(values, axis, -1)
    before = np.concatenate([moved[..., :1], moved[..., :-1]], axis=-1)
    after = np.concatenate([moved[..., 1:], moved[..., -1:]], axis=-1)
    even, odd = 0.75 * moved + 0.25 * before, 0.75 * moved + 0.25 * after
    woven = np.stack([even, odd], axis=-1).reshape(*moved.shape[:-1], 2 * moved.shape[-1])
    return np.moveaxis(woven, -1, axis)
