"""Decode videos in order, inline or in worker processes, isolating native crashes.

A decoder segfault in a worker breaks the pool; the videos that were in flight are retried in a
fresh pool, and a video that is in flight during two crashes is reported as `DecoderCrashed`.
"""

from __future__ import annotations

import collections
import multiprocessing
import time
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

from mvm_targets.errors import VideoError
from mvm_targets.video.decode import DecodedClip, SamplingConfig, decode_clip
from mvm_targets.video.inputs import VideoItem


@dataclass(frozen=True)
class DecodeFailure:
    error_class: str
    message: str


DecodeOutcome = DecodedClip | DecodeFailure


def decode_one(item: VideoItem, config: SamplingConfig) -> DecodeOutcome:
    """Never raises for a bad video: the failure comes back as a value (exceptions may not pickle)."""
    try:
        return decode_clip(item.key, item.path, config)
    except VideoError as error:
        return DecodeFailure(error.error_class, str(error))
    except Exception as error:  # an unexpected decoder error must not stop the other videos
        first_line = (str(error).splitlines() or [""])[0][:200]
        return DecodeFailure(type(error).__name__, f"{item.path}: {first_line}")


def timed_decode(item: VideoItem, config: SamplingConfig) -> tuple[DecodeOutcome, float]:
    """`decode_one` and the seconds it took where it ran (a worker's busy time, not the caller's wait)."""
    started = time.perf_counter()
    outcome = decode_one(item, config)
    return outcome, time.perf_counter() - started


def decode_in_order(items: Sequence[VideoItem], config: SamplingConfig, workers: int,
                    on_busy: Callable[[float], None] | None = None,
                    read_ahead: int = 0) -> Iterator[tuple[VideoItem, DecodeOutcome]]:
    """Yield (item, outcome) in input order; `workers` > 0 decodes ahead in that many processes.

    At most max(2 * workers, `read_ahead`) clips are submitted and not yet handed over. A caller that
    takes clips a batch at a time and then computes on the batch passes at least its batch size, so
    that the workers decode the next batch during that compute instead of idling after two clips.
    `on_busy(seconds)` receives each decode's own duration, measured in the process that decoded.
    """
    report = on_busy or (lambda seconds: None)
    if workers <= 0:
        for item in items:
            outcome, seconds = timed_decode(item, config)
            report(seconds)
            yield item, outcome
        return
    pending = collections.deque(items)
    crashes: collections.Counter[str] = collections.Counter()
    in_flight: collections.deque[tuple[VideoItem, Future]] = collections.deque()
    # spawn, not fork: a pool rebuilt after a crash would otherwise fork a process whose numba
    # OpenMP runtime (used by the HOG kernels) is not fork-safe.
    context = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=context)
    try:
        while pending or in_flight:
            while pending and len(in_flight) < max(2 * workers, read_ahead):
                item = pending.popleft()
                in_flight.append((item, pool.submit(timed_decode, item, config)))
            item, future = in_flight.popleft()
            try:
                outcome, seconds = future.result()
            except BrokenProcessPool:
                victims = [item] + [i for i, _ in in_flight]
                in_flight.clear()
                pool.shutdown(wait=False, cancel_futures=True)
                pool = ProcessPoolExecutor(max_workers=workers, mp_context=context)
                retry = []
                for victim in victims:
                    crashes[victim.key] += 1
                    if crashes[victim.key] >= 2:
                        yield victim, DecodeFailure("DecoderCrashed", f"{victim.path}: the decoder process crashed")
                    else:
                        retry.append(victim)
                pending.extendleft(reversed(retry))
                continue
            report(seconds)
            yield item, outcome
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
