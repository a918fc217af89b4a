"""Frame sampling and decoding: the right frames, at the canonical geometry, every time."""

from __future__ import annotations

import numpy as np
import pytest

from mvm_targets.errors import VideoError
from mvm_targets.video.decode import SamplingConfig, decode_clip
from mvm_targets.video.sampling import segment_middle_indices
from tests.conftest import read_index, write_video


def test_constant_rate_sampling_takes_segment_middles():
    pts = list(range(0, 100 * 512, 512))  # 100 frames
    assert segment_middle_indices(pts, 100 * 512, 4) == [12, 37, 62, 87]
    assert segment_middle_indices(pts[:10], 10 * 512, 4) == [1, 3, 6, 8]


def test_short_video_repeats_indices_when_allowed():
    assert segment_middle_indices([0, 10, 20], 30, 4) == [0, 1, 1, 2]


def test_variable_frame_rate_is_sampled_by_time_not_index():
    # 10 frames bunched in the first second, then 2 frames covering the next 3 seconds
    pts = [i * 100 for i in range(10)] + [1000, 2500]
    # time segments of a 4 s clip: middles at 0.5, 1.5, 2.5, 3.5 s
    assert segment_middle_indices(pts, 4000, 4) == [5, 10, 11, 11]


def test_decode_returns_the_sampled_frames_at_canonical_size(tmp_path):
    path = write_video(tmp_path / "v.mp4", num_frames=20, width=96, height=64)
    clip = decode_clip("v", path, SamplingConfig(num_frames=4, size=64))
    assert clip.frames.shape == (4, 64, 64, 3) and clip.frames.dtype == np.uint8
    assert clip.frame_indices.tolist() == [2, 7, 12, 17]
    assert [read_index(f) for f in clip.frames] == [2, 7, 12, 17]
    np.testing.assert_allclose(clip.timestamps, [0.2, 0.7, 1.2, 1.7])
    assert clip.source["width"] == 96 and clip.source["num_frames"] == 20


def test_decode_is_deterministic(tmp_path):
    path = write_video(tmp_path / "v.mp4", num_frames=30)
    first = decode_clip("v", path, SamplingConfig(num_frames=8, size=64))
    second = decode_clip("v", path, SamplingConfig(num_frames=8, size=64))
    np.testing.assert_array_equal(first.frames, second.frames)


def test_variable_frame_rate_video_decodes_by_timestamp(tmp_path):
    pts = [i * 100 for i in range(10)] + [1000, 2500]
    path = write_video(tmp_path / "vfr.mp4", num_frames=12, pts=pts)
    clip = decode_clip("vfr", path, SamplingConfig(num_frames=4, size=64))
    # the last frame lasts 0.1 s, so the clip spans 2.6 s: middles at 0.325, 0.975, 1.625, 2.275 s
    assert [read_index(f) for f in clip.frames] == [3, 9, 10, 10]
    np.testing.assert_allclose(clip.timestamps, [0.3, 0.9, 1.0, 1.0])


@pytest.mark.parametrize("rotation", [90, -90, 180])
def test_rotation_metadata_is_honoured(tmp_path, rotation):
    image = np.zeros((64, 128, 3), np.uint8)
    image[:16, 48:80] = 255  # a white marker on the top edge of the stored frame, horizontally centred
    path = write_video(tmp_path / "r.mp4", num_frames=4, width=128, height=64, rotation=rotation,
                       frames=[image] * 4)
    frame = decode_clip("r", path, SamplingConfig(num_frames=1, size=64)).frames[0]
    rows, cols = np.nonzero(frame[..., 0] > 128)
    assert frame.shape == (64, 64, 3) and len(rows) > 100
    # 90 CCW: the stored top edge is shown on the left; 90 CW (-90): on the right; 180: at the bottom
    if rotation == 90:
        assert cols.max() < 20
    elif rotation == -90:
        assert cols.min() > 44
    else:
        assert rows.min() > 44


def test_wide_video_is_resized_on_short_side_and_centre_cropped(tmp_path):
    image = np.zeros((64, 256, 3), np.uint8)
    image[:, :96] = (255, 0, 0)
    image[:, 96:160] = (0, 255, 0)  # the centre 64 columns
    image[:, 160:] = (0, 0, 255)
    path = write_video(tmp_path / "wide.mp4", num_frames=2, width=256, height=64, frames=[image] * 2)
    frame = decode_clip("w", path, SamplingConfig(num_frames=1, size=32)).frames[0]
    assert frame.shape == (32, 32, 3)
    assert frame[:, 4:28, 1].mean() > 200 and frame[:, 4:28, 0].mean() < 40


@pytest.mark.parametrize("content, error_class", [
    (b"", "EmptyFile"), (b"this is a text file, not a video\n" * 10, "OpenError")])
def test_bad_files_raise_video_error_with_class(tmp_path, content, error_class):
    path = tmp_path / "bad.mp4"
    path.write_bytes(content)
    with pytest.raises(VideoError) as caught:
        decode_clip("bad", path, SamplingConfig())
    assert caught.value.error_class == error_class and "bad.mp4" in str(caught.value)


def test_too_short_video_is_refused_unless_repeat(tmp_path):
    path = write_video(tmp_path / "short.mp4", num_frames=2)
    with pytest.raises(VideoError, match="fewer than T=4") as caught:
        decode_clip("s", path, SamplingConfig(num_frames=4, size=64))
    assert caught.value.error_class == "TooShort"
    clip = decode_clip("s", path, SamplingConfig(num_frames=4, size=64, short_videos="repeat"))
    assert clip.frame_indices.tolist() == [0, 0, 1, 1]


def test_real_sample_video(shared_video):
    clip = decode_clip("real", shared_video, SamplingConfig(num_frames=4, size=224))
    assert clip.frames.shape == (4, 224, 224, 3)
    assert np.all(np.diff(clip.frame_indices) > 0) and np.all(np.diff(clip.timestamps) > 0)
    assert clip.frames.std() > 10  # real content, not a blank decode
    again = decode_clip("real", shared_video, SamplingConfig(num_frames=4, size=224))
    np.testing.assert_array_equal(clip.frames, again.frames)
