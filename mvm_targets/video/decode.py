"""Seek-decode T sampled frames of one video with PyAV, at the canonical geometry.

Never decodes a whole video into memory: the packet index (timestamps and key frames) comes from
demuxing alone, then each sampled frame is reached by seeking to its key frame, or by decoding on
when the next sample lies in the same group of pictures. Rotation metadata is honoured.

The plan (which frames) and the geometry (resize, rotation, crop) are shared with the optional
torchcodec reader (`decode_torchcodec.py`): a decoder only supplies the frames' pixels.

PyAV is imported where a video is opened or its version asked, not with this module: `DecodedClip`
and `SamplingConfig` are also used where nothing is decoded (frames cached from arrays by
mvm_targets/cache_frames.py, readers and trainers), on hosts that need not have PyAV.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from mvm_targets.errors import VideoError
from mvm_targets.video.geometry import centre_crop, rotate_to_display, rotated_size, short_side_resize
from mvm_targets.video.sampling import segment_middle_indices

if TYPE_CHECKING:
    import av

RESIZE_INTERPOLATION = "AREA"  # swscale area averaging: alias-free down-scaling
DECODERS = ("pyav", "torchcodec")


@dataclass(frozen=True)
class SamplingConfig:
    """How a video becomes a clip; hashed into the cache layout (all but max_pixels and the decoder,
    see config_hash) and stamped into every shard."""

    num_frames: int = 4  # T, as in the paper's pretraining
    size: int = 224  # S: short side resized to S, centre crop S x S
    short_videos: Literal["skip", "repeat"] = "skip"  # fewer than T frames: skip, or repeat frames
    max_pixels: int = 8192 * 8192  # refuse larger frames (one RGB frame of this size is 192 MiB)
    decoder: Literal["pyav", "torchcodec"] = "pyav"  # which library reads the pixels (docs/method.md §8)
    decode_device: str = "cpu"  # torchcodec only: "cuda[:N]" decodes on that GPU (NVDEC)

    def __post_init__(self) -> None:
        if self.num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {self.num_frames}")
        if self.size < 32 or self.size % 32:
            raise ValueError(f"size must be a positive multiple of 32 (the patch size), got {self.size}")
        if self.decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {', '.join(DECODERS)}, got '{self.decoder}'")
        if self.decode_device != "cpu" and (self.decoder != "torchcodec" or not self.decode_device.startswith("cuda")):
            raise ValueError(f"decode_device '{self.decode_device}': only torchcodec decodes on a GPU (cuda[:N])")

    def describe(self) -> dict:
        return {**asdict(self), "sampling": "middle frame of T equal time segments (presentation timestamps)",
                "geometry": f"resize short side to {self.size} (swscale {RESIZE_INTERPOLATION}), "
                            f"centre crop {self.size}x{self.size}, display rotation applied",
                "decoder": decoder_version(self.decoder, self.decode_device)}

    def config_hash(self) -> str:
        # The decoder is provenance, not identity (like the libavcodec version): both decoders pick
        # the same frames and differ only in YUV->RGB rounding, so ids and cache folders do not change.
        payload = {k: v for k, v in asdict(self).items() if k not in ("max_pixels", "decoder", "decode_device")}
        payload["interpolation"] = RESIZE_INTERPOLATION
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:8]

    @property
    def frames_id(self) -> str:
        """Directory name of the frames shard set, e.g. `frames-t4-s224-1a2b3c4d`."""
        return f"frames-t{self.num_frames}-s{self.size}-{self.config_hash()}"


@dataclass
class DecodedClip:
    key: str
    frames: np.ndarray  # (T, S, S, 3) uint8 RGB
    frame_indices: np.ndarray  # (T,) int64, index in presentation order
    timestamps: np.ndarray  # (T,) float64 seconds
    source: dict = field(default_factory=dict)  # width, height, rotation, frame count, duration, codec


@dataclass(frozen=True)
class ClipPlan:
    """Which frames of one video make its clip, from demuxing alone; every decoder reads these."""

    pts: list[int]  # every frame's presentation timestamp, ascending, in time_base units
    keyframes: list[int]  # pts of the key frames, ascending
    end_pts: int  # when the last frame stops being shown
    indices: list[int]  # (T,) the sampled frames, indices into pts
    time_base: Fraction
    width: int  # stored (coded) frame size, before the display rotation
    height: int
    codec: str

    @property
    def wanted(self) -> list[int]:
        """(T,) pts of the sampled frames, repeats included."""
        return [self.pts[i] for i in self.indices]

    def clip(self, key: str, decoded: dict[int, np.ndarray], rotation: int) -> DecodedClip:
        """Assemble the clip from {pts: (S, S, 3) uint8} holding every wanted pts."""
        time_base = float(self.time_base)
        return DecodedClip(
            key=key,
            frames=np.stack([decoded[p] for p in self.wanted]),
            frame_indices=np.asarray(self.indices, dtype=np.int64),
            timestamps=np.asarray([(p - self.pts[0]) * time_base for p in self.wanted], dtype=np.float64),
            source={"width": self.width, "height": self.height, "rotation": rotation, "num_frames": len(self.pts),
                    "duration": (self.end_pts - self.pts[0]) * time_base, "codec": self.codec},
        )


def decoder_version(decoder: str = "pyav", device: str = "cpu") -> str:
    """The decoder and its library versions, e.g. `pyav 18.1.0 (libavcodec 62.28.102)`."""
    if decoder == "torchcodec":
        from mvm_targets.video.decode_torchcodec import torchcodec_version

        return torchcodec_version(device)
    import av

    libavcodec = ".".join(map(str, av.library_versions.get("libavcodec", ())))
    return f"pyav {av.__version__} (libavcodec {libavcodec})"


def decode_clip(key: str, path: Path, config: SamplingConfig) -> DecodedClip:
    """Decode the T sampled frames of `path`; raise VideoError(error_class, one-line reason)."""
    if config.decoder == "torchcodec":
        from mvm_targets.video.decode_torchcodec import decode_clip_torchcodec

        return decode_clip_torchcodec(key, path, config)
    path = Path(path)
    with open_video(path) as container:
        plan = plan_clip(container, path, config)
        decoded, rotation = _seek_decode(container, container.streams.video[0], sorted(set(plan.wanted)),
                                         plan.keyframes, path, config.size)
    return plan.clip(key, decoded, rotation)


def open_video(path: Path):
    """An open PyAV container for `path`; raise VideoError for a missing, empty or unreadable file."""
    import av

    path = Path(path)
    if not path.exists():
        raise VideoError("FileNotFound", f"{path}: no such file")
    if os.path.getsize(path) == 0:
        raise VideoError("EmptyFile", f"{path}: file is empty (0 bytes)")
    try:
        return av.open(str(path))
    except (av.error.FFmpegError, UnicodeDecodeError) as error:
        raise VideoError("OpenError", f"{path}: not a readable media file ({short_error(error)})") from None


def plan_clip(container, path: Path, config: SamplingConfig) -> ClipPlan:
    """The sampled frames of the first video stream of an open container (docs/method.md §8)."""
    if not container.streams.video:
        raise VideoError("NoVideoStream", f"{path}: contains no video stream")
    stream = container.streams.video[0]
    width, height = stream.codec_context.width, stream.codec_context.height
    if width * height > config.max_pixels:
        raise VideoError("TooLarge", f"{path}: {width}x{height} frames exceed max_pixels={config.max_pixels}")
    pts, keyframes, end_pts = _packet_index(container, stream, path)
    if len(pts) < config.num_frames and config.short_videos == "skip":
        raise VideoError("TooShort", f"{path}: has {len(pts)} frame(s), fewer than T={config.num_frames}")
    return ClipPlan(pts=pts, keyframes=keyframes, end_pts=end_pts,
                    indices=segment_middle_indices(pts, end_pts, config.num_frames),
                    time_base=stream.time_base, width=width, height=height, codec=stream.codec_context.name)


def _packet_index(container, stream, path: Path) -> tuple[list[int], list[int], int]:
    """Sorted presentation timestamps, key-frame timestamps and end time, from demuxing only."""
    import av

    pts, keyframes, durations = [], [], []
    try:
        for packet in container.demux(stream):
            stamp = packet.pts if packet.pts is not None else packet.dts
            if stamp is None or packet.size == 0:
                continue  # the demuxer's final flush packet
            pts.append(stamp)
            durations.append(packet.duration or 0)
            if packet.is_keyframe:
                keyframes.append(stamp)
    except av.error.FFmpegError as error:
        if not pts:
            raise VideoError("DecodeError", f"{path}: cannot read packets ({short_error(error)})") from None
    if not pts:
        raise VideoError("NoFrames", f"{path}: the video stream has no frames")
    order = np.argsort(pts, kind="stable")
    pts = [pts[i] for i in order]
    last_duration = durations[order[-1]] or (pts[-1] - pts[-2] if len(pts) > 1 else 1)
    return pts, sorted(keyframes) or [pts[0]], pts[-1] + last_duration


def _seek_decode(container, stream, wanted: list[int], keyframes: list[int], path: Path,
                 size: int) -> tuple[dict[int, np.ndarray], int]:
    """Decode the frames whose pts are in `wanted` (ascending). Returns {pts: (S, S, 3)}, rotation."""
    import av

    frames: dict[int, np.ndarray] = {}
    rotation = 0
    decoder, position = None, None  # position: pts of the last decoded frame
    for target in wanted:
        keyframe = keyframes[max(0, np.searchsorted(keyframes, target, side="right") - 1)]
        if decoder is None or position is None or not (keyframe <= position < target):
            container.seek(target, stream=stream, backward=True, any_frame=False)
            decoder = container.decode(stream)
        frame = None
        try:
            for candidate in decoder:
                if candidate.pts is None:
                    continue
                position = candidate.pts
                if candidate.pts >= target:
                    frame = candidate
                    break
        except av.error.FFmpegError as error:
            raise VideoError("DecodeError", f"{path}: decoding failed near t={float(target * stream.time_base):.3f}s "
                                            f"({short_error(error)})") from None
        if frame is None:
            raise VideoError("DecodeError", f"{path}: frame at t={float(target * stream.time_base):.3f}s is missing "
                                            "(truncated file?)")
        rotation = int(frame.rotation or 0)
        frames[target] = canonical_frame(frame, rotation, size)
    return frames, rotation


def canonical_frame(frame: av.VideoFrame, rotation: int, size: int) -> np.ndarray:
    """One decoded frame in stored orientation -> (S, S, 3) uint8 RGB in display orientation."""
    display_w, display_h = rotated_size(frame.width, frame.height, rotation)
    scaled_w, scaled_h = short_side_resize(display_w, display_h, size)
    stored_w, stored_h = rotated_size(scaled_w, scaled_h, rotation)  # resize before rotating: cheaper
    rgb = frame.reformat(width=stored_w, height=stored_h, format="rgb24",
                         interpolation=RESIZE_INTERPOLATION).to_ndarray()
    return np.ascontiguousarray(centre_crop(rotate_to_display(rgb, rotation), size))


def short_error(error: BaseException) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text[:200]
