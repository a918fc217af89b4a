"""Decode benchmark: sample T frames from a long 720p video, against PyAV seek-decoding alone.

Anchor (same run, same file): open the file, and for each of the same T frames seek to it,
decode up to it and convert it to RGB at native resolution. Ours additionally builds the packet
index, resizes the short side to 224 and centre-crops. Goal: ours <= 1.2x the anchor.

Where torchcodec can decode here, a third column times the same clip with `--decoder torchcodec`
(the same plan, resize and crop; only the reading differs), as a ratio to ours with PyAV.

    python benchmarks/bench_decode.py [--seconds 60] [--frames 8] [--json out.json]
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import av
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA_DIR, best_of, write_json  # noqa: E402

from mvm_targets.video.decode import SamplingConfig, decode_clip  # noqa: E402


def make_long_video(seconds: int, width: int = 1280, height: int = 720, fps: int = 30) -> Path:
    """A textured, moving 720p H.264 video (x264 defaults: GOP up to 250 frames); cached on disk."""
    path = DATA_DIR / f"long_{seconds}s_{height}p.mp4"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    texture = rng.integers(0, 255, (height * 2, width * 2, 3), dtype=np.uint8)
    with av.open(str(path.with_suffix(".tmp.mp4")), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "23"}
        for i in range(seconds * fps):
            y, x = (i * 3) % height, (i * 5) % width
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(texture[y:y + height, x:x + width]),
                                               format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    path.with_suffix(".tmp.mp4").rename(path)
    return path


def anchor_seek_decode(path: Path, pts_targets: list[int]) -> None:
    """PyAV alone: seek to each target's key frame and decode up to it."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        for target in pts_targets:
            container.seek(target, stream=stream, backward=True)
            for frame in container.decode(stream):
                if frame.pts is not None and frame.pts >= target:
                    frame.to_ndarray(format="rgb24")
                    break


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json")
    args = parser.parse_args()
    path = make_long_video(args.seconds)
    config = SamplingConfig(num_frames=args.frames, size=224)
    clip = decode_clip("long", path, config)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        time_base = float(stream.time_base)
        start = stream.start_time or 0
    pts_targets = [start + round(t / time_base) for t in clip.timestamps]
    ours = best_of(lambda: decode_clip("long", path, config), args.repeats)
    anchor = best_of(lambda: anchor_seek_decode(path, pts_targets), args.repeats)
    result = {"video": f"{args.seconds}s 1280x720 30fps h264 (x264 ultrafast, default GOP)",
              "frames": args.frames, "ours_s": ours, "anchor_pyav_seek_decode_s": anchor, "ratio": ours / anchor,
              "goal_ratio_max": 1.2, "decoder": config.describe()["decoder"]}
    print(f"sample {args.frames} frames of a {args.seconds}s 720p video: ours {ours * 1e3:.0f} ms, "
          f"PyAV seek-decode alone {anchor * 1e3:.0f} ms, ratio {ours / anchor:.2f} (goal <= 1.2)")
    result.update(torchcodec_column(path, config, clip, ours, args.repeats))
    write_json(args.json, {"decode": result})


def torchcodec_column(path: Path, config: SamplingConfig, pyav_clip, pyav_s: float, repeats: int) -> dict:
    """The same clip decoded by torchcodec: its time, its ratio to PyAV's, and its pixel difference."""
    from mvm_targets.video.decode_torchcodec import torchcodec_problem

    problem = torchcodec_problem()
    if problem:
        print(f"torchcodec: not timed ({problem})")
        return {"torchcodec_s": None, "torchcodec_skipped": problem}
    torchcodec_config = replace(config, decoder="torchcodec")
    clip = decode_clip("long", path, torchcodec_config)
    assert clip.frame_indices.tolist() == pyav_clip.frame_indices.tolist(), "the decoders chose different frames"
    difference = np.abs(clip.frames.astype(int) - pyav_clip.frames.astype(int))
    seconds = best_of(lambda: decode_clip("long", path, torchcodec_config), repeats)
    print(f"torchcodec (same plan, resize and crop): {seconds * 1e3:.0f} ms, {seconds / pyav_s:.2f}x ours with "
          f"PyAV; pixels vs PyAV: mean |diff| {difference.mean():.2f}, max {difference.max()}")
    return {"torchcodec_s": seconds, "torchcodec_vs_pyav": seconds / pyav_s,
            "torchcodec_decoder": torchcodec_config.describe()["decoder"],
            "torchcodec_mean_abs_diff": float(difference.mean()), "torchcodec_max_abs_diff": int(difference.max())}


if __name__ == "__main__":
    main()
