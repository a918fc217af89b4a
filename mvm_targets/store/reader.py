"""Read clips back by key: the frames plus any set of cached targets.

Safe with DataLoader workers: the index (key -> shard, row) is built from short-lived handles
before any fork, and HDF5 files are opened lazily, per process, on first access. A damaged shard
(truncated, or a chunk failing its checksum) raises `DamagedShardError` naming the file and clip.
A target stored with a codec other than the default (store/codecs.py) is decoded here: its values
come back as float32 of the target's own shape.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import h5py
import numpy as np

from mvm_targets.errors import InputError
from mvm_targets.store import schema
from mvm_targets.store.codecs import Codec, codec_of_record
from mvm_targets.store.damage import open_shard, read
from mvm_targets.store.layout import DEFAULT_CACHE, ClipCache, open_clip_cache
from mvm_targets.store.manifest import read_manifest
from mvm_targets.store.selection import describe_options, options_for
from mvm_targets.store.shard_set import ShardSet
from mvm_targets.targets.spec import StoredSpec, TargetSpec


@dataclass(frozen=True)
class _Location:
    shard: Path
    row: int


class CacheReader:
    """`reader[key]` -> {"frames": (T, S, S, 3) uint8, "<ref>": data, "<ref>/<extra>": ..., "captions": [...]}.

    Args:
        cache_root: the cache folder (default `cache/`).
        dataset: the dataset name (a folder under the cache root).
        targets: target references to load with each clip, e.g. ["hog", "flow:dis"]. A reference is
            resolved against the specs stamped into the cached sets; one that no set holds may name a
            target whose module declares it is not stored (`stored=False`): its data is then derived
            from the clip's frames by the module's `derive` function.
        frames_id: which sampling configuration, when the dataset has several.
        options: the run's per-target options, keyed by reference or target name (e.g. {"<name>":
            {"codec": "int8"}}), which pick among several cached sets of one reference the one they
            would have written (`ClipCache.find_target`, store/selection.py); None resolves the
            references alone. A target derived from the frames takes no options.
    Only keys present in the frames and in every requested stored target are listed in `keys`.
    """

    def __init__(self, cache_root: Path = DEFAULT_CACHE, dataset: str = "synthetic",
                 targets: Sequence[str] = (), frames_id: str | None = None,
                 options: Mapping[str, Mapping[str, Any]] | None = None):
        self.clip_cache = open_clip_cache(Path(cache_root), dataset, frames_id)
        sets = {"frames": self.clip_cache.frames}
        self._derived: dict[str, TargetSpec] = {}
        for ref in dict.fromkeys(targets):
            found = self.clip_cache.find_target(ref, options)
            if found is not None:
                sets[ref] = found
            else:
                self._derived[ref] = _derived_spec(self.clip_cache, ref, options)
        self.target_refs = [ref for ref in sets if ref != "frames"]  # the refs read from shards
        self._codecs = {ref: _stored_codec(self.clip_cache, sets[ref]) for ref in self.target_refs}
        self.derived_refs = list(self._derived)  # the refs made from the frames
        self._index = {name: _index_set(shard_set) for name, shard_set in sets.items()}
        self._sets = sets
        common = set.intersection(*(set(index) for index in self._index.values()))
        self.keys = sorted(common)
        self.captions = {k: r["captions"] for k, r in read_manifest(self.clip_cache.manifest_path).items()}
        self._handles: dict[Path, h5py.File] = {}
        self._pid = os.getpid()

    def spec(self, ref: str) -> StoredSpec:
        """The stored spec of a loaded reference (for a derived one, its module's spec at the cached T, S)."""
        if ref in self._derived:
            sampling = self.attrs("frames")["sampling"]
            return self._derived[ref].stored_spec(int(sampling["num_frames"]), int(sampling["size"]))
        if ref not in self._sets or ref == "frames":
            raise KeyError(f"target '{ref}' is not loaded by this reader (loaded: {', '.join(self.target_refs)})")
        return StoredSpec.from_record(self.attrs(ref)["target_spec"])

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
        for ref, spec in self._derived.items():
            clip[ref] = spec.derive(clip["frames"])
        for ref in self.target_refs:
            at = self._index[ref][key]
            target_handle = self._open(at.shard)
            clip[ref] = read(target_handle, schema.DATA, at.row, at.shard, key)
            codec = self._codecs.get(ref)
            if codec is not None:
                codec_value, grid = codec
                side = {name: read(target_handle, f"{schema.CODEC_GROUP}/{name}", at.row, at.shard, key)
                        for name in target_handle.get(schema.CODEC_GROUP, {})}
                clip[ref] = codec_value.decode(clip[ref], side, grid)
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


def _derived_spec(clip_cache: ClipCache, ref: str, options: Mapping[str, Mapping[str, Any]] | None) -> TargetSpec:
    """The spec of a target that is never stored, whose module derives it from the frames; any other
    uncached reference is the store's one-line 'no cached target' error."""
    from mvm_targets.targets.registry import derived_spec

    spec = derived_spec(ref)
    if spec is None:
        clip_cache.resolve_target(ref, options)  # raises: no such cached set
        raise AssertionError(f"{ref} resolved after find_target found nothing")
    own = options_for(options, ref)
    if own:  # its values are the frames' own: there is no stored set for options to pick
        raise InputError(f"target '{ref}' is derived from the cached frames and takes no options "
                         f"(got {describe_options(own)})")
    return spec


def _stored_codec(clip_cache: ClipCache, shard_set: ShardSet) -> tuple[Codec, str] | None:
    """(codec, grid) of a set whose values need decoding; None for the default codec (read as stored)."""
    if not shard_set.shards():
        return None  # an empty set holds no clip to decode
    spec = clip_cache.stored_spec(shard_set, declarations=False)
    codec = codec_of_record(spec.record)
    return None if codec.is_default else (codec, spec.grid.value)


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
