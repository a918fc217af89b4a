"""A shard set: the folder of HDF5 shards holding one target (or the frames) for one dataset.

Commits are atomic and exclusive: under the set's lock, the writer drops clips another process
has committed meanwhile, writes `.shard-N.h5.tmp`, flushes and fsyncs it, renames it to
`shard-N.h5` and fsyncs the folder. A reader therefore only ever sees whole shards, a SIGKILL
leaves at most a temporary file (removed by the next commit), and no key is stored twice.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from mvm_targets.store import schema
from mvm_targets.store.locking import exclusive_lock, fsync_path

_SHARD_NUMBER = re.compile(r"shard-(\d+)\.h5$")


@dataclass
class ClipRecord:
    """One clip's arrays for one set: `data` plus optional per-clip extras."""

    key: str
    data: np.ndarray
    frame_indices: np.ndarray  # (T,)
    timestamps: np.ndarray  # (T,)
    source: dict[str, Any]
    extras: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True)
class CommitResult:
    shard: Path | None  # None when every clip was already committed by someone else
    keys: tuple[str, ...]
    bytes_written: int


class ShardSet:
    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self._keys_by_shard: dict[str, tuple[str, ...]] = {}

    @property
    def set_id(self) -> str:
        return self.directory.name

    def shards(self) -> list[Path]:
        """Committed shard files, in commit order."""
        if not self.directory.is_dir():
            return []
        return sorted(self.directory.glob(schema.SHARD_GLOB), key=_shard_number)

    def keys_by_shard(self) -> dict[str, tuple[str, ...]]:
        """{shard file name: keys}; shards are immutable, so each one is read once per process."""
        current = {p.name: p for p in self.shards()}
        for name in list(self._keys_by_shard):
            if name not in current:
                del self._keys_by_shard[name]
        for name, path in current.items():
            if name not in self._keys_by_shard:
                with h5py.File(path, "r") as handle:
                    self._keys_by_shard[name] = tuple(k.decode() for k in handle[schema.KEYS][()])
        return dict(self._keys_by_shard)

    def committed_keys(self) -> set[str]:
        return {key for keys in self.keys_by_shard().values() for key in keys}

    def commit(self, records: list[ClipRecord], attrs: dict[str, Any], compression: str | None) -> CommitResult:
        """Atomically add the records not yet in the set as one new shard."""
        self.directory.mkdir(parents=True, exist_ok=True)
        with exclusive_lock(self.directory / ".lock"):
            for stale in self.directory.glob(".shard-*.tmp"):
                stale.unlink()  # only a writer that died while holding this lock leaves these
            committed = self.committed_keys()
            fresh, seen = [], set()
            for record in records:
                if record.key not in committed and record.key not in seen:
                    fresh.append(record)
                    seen.add(record.key)
            if not fresh:
                return CommitResult(None, (), 0)
            number = max((_shard_number(p) for p in self.shards()), default=-1) + 1
            final = self.directory / f"shard-{number:06d}.h5"
            temporary = self.directory / f".{final.name}.tmp"
            _write_shard(temporary, fresh, {**attrs, "set_id": self.set_id}, compression)
            fsync_path(temporary)
            temporary.replace(final)
            fsync_path(self.directory)
            self._keys_by_shard[final.name] = tuple(r.key for r in fresh)
            return CommitResult(final, tuple(r.key for r in fresh), final.stat().st_size)


def _shard_number(path: Path) -> int:
    match = _SHARD_NUMBER.search(path.name)
    return int(match.group(1)) if match else -1


def _write_shard(path: Path, records: list[ClipRecord], attrs: dict[str, Any], compression: str | None) -> None:
    """Write N clips: every per-clip dataset is chunked one clip per chunk."""
    with h5py.File(path, "w", libver="latest") as handle:
        for name, value in attrs.items():
            handle.attrs[name] = value if isinstance(value, (int, float, str, np.integer)) else json.dumps(value)
        handle.attrs["schema_version"] = schema.SCHEMA_VERSION
        handle.attrs["num_clips"] = len(records)
        string = h5py.string_dtype("utf-8")
        handle.create_dataset(schema.KEYS, data=np.array([r.key for r in records], dtype=object), dtype=string)
        handle.create_dataset(schema.SOURCES, data=np.array([json.dumps(r.source, sort_keys=True) for r in records],
                                                            dtype=object), dtype=string)
        _per_clip_dataset(handle, schema.DATA, [r.data for r in records], compression)
        _per_clip_dataset(handle, schema.FRAME_INDICES, [r.frame_indices for r in records], None)
        _per_clip_dataset(handle, schema.TIMESTAMPS, [r.timestamps for r in records], None)
        for extra in records[0].extras:
            _per_clip_dataset(handle.require_group(schema.EXTRAS_GROUP), extra,
                              [r.extras[extra] for r in records], None)
        handle.flush()


def _per_clip_dataset(group: h5py.Group, name: str, arrays: list[np.ndarray], compression: str | None) -> None:
    stacked = np.stack(arrays)
    group.create_dataset(name, data=stacked, chunks=(1, *stacked.shape[1:]) if stacked.ndim > 1 else None,
                         compression=compression)
