"""Shared fixtures: tiny videos written with PyAV whose frame index can be read back from pixels."""

from __future__ import annotations

import signal
from fractions import Fraction
from pathlib import Path
from typing import Sequence

import av
import numpy as np
import pytest

# A test run started in the background of a non-interactive shell inherits SIGINT ignored, and so
# would every command the tests start and then interrupt with Ctrl-C. A handler here becomes the
# default disposition in a child at exec, which is what a user's terminal gives the command.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

SHARED_VIDEOS = Path(__file__).resolve().parents[1].parent / "shared" / "videos"
INDEX_STEP = 6  # frame i is painted with brightness 20 + 6 i: survives lossy coding, decodable by rounding


def index_frame(index: int, width: int, height: int) -> np.ndarray:
    """(H, W, 3) uint8 frame whose left half encodes `index`, right half a moving texture."""
    frame = np.zeros((height, width, 3), np.uint8)
    frame[:, : width // 2] = 20 + INDEX_STEP * index
    x = np.arange(width // 2 + width % 2)[None, :] + 3 * index
    y = np.arange(height)[:, None]
    frame[:, width // 2:, 1] = (127 + 100 * np.sin(x / 5.0) * np.cos(y / 7.0)).astype(np.uint8)
    return frame


def read_index(frame: np.ndarray) -> int:
    """Inverse of `index_frame` on a decoded, resized, centre-cropped frame (uses the left quarter)."""
    size = frame.shape[1]
    return int(round((float(frame[:, : size // 8, 0].mean()) - 20) / INDEX_STEP))


def write_video(path: Path, num_frames: int = 12, width: int = 96, height: int = 64, fps: int = 10,
                codec: str = "libx264", rotation: int = 0, pts: Sequence[int] | None = None,
                frames: Sequence[np.ndarray] | None = None) -> Path:
    """Write an mp4; `pts` (in 1/1000 s) makes it variable-frame-rate; `rotation` is CCW display rotation."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": "10", "preset": "ultrafast", "threads": "1"}
        if pts is not None:
            stream.time_base = Fraction(1, 1000)
        if rotation:
            stream.set_display_rotation(rotation)
        for i in range(num_frames):
            image = frames[i] if frames is not None else index_frame(i, width, height)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            if pts is not None:
                frame.pts, frame.time_base = pts[i], Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture
def small_videos(tmp_path: Path) -> Path:
    """A folder of five good 12-frame videos in two sub-folders."""
    root = tmp_path / "videos"
    for i in range(5):
        write_video(root / ("a" if i % 2 else "b") / f"clip{i}.mp4", num_frames=12 + i)
    return root


@pytest.fixture
def shared_video() -> Path:
    videos = sorted(SHARED_VIDEOS.glob("*.mp4")) if SHARED_VIDEOS.is_dir() else []
    if not videos:
        pytest.skip("../shared/videos is not available")
    return videos[0]


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models: with several threads the run time is OpenMP synchronisation, and on a busy
    machine a descheduled thread stalls every op (a file then takes 3-4x longer)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
