"""The dataset manifest: key -> source path and captions, appended by extract, latest line wins.

A key keeps one caption set: an extraction that gives a recorded key other captions is an error (it
would silently replace the captions earlier runs trained on); one that gives none keeps the recorded
ones. A changed path (the dataset moved, or another working directory) is recorded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from mvm_targets.errors import InputError
from mvm_targets.store.diskspace import raise_if_out_of_space
from mvm_targets.store.files import append_text
from mvm_targets.store.locking import exclusive_lock
from mvm_targets.video.inputs import VideoItem, shorten_captions


def update_manifest(path: Path, items: Iterable[VideoItem]) -> int:
    """Append entries whose path or captions changed; returns how many lines were written."""
    known = read_manifest(path)
    lines = []
    for item in items:
        record = {"key": item.key, "path": str(item.path), "captions": list(item.captions)}
        seen = known.get(item.key)
        if seen is not None and seen.get("captions") and not item.captions:
            record["captions"] = list(seen["captions"])
        elif seen is not None and seen.get("captions") and set(seen["captions"]) != set(item.captions):
            raise InputError(f"{path}: key '{item.key}' is recorded with other captions "
                             f"({shorten_captions(seen['captions'])}, now {shorten_captions(item.captions)}); "
                             "a dataset keeps one caption set per key: extract this input into another --dataset")
        if seen != record:
            lines.append(json.dumps(record) + "\n")
    if lines:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with exclusive_lock(path.with_name(path.name + ".lock")):
                append_text(path, "".join(lines))
        except OSError as error:
            raise_if_out_of_space(error, path, sum(len(line.encode()) for line in lines), "free some space and rerun")
            raise
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
