"""Which frames to take: the middle frame of T equal time segments.

Works on presentation timestamps, so variable-frame-rate videos are sampled by time, not by
index. For a constant frame rate with N frames this reduces to index floor((2i+1) N / (2T)).
"""

from __future__ import annotations

from bisect import bisect_right
from typing import Sequence


def segment_middle_indices(pts: Sequence[int], end_pts: int, num_frames: int) -> list[int]:
    """Indices into sorted `pts` of the frames shown at the middle of T equal segments.

    pts: presentation timestamps in stream time-base units, ascending, one per frame.
    end_pts: when the last frame stops being shown (its pts plus its duration).
    Integer arithmetic: segment middle i is at pts[0] + (2i+1)(end-pts[0]) / 2T; the chosen
    frame is the last one whose pts is <= that instant. Fewer than T frames repeat indices.
    """
    if not pts:
        raise ValueError("no frames to sample from")
    start, span, twice_t = pts[0], end_pts - pts[0], 2 * num_frames
    scaled = [p * twice_t for p in pts]
    indices = []
    for i in range(num_frames):
        instant = start * twice_t + (2 * i + 1) * span
        indices.append(max(0, bisect_right(scaled, instant) - 1))
    return indices
