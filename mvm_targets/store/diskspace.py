"""A full disk as one line: detect ENOSPC behind whatever a writer raised, and say what was needed.

Writers wrap their failures with `raise_if_out_of_space(error, path, needed)`: when the error (or
any error it was raised from or during) is ENOSPC or EDQUOT, it becomes an `OutOfSpaceError`
naming the file, roughly how many bytes writing it needed and how many are free. Libraries hide
the errno in different places: Python's own writes set it, torch wraps a failed file write into a
RuntimeError whose context is the OSError, and HDF5 puts "errno = 28" into its message text.
"""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path
from typing import Any

from mvm_targets.errors import MvmTargetsError

_FULL = {errno.ENOSPC, errno.EDQUOT}
_HDF5_ERRNO = re.compile(r"errno = (\d+)")


class OutOfSpaceError(MvmTargetsError, OSError):
    """The disk (or quota) is full. An OSError with errno ENOSPC, so OSError handlers see it too."""

    def __init__(self, path: Path, needed: int | None, hint: str = ""):
        self.path, self.needed = Path(path), needed
        free = free_bytes(self.path)
        need = f"needs about {format_bytes(needed)}" if needed else "needs more space"
        have = f", {format_bytes(free)} free" if free is not None else ""
        message = f"{self.path}: out of disk space ({need}{have}){'; ' + hint if hint else ''}"
        OSError.__init__(self, errno.ENOSPC, message)
        self.message = message

    def __str__(self) -> str:
        return self.message


def is_out_of_space(error: BaseException | None) -> bool:
    """True when `error`, or an exception it was raised from or while handling, is a full disk."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in _FULL:
            return True
        match = _HDF5_ERRNO.search(str(error))
        if match and int(match.group(1)) in _FULL:
            return True
        error = error.__cause__ or error.__context__
    return False


def raise_if_out_of_space(error: BaseException, path: Path, needed: int | None, hint: str = "") -> None:
    """Raise `OutOfSpaceError` (from None: the one line says it all) if `error` is a full disk."""
    if isinstance(error, OutOfSpaceError):
        raise error
    if is_out_of_space(error):
        raise OutOfSpaceError(path, needed, hint) from None


def free_bytes(path: Path) -> int | None:
    """Bytes available to this user on the file system holding `path` (or its nearest parent)."""
    for candidate in [Path(path), *Path(path).parents]:
        try:
            stats = os.statvfs(candidate)
        except OSError:
            continue
        return stats.f_bavail * stats.f_frsize
    return None


def nbytes_of(value: Any) -> int:
    """Bytes of every array or tensor inside nested dicts, lists and tuples (a save's rough size)."""
    if isinstance(value, dict):
        return sum(nbytes_of(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(nbytes_of(v) for v in value)
    return int(getattr(value, "nbytes", 0) or 0)


def format_bytes(count: int | None) -> str:
    if count is None:
        return "unknown"
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{count} bytes"
