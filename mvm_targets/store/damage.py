"""Opening and reading shards so that a damaged one is a one-line error naming the file and the fix.

HDF5 reports damage in several ways: a truncated file or a bad superblock fails the open
(OSError), a bad object header or chunk index fails opening a dataset (KeyError, "incorrect
metadata checksum"), a chunk whose Fletcher-32 checksum does not match fails the read (OSError,
"filter returned failure"). Every one of them becomes `DamagedShardError`.
"""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import h5py

from mvm_targets.errors import MvmTargetsError

REPAIR_HINT = "run `mvmtargets verify --repair`, then rerun extract to restore its clips"

# What h5py raises for a damaged file; a missing file (ENOENT) is reported as such, not as damage.
DAMAGE_ERRORS = (OSError, KeyError, RuntimeError, ValueError)


class DamagedShardError(MvmTargetsError):
    """`<path>: damaged shard (<reason>); run ...`.

    Also constructible from its message alone, as unpickling does and as PyTorch does when a
    DataLoader worker raised it (the message then is the worker's whole traceback, whose last line
    is the original one line: that line is kept, so the error still reads as one line).
    """

    def __init__(self, path: Path | str, reason: str | None = None):
        if reason is None:
            lines = [line for line in str(path).splitlines() if line.strip()]
            message = lines[-1] if lines else ""
            prefix = f"{type(self).__module__}.{type(self).__name__}: "
            message = message[len(prefix):] if message.startswith(prefix) else message
            where, _, rest = message.partition(": damaged shard (")
            self.path, self.reason = Path(where), rest.rsplit(f"); {REPAIR_HINT}", 1)[0]
            super().__init__(message)
            return
        self.path, self.reason = Path(path), reason
        super().__init__(f"{self.path}: damaged shard ({reason}); {REPAIR_HINT}")


def first_line(error: BaseException) -> str:
    text = str(error).strip("'\"")
    return (text.splitlines() or [type(error).__name__])[0][:200]


def is_missing(error: BaseException) -> bool:
    return isinstance(error, FileNotFoundError) or (isinstance(error, OSError) and error.errno == errno.ENOENT)


def open_shard(path: Path) -> h5py.File:
    """`h5py.File(path, "r")`, with damage raised as `DamagedShardError`."""
    try:
        return h5py.File(path, "r")
    except DAMAGE_ERRORS as error:
        if is_missing(error):
            raise
        raise DamagedShardError(path, first_line(error)) from None


def read(handle: h5py.File | h5py.Group, name: str, index: Any, path: Path, key: str | None = None) -> Any:
    """`handle[name][index]`, with damage raised as `DamagedShardError` naming the dataset (and clip)."""
    try:
        return handle[name][index]
    except DAMAGE_ERRORS as error:
        where = f"{name}" + (f" of clip '{key}'" if key is not None else "")
        raise DamagedShardError(path, f"cannot read {where}: {first_line(error)}") from None
