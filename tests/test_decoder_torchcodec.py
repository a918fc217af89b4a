"""The optional torchcodec decoder gives the same clips as PyAV.

Same frames: frame indices, timestamps and source fields are equal, and on videos whose pixels encode
their own frame index the chosen frames match the hand-computed segment-middle indices.

Pixels: both decoders convert YUV to RGB identically at native size (asserted bit for bit, with and
without display rotation). When the frame is resized, PyAV converts inside swscale's area resize
(scaling the half-resolution chroma planes directly) while torchcodec's frames are converted at full
resolution first, so values differ by colour rounding. Measured with torchcodec 0.13.0 and FFmpeg
5.1 against PyAV 18.1 (libavcodec 62):
- real sample video (../shared/videos, 320x240 H.264) at T=4, S=224 and T=8, S=64: mean absolute
  difference 1.26 and 1.24 levels, max 19 and 7. Tolerance: mean <= 2.5, max <= 40.
- synthetic clips (`mvmtargets synth`, 112x112, saturated shapes on textures) at the same T, S:
  mean 1.30-1.56, share of values off by more than 16 levels <= 0.5 %, max 74 (at saturated colour
  edges). Tolerance: mean <= 3, share > 16 levels <= 3 %, max <= 128.
A wrong frame or a wrong rotation gives mean differences of tens of levels.

Tests that decode skip, with the reason, where torchcodec cannot be imported or cannot load FFmpeg.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mvm_targets.errors import VideoError
from mvm_targets.extract import ExtractConfig, extract
from mvm_targets.store.reader import CacheReader
from mvm_targets.synth import build_synthetic_dataset
from mvm_targets.targets import build_target
from mvm_targets.video.decode import SamplingConfig, decode_clip
from mvm_targets.video.decode_torchcodec import torchcodec_problem
from mvm_targets.video.inputs import discover_inputs
from tests.conftest import read_index, write_video

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def torchcodec_ready() -> None:
    problem = torchcodec_problem()
    if problem:
        pytest.skip(f"torchcodec cannot decode here: {problem}")


def both(path: Path, num_frames: int, size: int):
    pyav = decode_clip("k", path, SamplingConfig(num_frames=num_frames, size=size))
    torchcodec = decode_clip("k", path, SamplingConfig(num_frames=num_frames, size=size, decoder="torchcodec"))
    return pyav, torchcodec


def assert_same_frames(pyav, torchcodec) -> np.ndarray:
    """Equal indices, timestamps and source; returns |difference| (T, S, S, 3) as int."""
    np.testing.assert_array_equal(torchcodec.frame_indices, pyav.frame_indices)
    np.testing.assert_array_equal(torchcodec.timestamps, pyav.timestamps)
    assert torchcodec.source == pyav.source
    assert torchcodec.frames.shape == pyav.frames.shape and torchcodec.frames.dtype == np.uint8
    return np.abs(torchcodec.frames.astype(int) - pyav.frames.astype(int))


@pytest.mark.parametrize("num_frames, size", [(4, 224), (8, 64)])
def test_real_sample_video_agrees_with_pyav(torchcodec_ready, shared_video, num_frames, size):
    difference = assert_same_frames(*both(shared_video, num_frames, size))
    print(f"{shared_video.name} T={num_frames} S={size}: mean {difference.mean():.3f}, max {difference.max()}")
    assert difference.mean() <= 2.5 and difference.max() <= 40


@pytest.mark.parametrize("num_frames, size", [(4, 224), (8, 64)])
def test_synthetic_videos_agree_with_pyav(torchcodec_ready, tmp_path, num_frames, size):
    build_synthetic_dataset(tmp_path / "synth", clips=2, seed=0)
    videos = sorted((tmp_path / "synth").rglob("*.mp4"))
    assert len(videos) == 2
    for path in videos:
        difference = assert_same_frames(*both(path, num_frames, size))
        print(f"{path.name} T={num_frames} S={size}: mean {difference.mean():.3f}, "
              f"> 16 levels {(difference > 16).mean():.4f}, max {difference.max()}")
        assert difference.mean() <= 3.0 and (difference > 16).mean() <= 0.03 and difference.max() <= 128


@pytest.mark.parametrize("rotation", [0, 90, -90, 180])
def test_native_size_is_bit_exact(torchcodec_ready, tmp_path, rotation):
    # 96x64 stored frames and S=64: no resize either way, so only the YUV->RGB conversion remains
    path = write_video(tmp_path / "v.mp4", num_frames=12, width=96, height=64, rotation=rotation)
    pyav, torchcodec = both(path, 4, 64)
    assert not assert_same_frames(pyav, torchcodec).any()


def test_frames_are_the_segment_middles(torchcodec_ready, tmp_path):
    path = write_video(tmp_path / "cfr.mp4", num_frames=30, fps=10)
    clip = decode_clip("cfr", path, SamplingConfig(num_frames=4, size=64, decoder="torchcodec"))
    expected = [math.floor((2 * i + 1) * 30 / 8) for i in range(4)]  # [3, 11, 18, 26]
    assert [read_index(f) for f in clip.frames] == expected == clip.frame_indices.tolist()
    np.testing.assert_allclose(clip.timestamps, np.array(expected) / 10)


def test_variable_frame_rate_is_sampled_by_timestamp(torchcodec_ready, tmp_path):
    pts = [i * 100 for i in range(10)] + [1000, 2500]  # ms; the last frame is shown for 0.1 s
    path = write_video(tmp_path / "vfr.mp4", num_frames=12, pts=pts)
    clip = decode_clip("vfr", path, SamplingConfig(num_frames=4, size=64, decoder="torchcodec"))
    # 2.6 s in 4 segments: middles at 0.325, 0.975, 1.625, 2.275 s -> frames shown then
    assert [read_index(f) for f in clip.frames] == [3, 9, 10, 10]
    np.testing.assert_allclose(clip.timestamps, [0.3, 0.9, 1.0, 1.0])


def test_bad_files_fail_as_with_pyav(torchcodec_ready, tmp_path):
    config = SamplingConfig(num_frames=4, size=64, decoder="torchcodec")
    (tmp_path / "empty.mp4").write_bytes(b"")
    short = write_video(tmp_path / "short.mp4", num_frames=2)
    for path, error_class in [(tmp_path / "missing.mp4", "FileNotFound"), (tmp_path / "empty.mp4", "EmptyFile"),
                              (short, "TooShort")]:
        with pytest.raises(VideoError) as caught:
            decode_clip("k", path, config)
        assert caught.value.error_class == error_class


def test_extract_records_the_decoder_and_keeps_the_cache_folder(torchcodec_ready, small_videos, tmp_path):
    sampling = SamplingConfig(num_frames=4, size=64, decoder="torchcodec")
    assert sampling.frames_id == SamplingConfig(num_frames=4, size=64).frames_id
    config = ExtractConfig(cache_root=tmp_path / "cache", dataset="toy", sampling=sampling, clips_per_shard=2)
    summary = extract(discover_inputs([small_videos]), [build_target("hog")], config)
    assert (summary.done, summary.failed) == (5, 0)
    reader = CacheReader(tmp_path / "cache", "toy", targets=["hog"])
    for set_id in ("frames", "hog"):  # the target records the decoder of the frames it was computed from
        attrs = reader.attrs(set_id)
        assert attrs["decoder"].startswith("torchcodec ") and attrs["decoder"].endswith("; cpu)")
        assert attrs["sampling"]["decoder"] == attrs["decoder"] and attrs["sampling"]["decode_device"] == "cpu"


def test_sampling_config_checks_the_decoder():
    with pytest.raises(ValueError, match="decoder"):
        SamplingConfig(decoder="opencv")
    with pytest.raises(ValueError, match="only torchcodec decodes on a GPU"):
        SamplingConfig(decode_device="cuda")


def extract_cli(tmp_path: Path, *args: str, hide_torchcodec: bool = False) -> subprocess.CompletedProcess:
    write_video(tmp_path / "videos" / "a.mp4", num_frames=6)
    # None in sys.modules makes `import torchcodec` fail, as on a machine without it
    hide = "import sys; sys.modules['torchcodec'] = None; " if hide_torchcodec else ""
    return subprocess.run([sys.executable, "-c", hide + "from mvm_targets.cli import main; main()", "extract",
                           str(tmp_path / "videos"), "-t", "pixel", "--cache", str(tmp_path / "cache"), *args],
                          capture_output=True, text=True, timeout=300, cwd=REPO)


def test_cli_without_torchcodec_is_one_line_naming_the_option_and_the_install(tmp_path):
    result = extract_cli(tmp_path, "--decoder", "torchcodec", hide_torchcodec=True)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "--decoder torchcodec" in lines[0] and "pip install 'mvm-targets[torchcodec]'" in lines[0]
    assert "FFmpeg" in lines[0] and not (tmp_path / "cache").exists()


def test_cli_unknown_decoder(tmp_path):
    result = extract_cli(tmp_path, "--decoder", "opencv")
    assert result.returncode == 2 and result.stderr.strip() == \
        "error: --decoder must be one of pyav, torchcodec, got 'opencv'"
