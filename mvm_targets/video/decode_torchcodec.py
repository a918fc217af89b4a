"""Read the sampled frames with torchcodec instead of PyAV (optional; docs/method.md §8).

Only the reading differs. Which frames make the clip comes from `decode.plan_clip` (PyAV demuxing
and the shared segment-middle rule), and each frame goes through the same swscale AREA resize,
display rotation and centre crop as a PyAV frame (`decode.canonical_frame`), so the two decoders'
clips differ only in how each converts YUV to RGB. torchcodec needs a system FFmpeg (shared
libraries, major 4 to 8) and a build that matches the installed torch; on a CUDA device it decodes
with NVDEC where its build supports that.
"""

from __future__ import annotations

import functools
import io
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from mvm_targets.errors import VideoError
from mvm_targets.video.decode import (ClipPlan, DecodedClip, SamplingConfig, canonical_frame, open_video, plan_clip,
                                      short_error)

TORCHCODEC_RELEASE = "0.13.0"  # the newest PyPI release built for CPU torch (later ones link CUDA 13)
INSTALL_HINT = (f"install it with `pip install 'mvm-targets[torchcodec]'` (torchcodec=={TORCHCODEC_RELEASE}, "
                "or a build matching your torch) and a system FFmpeg 4-8 (e.g. `apt-get install ffmpeg`)")
# Half a time-base tick past a frame's pts lies inside that frame's display interval whatever the
# float rounding of seconds, and never reaches the next frame (pts are integers).
_INSIDE_FRAME = Fraction(1, 2)


@functools.lru_cache(maxsize=None)
def torchcodec_problem() -> str | None:
    """Why torchcodec cannot decode here (not installed, its FFmpeg or torch libraries do not load,
    or it predates rotation support); None when it can."""
    try:
        from torchcodec.decoders import VideoDecoder, VideoStreamMetadata  # noqa: F401
    except Exception as error:  # ImportError, or the OSError/RuntimeError of a library that does not load
        return short_error(error)
    if "rotation" not in getattr(VideoStreamMetadata, "__dataclass_fields__", {}):
        # before 0.11 frames came back in stored orientation with no rotation reported
        return "this torchcodec release does not report or apply display rotation (0.11 or later does)"
    return None


@functools.lru_cache(maxsize=None)
def cuda_decode_problem(device: str) -> str | None:
    """Why torchcodec cannot decode on `device` (cuda[:N]); None when a probe video decodes there."""
    problem = torchcodec_problem()
    if problem:
        return problem
    from torchcodec.decoders import VideoDecoder

    try:
        decoder = VideoDecoder(_probe_video(), device=device, seek_mode="exact")
        decoder.get_frame_at(0)
    except Exception as error:  # a CPU-only build, no NVDEC for this codec, or no such GPU
        return short_error(error)
    return None


def torchcodec_version(device: str = "cpu") -> str:
    """e.g. `torchcodec 0.13.0+cpu (FFmpeg 5.1.9, libavcodec 59.37.100; cpu)`."""
    problem = torchcodec_problem()
    if problem:
        raise RuntimeError(f"torchcodec cannot be used: {problem}")
    import torchcodec
    from torchcodec import _core

    libraries = _core.get_ffmpeg_library_versions()  # private, but the only place the versions are given
    libavcodec = ".".join(map(str, libraries.get("libavcodec", ())))
    return (f"torchcodec {torchcodec.__version__} (FFmpeg {libraries.get('ffmpeg_version', '?')}, "
            f"libavcodec {libavcodec}; {device})")


def decode_clip_torchcodec(key: str, path: Path, config: SamplingConfig) -> DecodedClip:
    """`decode.decode_clip` with torchcodec reading the pixels: the same frames and the same
    VideoError classes; a frame that torchcodec places elsewhere than the demuxer is a DecodeError."""
    problem = torchcodec_problem()
    if problem:
        raise VideoError("DecoderUnavailable", f"torchcodec cannot be used ({problem}); {INSTALL_HINT}")
    from torchcodec.decoders import VideoDecoder

    path = Path(path)
    with open_video(path) as container:
        plan = plan_clip(container, path, config)
        stream_index = container.streams.video[0].index
    wanted = sorted(set(plan.wanted))
    try:
        decoder = VideoDecoder(str(path), stream_index=stream_index, dimension_order="NHWC",
                               device=config.decode_device, seek_mode="exact")
        batch = decoder.get_frames_played_at([float((p + _INSIDE_FRAME) * plan.time_base) for p in wanted])
    except (RuntimeError, ValueError, IndexError) as error:
        raise VideoError("DecodeError", f"{path}: torchcodec could not decode it ({short_error(error)})") from None
    found = [round(seconds / float(plan.time_base)) for seconds in batch.pts_seconds.tolist()]
    if found != wanted:
        raise VideoError("DecodeError", f"{path}: torchcodec returned the frames at pts {found}, "
                                        f"the demuxer's index has them at {wanted}")
    rotation = int(decoder.metadata.rotation or 0)
    pixels = batch.data.cpu().numpy()  # (N, H, W, 3) uint8, display orientation
    decoded = {p: canonical_frame(_stored_frame(image, rotation, plan, path), rotation, config.size)
               for p, image in zip(wanted, pixels)}
    return plan.clip(key, decoded, rotation)


def _stored_frame(image: np.ndarray, rotation: int, plan: ClipPlan, path: Path) -> av.VideoFrame:
    """(H, W, 3) RGB in display orientation -> a PyAV frame in stored orientation.

    torchcodec applies the display rotation itself; turning it back (lossless) lets the resize run
    on the stored frame exactly as for PyAV frames, which resize before rotating.
    """
    quarter_turns = round(rotation / 90) % 4
    stored = np.rot90(image, k=-quarter_turns) if quarter_turns else image
    if stored.shape[:2] != (plan.height, plan.width):
        raise VideoError("DecodeError", f"{path}: torchcodec returned {stored.shape[1]}x{stored.shape[0]} frames "
                                        f"for a {plan.width}x{plan.height} stream rotated by {rotation} degrees")
    return av.VideoFrame.from_ndarray(np.ascontiguousarray(stored), format="rgb24")


@functools.lru_cache(maxsize=1)
def _probe_video() -> bytes:
    """A tiny H.264 video in memory, to try a device without touching the user's files."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        for i in range(2):
            frame = av.VideoFrame.from_ndarray(np.full((64, 64, 3), 40 * i, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()
