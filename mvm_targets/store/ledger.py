"""The JSONL ledger: one line per (key, set) event, the latest line wins.

Appends happen under an flock and are fsynced. A process killed mid-write can leave one partial
last line; readers skip it (and only it: a malformed line anywhere else is reported by verify).
An append that fails (a full disk) is cut back to the old length, so it never leaves one.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Literal

from mvm_targets.store.diskspace import raise_if_out_of_space
from mvm_targets.store.files import append_text
from mvm_targets.store.locking import exclusive_lock

# "redo": `verify --repair` moved the clip's shard to quarantine; the next extract computes it again.
Status = Literal["done", "failed", "skipped", "redo"]


@dataclass(frozen=True)
class LedgerEntry:
    key: str
    set_id: str
    status: Status
    error_class: str = ""
    message: str = ""
    shard: str = ""
    seconds: float = 0.0
    writer: str = ""
    time: float = 0.0


def writer_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Ledger:
    def __init__(self, path: Path):
        self.path = Path(path)

    def append(self, entries: Iterable[LedgerEntry]) -> None:
        stamp, writer = time.time(), writer_id()
        lines = "".join(json.dumps({**asdict(e), "time": e.time or stamp, "writer": e.writer or writer}) + "\n"
                        for e in entries)
        if not lines:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with exclusive_lock(self.path.with_name(self.path.name + ".lock")):
                append_text(self.path, lines)  # all lines or none: a failed append is cut back
        except OSError as error:
            raise_if_out_of_space(error, self.path, len(lines.encode()), "free some space and rerun")
            raise

    def read(self) -> tuple[list[LedgerEntry], list[int]]:
        """All entries, plus the line numbers of malformed lines (a torn last line is dropped silently)."""
        if not self.path.exists():
            return [], []
        entries, malformed = [], []
        lines = self.path.read_text().split("\n")
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                entries.append(LedgerEntry(**record))
            except (json.JSONDecodeError, TypeError):
                is_torn_tail = number == len(lines)  # no trailing newline: the write was cut short
                if not is_torn_tail:
                    malformed.append(number)
        return entries, malformed

    def latest(self) -> dict[tuple[str, str], LedgerEntry]:
        """{(key, set_id): the most recent entry}."""
        return {(e.key, e.set_id): e for e in self.read()[0]}
