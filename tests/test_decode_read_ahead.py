"""Decode workers read ahead by a batch (mvm_targets.decode_pool.decode_in_order).

A fake process pool records how many clips were submitted and not yet handed over whenever the
caller takes one; the oracle is the window the caller asked for.
"""

from __future__ import annotations

from concurrent.futures import Future
from pathlib import Path

import pytest

import mvm_targets.decode_pool as decode_pool
from mvm_targets.video.decode import SamplingConfig
from mvm_targets.video.inputs import VideoItem


class RecordingPool:
    """Runs each submitted call at once; remembers the submissions."""
    submitted: list[str] = []

    def __init__(self, *args, **kwargs) -> None:
        pass

    def submit(self, function, item, config) -> Future:
        RecordingPool.submitted.append(item.key)
        future: Future = Future()
        future.set_result((f"decoded {item.key}", 0.0))
        return future

    def shutdown(self, *args, **kwargs) -> None:
        pass


@pytest.mark.parametrize("workers, read_ahead, window", [(1, 0, 2), (1, 8, 8), (2, 3, 4), (2, 10, 10)])
def test_clips_in_flight_never_exceed_the_asked_window_and_reach_it(monkeypatch, workers, read_ahead, window):
    monkeypatch.setattr(decode_pool, "ProcessPoolExecutor", RecordingPool)
    RecordingPool.submitted = []
    items = [VideoItem(key=f"k{i}", path=Path(f"/videos/{i}.mp4"), captions=("c",)) for i in range(20)]
    ahead = []
    for handed, (item, outcome) in enumerate(decode_pool.decode_in_order(items, SamplingConfig(), workers,
                                                                          read_ahead=read_ahead)):
        assert outcome == f"decoded {item.key}" and item.key == f"k{handed}"  # input order kept
        ahead.append(len(RecordingPool.submitted) - handed)  # submitted, this one included, not yet handed before
    assert max(ahead) == window
    assert RecordingPool.submitted == [f"k{i}" for i in range(20)]
