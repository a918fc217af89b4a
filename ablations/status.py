"""The on-disk state of runs (status.json, liveness of the process behind it) and `ablate status`.

A run directory written by the harness holds, besides what the trainer writes:

    run.json      who the run is: run_id, alias, grid name and hash, factors, baseline, code version
    config.yaml   the resolved config the trainer reads (the trainer rewrites it identically)
    status.json   {"state", "failure", "message", "exit_code", "attempts", "pid", "started",
                   "finished", "host", "job"}; written atomically, so a reader never sees half a file
    train.log     stdout + stderr of every attempt, each preceded by a header line
    .lock         present while a harness process owns the run (see ablations.runner.claim_run)

States: pending (known, not started or interrupted), running, done (exit 0 and final.json), failed
(failure: nan | crash | killed | config | timeout). A "running" status whose processes are gone is
shown as "interrupted": the grid runner treats it as pending and resumes it.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

STATUS_FILE = "status.json"
RUN_FILE = "run.json"
LOCK_FILE = ".lock"
LOG_FILE = "train.log"
CONFIG_FILE = "config.yaml"
FINAL_FILE = "final.json"
FAILURE_FILE = "failure.json"

STATES = ("pending", "running", "done", "failed")
FAILURES = ("nan", "crash", "killed", "config", "timeout")
# Shown first when present; otherwise the first downstream metric, else the pretraining loss.
HEADLINE = ("retrieval/R@1", "retrieval/AveR", "qa_oe/acc", "qa_mc/acc")
# Substrings of a command line that mark a process as one of ours; guards against a recycled pid.
TRAINER_MARKERS = ("violet_core", "torch.distributed.run", "torchrun")


@dataclass
class RunStatus:
    """The contents of status.json."""

    state: str = "pending"
    failure: str | None = None
    message: str = ""
    exit_code: int | None = None
    attempts: int = 0
    pid: int | None = None
    started: str | None = None
    finished: str | None = None
    host: str | None = None
    job: str | None = None  # the Slurm job that owns the run ("12345_7"), when submitted there

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "RunStatus":
        known = {k: raw[k] for k in cls.__dataclass_fields__ if k in raw}
        return cls(**known)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def duration_s(self) -> float | None:
        """Seconds from start to finish, or to now for a run still running; None if never started."""
        start = parse_time(self.started)
        if start is None:
            return None
        end = parse_time(self.finished) if self.finished else (time.time() if self.state == "running" else None)
        return None if end is None else max(0.0, end - start)


# ----------------------------------------------------------------------------------------------
# Files


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def parse_time(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from `path`, or {} when absent or unreadable (a writer may be mid-replace)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def write_json_atomic(path: Path, record: dict[str, Any]) -> None:
    """Write-then-rename: a concurrent reader sees the old or the new file, never a torn one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


def read_status(run_dir: Path) -> RunStatus | None:
    raw = read_json(Path(run_dir) / STATUS_FILE)
    return RunStatus.from_dict(raw) if raw else None


def write_status(run_dir: Path, status: RunStatus) -> None:
    write_json_atomic(Path(run_dir) / STATUS_FILE, status.to_dict())


def is_done(run_dir: Path, status: RunStatus | None) -> bool:
    """Done means the harness saw exit 0 and the trainer's final.json is there."""
    return status is not None and status.state == "done" and (Path(run_dir) / FINAL_FILE).is_file()


# ----------------------------------------------------------------------------------------------
# Liveness


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


def running_elsewhere(run_dir: Path, status: RunStatus | None) -> str | None:
    """A description of the live process that owns the run, or None when nothing owns it.

    Both the lock (the harness process) and status.json (the training process) are checked: the
    harness may have been killed while its trainer is still running, and then the run is not free.
    """
    lock = read_json(Path(run_dir) / LOCK_FILE)
    ours = lock.get("pid") == os.getpid() and lock.get("host") == this_host()
    if lock and not ours and holder_alive(lock.get("pid"), lock.get("host"), lock.get("job"), lock.get("start_ticks")):
        return _describe_holder("harness", lock.get("pid"), lock.get("host"), lock.get("job"))
    if status is not None and status.state == "running" and \
            holder_alive(status.pid, status.host, status.job, check_cmdline=True):
        return _describe_holder("trainer", status.pid, status.host, status.job)
    if status is not None and status.state == "pending" and status.job and status.job != current_slurm_job() \
            and slurm_job_alive(status.job) is not False:  # submitted and still known to Slurm (or unknowable)
        return f"queued as Slurm job {status.job}"
    return None


def _describe_holder(what: str, pid: Any, host: Any, job: Any) -> str:
    where = f"Slurm job {job}" if job else f"pid {pid} on {host}"
    return f"{what} {where}"


def effective_state(run_dir: Path, status: RunStatus | None) -> str:
    """The state to show and act on: 'interrupted' for a running status whose processes are gone."""
    if status is None:
        return "pending"
    if status.state == "running" and running_elsewhere(run_dir, status) is None:
        return "interrupted"
    if status.state == "done" and not (Path(run_dir) / FINAL_FILE).is_file():
        return "interrupted"  # final.json was removed: the run must be redone
    return status.state


# ----------------------------------------------------------------------------------------------
# Metrics


def headline(metrics: dict[str, Any]) -> tuple[str, float] | None:
    """The one number a progress or status line shows for a run."""
    numbers = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    for key in HEADLINE:
        if key in numbers:
            return key, numbers[key]
    downstream = [k for k in numbers if not k.startswith("pretrain/")]
    if downstream:
        return downstream[0], numbers[downstream[0]]
    if "pretrain/loss" in numbers:
        return "pretrain/loss", numbers["pretrain/loss"]
    return None


def format_metric(item: tuple[str, float] | None) -> str:
    if item is None:
        return ""
    key, value = item
    return f"{key}={value:.4g}" if math.isfinite(value) else f"{key}={value}"


def format_duration(seconds: float | None) -> str:
    """41s, 2m10s, 3h05m."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"


# ----------------------------------------------------------------------------------------------
# The status table


@dataclass(frozen=True)
class StatusRow:
    alias: str
    run_id: str
    state: str
    failure: str
    duration: str
    metric: str
    grid: str
    path: str


def is_run_dir(path: Path) -> bool:
    return path.is_dir() and any((path / name).is_file() for name in (RUN_FILE, STATUS_FILE))


def find_run_dirs(root: Path) -> list[Path]:
    """`root` itself if it is a run directory, else run directories up to two levels below it
    (`runs/<grid>/<run_id>` when given `runs/`)."""
    root = Path(root)
    if is_run_dir(root):
        return [root]
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such runs directory")
    found = []
    for child in sorted(root.iterdir()):
        if child.name.startswith("."):
            continue
        if is_run_dir(child):
            found.append(child)
        elif child.is_dir():
            found += [g for g in sorted(child.iterdir()) if not g.name.startswith(".") and is_run_dir(g)]
    return found


def status_row(run_dir: Path, alias: str | None = None, run_id: str | None = None) -> StatusRow:
    run = read_json(run_dir / RUN_FILE)
    status = read_status(run_dir)
    state = effective_state(run_dir, status) if run_dir.exists() else "not started"
    final = read_json(run_dir / FINAL_FILE) if state == "done" else {}
    return StatusRow(alias=alias or run.get("alias", run_dir.name), run_id=run_id or run.get("run_id", run_dir.name),
                     state=state, failure=(status.failure or "") if status and state == "failed" else "",
                     duration=format_duration(status.duration_s) if status else "-",
                     metric=format_metric(headline(final.get("metrics") or {})), grid=str(run.get("grid") or ""),
                     path=str(run_dir))


def collect_rows(target: Path, runs_dir: Path | None = None,
                 overrides: dict[str, Any] | None = None) -> tuple[str, list[StatusRow]]:
    """Rows for a grid YAML (every run of the grid, started or not) or a runs directory."""
    target = Path(target)
    if target.is_file():
        from ablations.grid import load_grid

        grid = load_grid(target, overrides)
        root = Path(runs_dir) if runs_dir else default_runs_dir(grid.name)
        rows = [status_row(root / spec.run_id, spec.alias, spec.run_id) for spec in grid.runs]
        return f"grid {grid.name}: {root}", rows
    rows = sorted((status_row(path) for path in find_run_dirs(target)), key=lambda r: (r.grid, r.alias))
    return str(target), rows


def default_runs_dir(grid_name: str) -> Path:
    return Path("runs") / grid_name


def format_table(rows: Iterable[StatusRow]) -> str:
    rows = list(rows)
    show_grid = len({r.grid for r in rows}) > 1
    header = (["grid"] if show_grid else []) + ["alias", "run id", "state", "failure", "duration", "metric"]
    body = [([r.grid] if show_grid else [])
            + [r.alias, r.run_id, r.state, r.failure or "-", r.duration, r.metric or "-"] for r in rows]
    table = [header] + body
    widths = [max(len(str(line[i])) for line in table) for i in range(len(header))]
    return "\n".join("  ".join(str(cell).ljust(width) for cell, width in zip(line, widths)).rstrip() for line in table)


def summarize_states(rows: Iterable[StatusRow]) -> str:
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.state] = counts.get(row.state, 0) + 1
    order = ["done", "failed", "running", "interrupted", "pending", "not started"]
    return ", ".join(f"{counts[s]} {s}" for s in order if s in counts)
