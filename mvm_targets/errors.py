"""Errors that carry a short class name and a one-line reason, for the ledger and the CLI."""

from __future__ import annotations


class MvmTargetsError(Exception):
    """Base class: `str(error)` is a one-line, user-facing reason."""


class InputError(MvmTargetsError):
    """Bad command-line input: a missing list file, a key collision, a malformed CSV."""


class VideoError(MvmTargetsError):
    """A video that cannot be turned into a clip. `error_class` goes into the ledger.

    Classes: FileNotFound, EmptyFile, OpenError, NoVideoStream, NoFrames, TooShort, TooLarge,
    DecodeError.
    """

    def __init__(self, error_class: str, message: str):
        super().__init__(message)
        self.error_class = error_class
