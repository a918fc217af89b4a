"""HOG target throughput at 224x224: `hog:paper` and `hog:maskfeat` against skimage and OpenCV.

Measured in the same run, on the same frames:
- hog:paper, hog:maskfeat: `build_hog(variant).compute(clips)`, the full target (uint8 clips in, float16
  out), with numba's default thread count (all cores) and again with one thread;
- skimage paper / maskfeat: the slow reference paths (paper = the official VIOLETv2 call on the
  ImageNet-normalised frame, whose Python rendering loop dominates; for scale, the same call without
  `visualize`; maskfeat = three single-channel calls), on `--skimage-frames` frames;
- the anchor, OpenCV's `cv2.HOGDescriptor` with a 224x224 window, 16x16 blocks, 8x8 stride, 8x8 cells and
  9 bins (one descriptor per frame, `hog.compute(frame)`), single-threaded like all of OpenCV's HOG
  compute (`cv2.setNumThreads` does not change it); and, for reference, the default 64x128
  people-detector window slid over the 224x224 frame (`cv2.HOGDescriptor().compute(frame)`, 8-px window
  stride, 1,031,940 values = 4 MB per frame, so its rate swings with the allocator's state: ~140
  frames/s in a fresh process, ~600 here).

    PYTHONPATH=. python benchmarks/bench_hog.py [--frames 256] [--repeats 5] [--content synthetic noise]
                                                [--json out.json]

Content: `synthetic` (smooth colour texture with shapes and edges), `noise` (uniform noise: worst case
for the bin table's cache and for branch prediction) and `video` (frames of ../shared/videos, resized
and centre-cropped to 224; skipped when absent). Rates are frames/s; after a warm-up round, every
configuration is timed once per round for `--repeats` rounds (round robin, so that load from other
jobs hits all alike); the table shows the best and the median.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import cv2
import numba
import numpy as np
import skimage
from skimage.feature import hog as skimage_hog

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_json  # noqa: E402

from mvm_targets.targets.hog import build_hog  # noqa: E402
from mvm_targets.targets.hog_kernels import imagenet_normalise, unit_scale  # noqa: E402

SIZE = 224
T = 4  # frames per clip handed to compute()
SHARED_VIDEOS = Path(__file__).resolve().parents[2] / "shared" / "videos"
ANCHOR = "cv2 HOGDescriptor 224x224 window"


def synthetic_frames(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    frames = []
    yy, xx = np.mgrid[:SIZE, :SIZE]
    for _ in range(n):
        coarse = rng.random((16, 16, 3)).astype(np.float32)
        img = 30 + 190 * cv2.resize(coarse, (SIZE, SIZE), interpolation=cv2.INTER_CUBIC)
        img += rng.normal(0, 3, img.shape)
        for _ in range(4):
            cy, cx, r = rng.integers(20, SIZE - 20, 2).tolist() + [int(rng.integers(8, 40))]
            img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.integers(0, 256, 3)
        y0, x0 = rng.integers(0, SIZE - 60, 2)
        img[y0:y0 + 50, x0:x0 + 60] = rng.integers(0, 256, 3)
        frames.append(np.clip(img, 0, 255).astype(np.uint8))
    return np.stack(frames)


def video_frames(n: int) -> np.ndarray | None:
    videos = sorted(SHARED_VIDEOS.glob("*.mp4")) if SHARED_VIDEOS.is_dir() else []
    frames = []
    for path in videos:
        capture = cv2.VideoCapture(str(path))
        while len(frames) < n:
            ok, bgr = capture.read()
            if not ok:
                break
            h, w = bgr.shape[:2]
            scale = SIZE / min(h, w)
            new_size = (max(SIZE, round(w * scale)), max(SIZE, round(h * scale)))
            bgr = cv2.resize(bgr, new_size, interpolation=cv2.INTER_AREA)
            h, w = bgr.shape[:2]
            top, left = (h - SIZE) // 2, (w - SIZE) // 2
            frames.append(bgr[top:top + SIZE, left:left + SIZE, ::-1])
        capture.release()
    if not frames:
        return None
    while len(frames) < n:  # a short video is reused
        frames.extend(frames[: n - len(frames)])
    return np.ascontiguousarray(np.stack(frames[:n]))


def frames_for(content: str, n: int) -> np.ndarray | None:
    if content == "synthetic":
        return synthetic_frames(n)
    if content == "noise":
        return np.random.default_rng(1).integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)
    return video_frames(n)


def per_frame(fn: Callable[[np.ndarray], object], frames: np.ndarray) -> Callable[[], None]:
    def run() -> None:
        for frame in frames:
            fn(frame)
    return run


def skimage_paper(frame: np.ndarray) -> np.ndarray:
    return skimage_hog(imagenet_normalise(frame), orientations=9, pixels_per_cell=(8, 8), cells_per_block=(2, 2),
                       visualize=True, channel_axis=2)[1]


def skimage_descriptor(frame: np.ndarray) -> np.ndarray:
    """The same call without the rendering: the descriptor only (not what VIOLETv2 uses)."""
    return skimage_hog(imagenet_normalise(frame), orientations=9, pixels_per_cell=(8, 8), cells_per_block=(2, 2),
                       channel_axis=2)


def skimage_maskfeat(frame: np.ndarray) -> list[np.ndarray]:
    unit = unit_scale(frame)
    return [skimage_hog(unit[..., ch], orientations=9, pixels_per_cell=(8, 8), cells_per_block=(1, 1),
                        block_norm="L2", feature_vector=False) for ch in range(3)]


def run(content: str, num_frames: int, skimage_frames: int, repeats: int) -> list[dict] | None:
    frames = frames_for(content, num_frames)
    if frames is None:
        return None
    clips = frames.reshape(num_frames // T, T, SIZE, SIZE, 3)
    few = frames[:skimage_frames]
    anchor = cv2.HOGDescriptor((SIZE, SIZE), (16, 16), (8, 8), (8, 8), 9)
    people = cv2.HOGDescriptor()
    threads = numba.get_num_threads()
    rows: list[tuple[str, int, int, Callable[[], object]]] = []  # name, frames, threads, fn
    for variant in ("paper", "maskfeat"):
        target = build_hog(variant)
        rows.append((f"hog:{variant}", num_frames, threads, lambda t=target: t.compute(clips)))
    for variant in ("paper", "maskfeat"):
        target = build_hog(variant)
        rows.append((f"hog:{variant} (1 thread)", num_frames, 1, lambda t=target: t.compute(clips)))
    rows.append((ANCHOR, num_frames, 1, per_frame(anchor.compute, frames)))
    rows.append(("cv2 HOGDescriptor default 64x128 window", skimage_frames, 1, per_frame(people.compute, few)))
    rows.append(("skimage paper (official path)", skimage_frames, 1, per_frame(skimage_paper, few)))
    rows.append(("skimage paper, descriptor only (no rendering)", skimage_frames, 1,
                 per_frame(skimage_descriptor, few)))
    rows.append(("skimage maskfeat (3 x 1-channel)", skimage_frames, 1, per_frame(skimage_maskfeat, few)))

    # Round robin: repeat r of every method runs before repeat r + 1 of any, so that a burst of load
    # from other jobs on the machine hits all methods alike instead of whichever ran during it.
    measured: dict[str, list[float]] = {name: [] for name, *_ in rows}
    for repeat in range(repeats + 1):  # the first round is the warm-up (JIT cache load, caches)
        for name, n, num_threads, fn in rows:
            numba.set_num_threads(num_threads if name.startswith("hog:") else threads)
            start = time.perf_counter()
            fn()
            if repeat:
                measured[name].append(n / (time.perf_counter() - start))
    numba.set_num_threads(threads)
    results = [{"content": content, "method": name, "frames": n, "threads": num_threads,
                "best_fps": max(measured[name]), "median_fps": statistics.median(measured[name])}
               for name, n, num_threads, _ in rows]
    anchor_fps = next(r["best_fps"] for r in results if r["method"] == ANCHOR)
    anchor_median = next(r["median_fps"] for r in results if r["method"] == ANCHOR)
    for r in results:
        r["best_vs_anchor"] = r["best_fps"] / anchor_fps
        r["median_vs_anchor"] = r["median_fps"] / anchor_median
    return results


def print_table(results: list[dict]) -> None:
    print(f"  {'method':<46} {'frames':>6} {'thr':>3} {'best fps':>9} {'median fps':>10} {'vs anchor':>10}")
    for r in results:
        print(f"  {r['method']:<46} {r['frames']:>6} {r['threads']:>3} {r['best_fps']:>9.0f} "
              f"{r['median_fps']:>10.0f} {r['median_vs_anchor']:>9.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=256, help="frames per timed run (a multiple of 4)")
    parser.add_argument("--skimage-frames", type=int, default=16, help="frames for the slow skimage/default-cv2 rows")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--content", nargs="+", default=["synthetic", "noise"], choices=["synthetic", "noise", "video"])
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if args.frames % T:
        parser.error(f"--frames must be a multiple of {T}")

    load_before = os.getloadavg()[0]
    print(f"HOG targets at {SIZE}x{SIZE}: numba {numba.__version__} ({numba.get_num_threads()} threads), "
          f"skimage {skimage.__version__}, opencv {cv2.__version__}, {os.cpu_count()} cores, "
          f"load average before {load_before:.2f}")
    print(f"anchor: {ANCHOR} (16x16 blocks, 8x8 stride and cells, 9 bins); 'vs anchor' compares medians")
    all_results = []
    for content in args.content:
        results = run(content, args.frames, args.skimage_frames, args.repeats)
        if results is None:
            print(f"[{content}] skipped: no video under {SHARED_VIDEOS}")
            continue
        print(f"[{content}]")
        print_table(results)
        all_results.extend(results)
    # a busy machine (other jobs on the same cores) shows up here and explains noisy numbers
    print(f"load average after {os.getloadavg()[0]:.2f}; numba threading layer {numba.threading_layer()}")
    write_json(str(args.json) if args.json else None,
               {"benchmark": "hog", "size": SIZE, "anchor": ANCHOR, "load_average_before": load_before,
                "numba_threads": numba.get_num_threads(), "skimage": skimage.__version__, "opencv": cv2.__version__,
                "results": all_results})


if __name__ == "__main__":
    main()
