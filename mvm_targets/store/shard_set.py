"""A shard set: the folder of HDF5 shards holding one target (or the frames) for one dataset.

Commits are atomic and exclusive: under the set's lock, the writer drops clips another process
has committed meanwhile, writes `.shard-N.h5.tmp`, fsyncs it, renames it to `shard-N.h5` and
fsyncs the folder. A reader therefore only ever sees whole shards, a SIGKILL leaves at most a
temporary file (removed by the next commit), and no key is stored twice.

The shard is built in memory (HDF5's core driver) and written with plain `os.write` calls. HDF5
never writes to the disk itself because its write errors cannot be trusted: a dataset handle is
closed when h5py garbage-collects it, where an error (ENOSPC while flushing the chunk cache) can
only be printed, not raised; the file then looked written, was renamed into place with holes that
read back as zeros, and HDF5's next flush of that file, or its close at exit, crashed with a
segmentation fault. Written from memory, a full disk is one OSError (ENOSPC), the temporary file
is removed, and nothing is committed.

Every dataset is chunked and carries HDF5's Fletcher-32 checksum per chunk (one clip per chunk),
so a flipped byte anywhere in the data makes that chunk's read fail instead of returning wrong
values; `verify` reads every chunk.
"""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import h5py
import numpy as np

from mvm_targets.store import schema
from mvm_targets.store.codecs import codec_of_attrs
from mvm_targets.store.damage import open_shard, read
from mvm_targets.store.diskspace import raise_if_out_of_space
from mvm_targets.store.files import write_new_file
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
                with open_shard(path) as handle:
                    self._keys_by_shard[name] = tuple(k.decode() for k in read(handle, schema.KEYS, (), path))
        return dict(self._keys_by_shard)

    def committed_keys(self) -> set[str]:
        return {key for keys in self.keys_by_shard().values() for key in keys}

    def commit(self, records: list[ClipRecord], attrs: dict[str, Any], compression: str | None,
               on_commit: Callable[[CommitResult], None] | None = None) -> CommitResult:
        """Atomically add the records not yet in the set as one new shard.

        `on_commit(result)` runs after the rename, still under the set's lock (extract appends the
        ledger there). If it raises, the new shard is removed again, so no shard is ever left that
        the ledger does not know of because of a failure we saw. A full disk raises
        `OutOfSpaceError` naming the shard and its size, with nothing left behind.
        """
        try:
            return self._commit(records, attrs, compression, on_commit)
        except OSError as error:  # mkdir, lock file, rename, fsync: any of them can meet a full disk
            raise_if_out_of_space(error, self.directory, None, "free some space and rerun")
            raise

    def _commit(self, records: list[ClipRecord], attrs: dict[str, Any], compression: str | None,
                on_commit: Callable[[CommitResult], None] | None) -> CommitResult:
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
            image = shard_image(fresh, {**attrs, "set_id": self.set_id}, compression)
            try:
                write_new_file(temporary, image)  # removes the temporary file itself on failure
            except OSError as error:
                raise_if_out_of_space(error, final, len(image), "nothing was committed from this shard; "
                                      "free some space and rerun the same command")
                raise
            temporary.replace(final)
            fsync_path(self.directory)
            result = CommitResult(final, tuple(r.key for r in fresh), len(image))
            self._keys_by_shard[final.name] = result.keys
            if on_commit is not None:
                try:
                    on_commit(result)
                except BaseException:
                    self._withdraw(final)
                    raise
            return result

    def _withdraw(self, shard: Path) -> None:
        """Undo a commit whose bookkeeping failed (the caller holds the lock; the shard is our own)."""
        shard.unlink(missing_ok=True)
        self._keys_by_shard.pop(shard.name, None)
        with contextlib.suppress(OSError):  # the unlink stands either way; the original error is the one to report
            fsync_path(self.directory)


def _shard_number(path: Path) -> int:
    match = _SHARD_NUMBER.search(path.name)
    return int(match.group(1)) if match else -1


def shard_image(records: list[ClipRecord], attrs: dict[str, Any], compression: str | None) -> bytes:
    """The bytes of an HDF5 shard holding N clips, built in memory.

    Every per-clip dataset has the clip axis first and one clip per chunk; every dataset carries
    Fletcher-32 checksums. Keys and sources are fixed-length UTF-8 strings: variable-length
    strings live in HDF5's global heap, which no checksum covers. `data` is stored with the codec
    the stamped spec names (`attrs["target_spec"]`), its side arrays under `codec/` (store/codecs.py).
    """
    codec, spec = codec_of_attrs(attrs)
    encoded = [codec.encode(r.data, str(spec.get("grid", ""))) for r in records]
    with h5py.File(f"shard-image-{id(records)}", "w", driver="core", backing_store=False,
                   libver="latest") as handle:
        for name, value in attrs.items():
            handle.attrs[name] = value if isinstance(value, (int, float, str, np.integer)) else json.dumps(value)
        handle.attrs["schema_version"] = schema.SCHEMA_VERSION
        handle.attrs["num_clips"] = len(records)
        _string_dataset(handle, schema.KEYS, [r.key for r in records])
        _string_dataset(handle, schema.SOURCES, [json.dumps(r.source, sort_keys=True) for r in records])
        _per_clip_dataset(handle, schema.DATA, [data for data, _ in encoded], compression)
        for side in encoded[0][1]:
            _per_clip_dataset(handle.require_group(schema.CODEC_GROUP), side, [e[1][side] for e in encoded], None)
        _per_clip_dataset(handle, schema.FRAME_INDICES, [r.frame_indices for r in records], None)
        _per_clip_dataset(handle, schema.TIMESTAMPS, [r.timestamps for r in records], None)
        for extra in records[0].extras:
            _per_clip_dataset(handle.require_group(schema.EXTRAS_GROUP), extra,
                              [r.extras[extra] for r in records], None)
        handle.flush()
        return handle.id.get_file_image()


def _string_dataset(group: h5py.Group, name: str, texts: list[str]) -> None:
    """(N,) fixed-length UTF-8 strings, one per chunk. Read back as bytes, like the older variable-length ones."""
    encoded = [text.encode() for text in texts]
    width = max(1, *(len(e) for e in encoded))
    dataset = group.create_dataset(name, shape=(len(encoded),), dtype=h5py.string_dtype("utf-8", width),
                                   chunks=(1,), fletcher32=True)
    # HDF5 converts no ASCII string to UTF-8: write the bytes with the file's own type as memory type.
    dataset.id.write(h5py.h5s.ALL, h5py.h5s.ALL, np.array(encoded, dtype=f"S{width}"), mtype=dataset.id.get_type())


def _per_clip_dataset(group: h5py.Group, name: str, arrays: list[np.ndarray], compression: str | None) -> None:
    stacked = np.stack(arrays)
    group.create_dataset(name, data=stacked, chunks=(1, *stacked.shape[1:]), compression=compression,
                         fletcher32=True)
