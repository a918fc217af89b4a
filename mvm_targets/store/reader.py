"""Read clips back by key: the frames plus any set of cached targets.

Safe with DataLoader workers: the index (key -> shard, row) is built from short-lived handles
before any fork, and HDF5 files are opened lazily, per process, on first access. A damaged shard
(truncated, or a chunk failing its checksum) raises `DamagedShardError` naming the file and clip.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np

from mvm_targets.store import schema
from mvm_targets.store.damage import open_shard, read
from mvm_targets.store.layout import DEFAULT_CACHE, open_clip_cache
from mvm_targets.store.manifest import read_manifest
from mvm_targets.store.shard_set import ShardSet


@dataclass(frozen=True)
class _Location:
    shard: Path
    row: int


class CacheReader:
    """`reader[key]` -> {"frames": (T, S, S, 3) uint8, "<target>": data, "<target>/<extra>": ..., "captions": [...]}.

    Args:
        cache_root: the cache folder (default `cache/`).
        dataset: the dataset name (a folder under the cache root).
        targets: target references to load with each clip, e.g. ["hog", "flow:dis"]; "pixel"
            maps to the frames, as a (T, 3, S, S) uint8 array.
        frames_id: which sampling configuration, when the dataset has several.
    Only keys present in the frames and in every requested target are listed in `keys`.
    """

    def __init__(self, cache_root: Path = DEFAULT_CACHE, dataset: str = "synthetic",
                 targets: Sequence[str] = (), frames_id: str | None = None):
        self.clip_cache = open_clip_cache(Path(cache_root), dataset, frames_id)
        self.target_refs = [t for t in targets if t != "pixel"]
        self.include_pixel = "pixel" in targets
        sets = {"frames": self.clip_cache.frames}
        sets.update({ref: self.clip_cache.resolve_target(ref) for ref in self.target_refs})
        self._index = {name: _index_set(shard_set) for name, shard_set in sets.items()}
        common = set.intersection(*(set(index) for index in self._index.values()))
        self.keys = sorted(common)
        self.captions = {k: r["captions"] for k, r in read_manifest(self.clip_cache.manifest_path).items()}
        self._handles: dict[Path, h5py.File] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, item: int | str) -> dict:
        key = self.keys[item] if isinstance(item, (int, np.integer)) else item
        at = self._index["frames"][key]
        handle = self._open(at.shard)
        clip = {
            "key": key,
            "frames": read(handle, schema.DATA, at.row, at.shard, key),
            "frame_indices": read(handle, schema.FRAME_INDICES, at.row, at.shard, key),
            "timestamps": read(handle, schema.TIMESTAMPS, at.row, at.shard, key),
            "captions": list(self.captions.get(key, [])),
        }
        if self.include_pixel:
            clip["pixel"] = np.ascontiguousarray(clip["frames"].transpose(0, 3, 1, 2))
        for ref in self.target_refs:
            at = self._index[ref][key]
            target_handle = self._open(at.shard)
            clip[ref] = read(target_handle, schema.DATA, at.row, at.shard, key)
            for name in target_handle.get(schema.EXTRAS_GROUP, {}):
                clip[f"{ref}/{name}"] = read(target_handle, f"{schema.EXTRAS_GROUP}/{name}", at.row, at.shard, key)
        return clip

    def attrs(self, ref: str = "frames") -> dict:
        """The self-description of a set (its first shard's attributes, JSON fields decoded)."""
        location = next(iter(self._index[ref].values()))
        with open_shard(location.shard) as handle:
            return {k: _decode_attr(v) for k, v in handle.attrs.items()}

    def _open(self, path: Path) -> h5py.File:
        if os.getpid() != self._pid:  # forked into a DataLoader worker: never reuse the parent's handles
            self._handles, self._pid = {}, os.getpid()
        handle = self._handles.get(path)
        if handle is None:
            handle = self._handles[path] = open_shard(path)
        return handle

    def close(self) -> None:
        for handle in self._handles.values():
            handle.close()
        self._handles = {}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_handles": {}}  # spawned workers reopen lazily


def _index_set(shard_set: ShardSet) -> dict[str, _Location]:
    index = {}
    for shard_name, keys in shard_set.keys_by_shard().items():
        for row, key in enumerate(keys):
            index.setdefault(key, _Location(shard_set.directory / shard_name, row))
    return index


def _decode_attr(value):
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str) and value[:1] in "{[":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value.item() if isinstance(value, np.generic) else value
