"""Ctrl-C that always stops a command, even when Python code swallows the KeyboardInterrupt.

Python raises KeyboardInterrupt in whatever Python code runs next after SIGINT. During numba's
first compile of a kernel that is often a ctypes callback from LLVM (the object-cache notifier),
and ctypes prints "Exception ignored on calling ctypes callback function" and drops the exception:
the command would carry on and exit 0. So the handler also records the interrupt, long-running
loops call `raise_if_interrupted()` between units of work, and the CLIs check `interrupted()`
before they report success.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from typing import Any, Callable, Iterator

INTERRUPTED_EXIT = 130  # 128 + SIGINT, as shells report a Ctrl-C
MESSAGE = "interrupted: committed work is kept; rerun the same command to continue"

_state = {"interrupted": False, "reported": False}


def _handler(signum: int, frame: Any) -> None:
    _state["interrupted"] = True
    raise KeyboardInterrupt


@contextlib.contextmanager
def interrupt_guard() -> Iterator[None]:
    """Record every SIGINT while the block runs (and still raise KeyboardInterrupt at once).

    A SIGINT that is ignored on entry (a background job of a non-interactive shell) stays ignored.
    """
    _state.update(interrupted=False, reported=False)
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        yield
        return
    previous = signal.signal(signal.SIGINT, _handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def interrupted() -> bool:
    """Whether a SIGINT arrived inside `interrupt_guard`, whether or not its exception survived."""
    return _state["interrupted"]


def raise_if_interrupted(*_: Any) -> None:
    """Raise the KeyboardInterrupt that something swallowed; usable as a progress callback."""
    if _state["interrupted"]:
        raise KeyboardInterrupt


def report_interrupt(echo: Callable[[str], None] | None = None) -> int:
    """Print MESSAGE to stderr once per command; returns the exit code to use (130)."""
    if not _state["reported"]:
        _state["reported"] = True
        (echo or (lambda line: print(line, file=sys.stderr, flush=True)))(MESSAGE)
    return INTERRUPTED_EXIT
