"""Is the process or Slurm job that owns a run still there? (/proc on this host, squeue for Slurm.)

Reads only: nothing here writes a run directory. A status or lock file names its holder by pid,
host, process start time and Slurm job; these functions decide whether that holder is alive.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

# Substrings of a command line that mark a process as one of ours; guards against a recycled pid.
TRAINER_MARKERS = ("violet_core", "torch.distributed.run", "torchrun")


def this_host() -> str:
    return socket.gethostname()


def current_slurm_job() -> str | None:
    """The Slurm job this process runs in; an array task is named like `squeue` shows it (`123_4`)."""
    array_job, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array_job and task:
        return f"{array_job}_{task}"
    return os.environ.get("SLURM_JOB_ID")


def pid_alive(pid: int | None, start_ticks: str | None = None) -> bool:
    """Is `pid` a live process on this host (and, when given, the same one that started at `start_ticks`)?"""
    if not pid or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    if _is_zombie(pid):
        return False
    if start_ticks is not None:
        current = process_start_ticks(pid)
        if current is not None and current != start_ticks:
            return False  # the pid was recycled by an unrelated process
    return True


def process_start_ticks(pid: int) -> str | None:
    """Field 22 of /proc/<pid>/stat (start time in clock ticks): with the pid, a unique process identity."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()[19]


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def _looks_like_ours(pid: int) -> bool:
    """A status pid could have been recycled; a process whose command line is not a trainer is not ours."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return True  # no /proc (not Linux): trust the pid
    return any(marker in cmdline for marker in TRAINER_MARKERS)


def slurm_job_alive(job: str) -> bool | None:
    """Whether Slurm still knows `job` as queued or running; None when squeue cannot tell."""
    if shutil.which("squeue") is None:
        return None
    try:
        result = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    if result.returncode != 0:
        # squeue exits non-zero for a job id it no longer knows
        return False if "Invalid job id" in result.stderr else None
    return bool(result.stdout.strip())


def holder_alive(pid: int | None, host: str | None, job: str | None = None, start_ticks: str | None = None,
                 check_cmdline: bool = False) -> bool:
    """Is the process (or Slurm job) recorded as owning a run still there?

    On this host the pid is checked directly. A record from a Slurm job is dead when Slurm no
    longer knows the job, and it is ours to take over when it names the job we run in (a
    requeued job keeps its id). A record from another host without a job id cannot be checked;
    it counts as alive, so two machines never run the same run.
    """
    mine = current_slurm_job()
    if job and mine and job == mine:
        return False
    if host in (None, this_host()):
        alive = pid_alive(pid, start_ticks)
        return alive and (not check_cmdline or _looks_like_ours(pid))  # type: ignore[arg-type]
    if job:
        known = slurm_job_alive(job)
        return True if known is None else known
    return True
