"""Errors that carry a short class name and a one-line reason, for the ledger and the CLI."""

from __future__ import annotations

import contextlib


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


# --- how the command-line tools end on an error ------------------------------------------------
#
# Every CLI (`mvmtargets`, `ablate`, `python -m violet_core.train`) ends the same way: a known error
# (bad input, a missing file, a damaged cache) is one line on stderr naming the file or option and
# the reason, exit 2 (1 for a full disk: not a usage problem); anything else is one line plus the
# path of a file holding the full traceback, or the traceback itself with --debug / MVM_DEBUG=1.

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
DEBUG_ENV = "MVM_DEBUG"


def debug_enabled() -> bool:
    """--debug on the command line (see `take_debug_flag`) or MVM_DEBUG set to anything but 0."""
    import os

    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def take_debug_flag(argv: list[str]) -> list[str]:
    """Remove `--debug` wherever it stands in `argv` and turn on MVM_DEBUG for this process."""
    import os

    if "--debug" not in argv:
        return argv
    os.environ[DEBUG_ENV] = "1"
    return [arg for arg in argv if arg != "--debug"]


def is_known(error: BaseException) -> bool:
    """Errors whose message is the whole story: the user can act on it without a traceback."""
    import yaml

    return isinstance(error, (MvmTargetsError, ValueError, OSError, yaml.YAMLError))


def one_line(error: BaseException) -> str:
    """The error as one line: an OSError names its file first, a multi-line message is joined."""
    if isinstance(error, OSError) and error.filename is not None and not isinstance(error, MvmTargetsError):
        target = f"{error.filename} -> {error.filename2}" if error.filename2 else str(error.filename)
        return f"{target}: {(error.strerror or type(error).__name__).lower()}"
    return " ".join(str(error).split()) or type(error).__name__


def exit_code_for(error: BaseException) -> int:
    import errno

    full_disk = isinstance(error, OSError) and error.errno == errno.ENOSPC
    return EXIT_FAILED if full_disk or type(error).__name__ == "OutOfSpaceError" else EXIT_BAD_INPUT


def write_traceback(error: BaseException, log_dir: "Path | None" = None) -> "Path | None":
    """Write the full traceback to `<log_dir>/error.log` (when that folder exists and is writable)
    or to a new temporary file; returns the path, or None when nothing could be written."""
    import tempfile
    import traceback
    from pathlib import Path

    text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    if log_dir is not None and Path(log_dir).is_dir():
        with contextlib.suppress(OSError):  # a read-only run folder: fall back to a temporary file
            path = Path(log_dir) / "error.log"
            path.write_text(text)
            return path
    try:
        handle = tempfile.NamedTemporaryFile("w", prefix="mvm-error-", suffix=".log", delete=False)
        with handle:
            handle.write(text)
        return Path(handle.name)
    except OSError:
        return None


def report_error(error: BaseException, prog: str, log_dir: "Path | None" = None) -> int:
    """Print `error` as described above; returns the exit code to end with."""
    import sys
    import traceback

    if is_known(error):
        print(f"error: {one_line(error)}", file=sys.stderr, flush=True)
        return exit_code_for(error)
    if debug_enabled():
        traceback.print_exception(type(error), error, error.__traceback__, file=sys.stderr)
        return EXIT_FAILED
    where = write_traceback(error, log_dir)
    hint = f"full traceback in {where}" if where else "rerun with --debug for the traceback"
    print(f"error: unexpected {type(error).__name__} in {prog}: {one_line(error)} ({hint})",
          file=sys.stderr, flush=True)
    return EXIT_FAILED


def run_typer_app(app: "object", prog: str, argv: "list[str] | None" = None) -> "None":
    """Run a Typer app as a CLI and exit: errors as `report_error`, usage errors as one line,
    Ctrl-C as `mvm_targets.interrupts` reports it. Never returns."""
    import sys

    from mvm_targets.interrupts import interrupt_guard, interrupted, report_interrupt

    args = take_debug_flag(list(sys.argv[1:] if argv is None else argv))
    code: int
    with interrupt_guard():
        try:
            result = app(args=args, prog_name=prog, standalone_mode=False)  # type: ignore[operator]
            code = result if isinstance(result, int) else 0  # an explicit typer.Exit(n) returns n
        except KeyboardInterrupt:
            code = report_interrupt()
        except Exception as error:  # noqa: BLE001 - the one place every command's errors end
            # Click's exceptions are matched by name: recent Typer versions vendor their own Click
            kinds = {cls.__name__ for cls in type(error).__mro__}
            if interrupted() or "Abort" in kinds:
                code = report_interrupt()
            elif "NoArgsIsHelpError" in kinds:
                error.show()  # type: ignore[attr-defined]
                code = int(getattr(error, "exit_code", EXIT_BAD_INPUT))
            elif "ClickException" in kinds:  # usage: an unknown option, a value of the wrong type
                ctx = getattr(error, "ctx", None)
                where = f"{ctx.command_path}: " if ctx is not None else ""
                message = " ".join(error.format_message().split())  # type: ignore[attr-defined]
                print(f"error: {where}{message} (see --help)", file=sys.stderr, flush=True)
                code = int(getattr(error, "exit_code", EXIT_BAD_INPUT))
            else:
                code = report_error(error, prog)
        if interrupted():  # also when swallowed somewhere: it must not end as success
            code = report_interrupt()
    sys.exit(code)
