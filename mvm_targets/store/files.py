"""Whole-or-nothing file writes: a failed write (a full disk) leaves no partial file or line behind."""

from __future__ import annotations

import errno
import os
from pathlib import Path


def write_new_file(path: Path, data: bytes) -> None:
    """Create `path` holding exactly `data`, fsynced. On any error the file is removed and the error raised.

    Space is reserved first (where the file system supports it), so a full disk fails before a
    single byte is written rather than midway.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        _reserve(fd, len(data))
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    os.close(fd)


def append_text(path: Path, text: str) -> None:
    """Append `text` and fsync; on error the file is cut back to its old length, so no torn line stays.

    The caller holds the file's lock: the length read here must not move under us.
    """
    data = text.encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        start = os.fstat(fd).st_size
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        except BaseException:
            os.ftruncate(fd, start)  # shrinking needs no space
            raise
    finally:
        os.close(fd)


def _reserve(fd: int, size: int) -> None:
    if size <= 0 or not hasattr(os, "posix_fallocate"):
        return
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as error:
        if error.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise  # ENOSPC and EDQUOT included: that is the point of reserving
