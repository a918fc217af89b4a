"""Shard commits in a background thread, so that computing the next batch overlaps writing the last.

`extract` hands over its buffered clips one flush at a time. The flush is committed set by set
through `ShardSet.commit` (shard and ledger lines under the set's lock, exactly as a commit in the
main thread would be) by a writer thread, while the main loop decodes and computes on. At most one
flush is in flight: handing over the next one first waits for it, which bounds memory to two
buffers. The thread writes the shard sets, the ledger (under its file lock, which also orders its
lines with the failure lines the main loop appends) and the flush it was given, nothing else; the
caller collects the flush with `wait()` and updates its own counters from it, so no counter is
ever updated by two threads.

A flush that failed keeps the records it did not commit (the failing set and the ones after it), so
the caller can leave them buffered, as a failed commit in the main thread would have, and its error
is raised again in the main thread. Python runs signal handlers in the main thread only, so Ctrl-C
never stops a commit halfway: the main thread stops, waits for the commit in flight and commits what
it had buffered (extract's `finally`). The thread is not a daemon, so even a second Ctrl-C that ends
the process lets the commit in flight finish rather than cutting it off.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from mvm_targets.store.ledger import Ledger, LedgerEntry
from mvm_targets.store.shard_set import ClipRecord, CommitResult, ShardSet


@dataclass
class Flush:
    """One hand-over. `records`: set id -> records not committed yet (the writer thread removes a set
    once it is committed and in the ledger); `clips`: key -> the sets that clip was missing."""

    records: dict[str, list[ClipRecord]]
    clips: dict[str, set[str]]
    bytes_written: int = 0
    busy: float = 0.0  # seconds the writer thread spent committing it
    waited: float = 0.0  # seconds the caller blocked in `wait()` for it
    error: BaseException | None = None  # what the commit raised, if it failed

    def commit_all(self, commit_set: Callable[[str, list[ClipRecord]], int]) -> None:
        """Commit every set in order; `commit_set(set_id, records)` returns the bytes it wrote."""
        for set_id in list(self.records):
            started = time.perf_counter()
            try:
                self.bytes_written += commit_set(set_id, self.records[set_id])
            finally:
                self.busy += time.perf_counter() - started
            del self.records[set_id]


class ShardWriter:
    """Commits `Flush`es to their shard sets, one at a time, in a background thread."""

    def __init__(self, sets: dict[str, ShardSet], attrs: dict[str, dict[str, Any]], compression: str | None,
                 ledger: Ledger):
        self.sets, self.attrs, self.compression, self.ledger = sets, attrs, compression, ledger
        self._flush: Flush | None = None
        self._thread: threading.Thread | None = None

    def commit_set(self, set_id: str, records: list[ClipRecord]) -> int:
        """Commit one set's records as a shard with their ledger lines (appended under the set's lock;
        if that append fails the shard is withdrawn), so shards and ledger agree even when a full
        disk stops us between two sets. Returns the bytes written."""

        def record_done(result: CommitResult) -> None:
            # keys missing from `result` were committed meanwhile by another process, in another shard
            self.ledger.append(LedgerEntry(r.key, set_id, "done", shard=result.shard.name
                                           if r.key in result.keys else "") for r in records)

        result = self.sets[set_id].commit(records, self.attrs[set_id], self.compression, on_commit=record_done)
        if result.shard is None:  # every clip was committed by another process meanwhile
            self.ledger.append(LedgerEntry(r.key, set_id, "done") for r in records)
        return result.bytes_written

    def start(self, flush: Flush) -> None:
        """Commit `flush` in the background. The previous one must have been collected with `wait()`."""
        if self._flush is not None:
            raise RuntimeError("a flush is still in flight: wait() for it first")
        thread = threading.Thread(target=self._run, args=(flush,), name="shard-writer")
        self._flush, self._thread = flush, thread
        thread.start()

    def _run(self, flush: Flush) -> None:
        try:
            flush.commit_all(self.commit_set)
        except BaseException as error:  # noqa: BLE001 - handed to the main thread, which raises it
            flush.error = error

    def wait(self) -> Flush | None:
        """Block until the flush in flight is written; return it (None if there was none).

        Its `error` is what the commit raised, its `records` what it did not commit, and `waited` the
        seconds this call blocked. A KeyboardInterrupt while waiting leaves the flush in flight, so
        a later `wait()` collects it.
        """
        flush, thread = self._flush, self._thread
        if flush is None or thread is None:
            return None
        started = time.perf_counter()
        try:
            thread.join()
        except RuntimeError:
            # A Ctrl-C interrupted start() before the thread said it runs: its records come back for
            # the caller to keep buffered. Should the thread run after all, the commits race under
            # the set's lock and the later one finds the clips committed: nothing is stored twice.
            pass
        flush.waited += time.perf_counter() - started
        self._flush = self._thread = None
        return flush
