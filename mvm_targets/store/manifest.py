"""The dataset manifest: key -> source path and captions, appended by extract, latest line wins."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

from mvm_targets.store.locking import exclusive_lock
from mvm_targets.video.inputs import VideoItem


def update_manifest(path: Path, items: Iterable[VideoItem]) -> int:
    """Append entries whose path or captions changed; returns how many lines were written."""
    known = read_manifest(path)
    lines = []
    for item in items:
        record = {"key": item.key, "path": str(item.path), "captions": list(item.captions)}
        if known.get(item.key) != record:
            lines.append(json.dumps(record) + "\n")
    if lines:
        path.parent.mkdir(parents=True, exist_ok=True)
        with exclusive_lock(path.with_name(path.name + ".lock")), path.open("a") as handle:
            handle.writelines(lines)
            handle.flush()
            os.fsync(handle.fileno())
    return len(lines)


def read_manifest(path: Path) -> dict[str, dict]:
    """{key: {"key", "path", "captions"}}; a torn last line from a killed writer is ignored."""
    if not Path(path).exists():
        return {}
    records = {}
    for line in Path(path).read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        records[record["key"]] = record
    return records
