"""A run directory: its files, its status, who owns it, and how runs are found on disk.

The one owner of what the harness writes into a run directory, besides what the trainer writes:

    run.json      who the run is: run_id, alias, grid name and hash, factors, baseline, code version
    config.yaml   the resolved config the trainer reads (the trainer rewrites it identically)
    status.json   {"state", "failure", "message", "exit_code", "attempts", "pid", "started",
                   "finished", "host", "job"}; written atomically, so a reader never sees half a file
    train.log     stdout + stderr of every attempt, each preceded by a header line
    .lock         present while a harness process owns the run (see `claim_run`)

States: pending (known, not started or interrupted), running, done (exit 0 and final.json), failed
(failure: nan | crash | killed | config | timeout). A "running" status whose processes are gone is
shown as "interrupted": the grid runner treats it as pending and resumes it.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from ablations.grid_sections import SEED_KEY
from ablations.launch import liveness
from ablations.launch.liveness import current_slurm_job, holder_alive, process_start_ticks, this_host

if TYPE_CHECKING:
    from ablations.grid import Grid, RunSpec

STATUS_FILE = "status.json"
RUN_FILE = "run.json"
LOCK_FILE = ".lock"
LOG_FILE = "train.log"
CONFIG_FILE = "config.yaml"
FINAL_FILE = "final.json"
FAILURE_FILE = "failure.json"
METRICS_FILE = "metrics.jsonl"
CLAIM_MUTEX = ".claim"
ARCHIVE_DIR = ".archive"
# Any of these makes a folder a run directory; final.json and failure.json alone are what a run made
# by `ablate train` (no harness) leaves.
RUN_MARKERS = (RUN_FILE, STATUS_FILE, FINAL_FILE, FAILURE_FILE)

STATES = ("pending", "running", "done", "failed")
FAILURES = ("nan", "crash", "killed", "config", "timeout")


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


def write_run_files(spec: "RunSpec", run_dir: Path, grid: "Grid", code: str) -> None:
    """run.json (who the run is) and config.yaml (what the trainer reads)."""
    record = {"run_id": spec.run_id, "alias": spec.alias, "grid": grid.name, "grid_path": grid.path,
              "grid_hash": grid.grid_hash, "factors": spec.factors, "baseline": grid.baseline, "labels": grid.labels,
              "cell_seeds": planned_seeds(spec, grid), "code_version": code, "written": now_iso()}
    write_json_atomic(run_dir / RUN_FILE, record)
    tmp = run_dir / f".{CONFIG_FILE}.{os.getpid()}.tmp"
    tmp.write_text(yaml.safe_dump(spec.config, sort_keys=False))
    os.replace(tmp, run_dir / CONFIG_FILE)


def planned_seeds(spec: "RunSpec", grid: "Grid") -> list[Any]:
    """The seeds the grid plans for `spec`'s cell (its factors but the seed), after the grid's exclusions:
    the report judges a cell complete against these, not against every seed of the grid."""
    cell = {k: v for k, v in spec.factors.items() if k != SEED_KEY}
    seeds = [run.factors.get(SEED_KEY) for run in grid.runs
             if {k: v for k, v in run.factors.items() if k != SEED_KEY} == cell]
    distinct = {seed for seed in seeds if seed is not None}
    return sorted(distinct, key=lambda seed: (not isinstance(seed, (int, float)), seed if isinstance(seed, (int, float)) else str(seed)))


def archive_outputs(run_dir: Path) -> Path:
    """Move a done run's results aside (for --rerun-changed) so the trainer starts afresh and
    nothing is lost: everything but the lock goes to <runs-dir>/.archive/<run_id>-<time>/."""
    target = run_dir.parent / ARCHIVE_DIR / f"{run_dir.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    target.mkdir(parents=True, exist_ok=False)
    for entry in run_dir.iterdir():
        if entry.name not in (LOCK_FILE, CLAIM_MUTEX):
            shutil.move(str(entry), str(target / entry.name))
    return target


# ----------------------------------------------------------------------------------------------
# Ownership and state


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
            and liveness.slurm_job_alive(status.job) is not False:  # submitted and still known to Slurm (or unknowable)
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


@dataclass
class Claim:
    """Ownership of one run directory by this process: the O_EXCL lock file `.lock`."""

    run_dir: Path

    def release(self) -> None:
        lock = self.run_dir / LOCK_FILE
        if read_json(lock).get("pid") == os.getpid():
            lock.unlink(missing_ok=True)


def claim_run(run_dir: Path) -> Claim | str:
    """Create `run_dir` if needed and take its lock; returns the Claim, or who holds the run.

    The lock file is created with O_EXCL and names its holder (pid, host, process start time,
    Slurm job). A lock whose holder is gone, and whose trainer is gone too, is stale and taken
    over. Checking staleness and replacing the lock happen under an flock on `.claim`, so two
    processes that both find the same stale lock cannot both take it over.
    """
    from mvm_targets.store.locking import exclusive_lock

    run_dir.mkdir(parents=True, exist_ok=True)
    lock = run_dir / LOCK_FILE
    with exclusive_lock(run_dir / CLAIM_MUTEX):
        holder = running_elsewhere(run_dir, read_status(run_dir))
        if holder:
            return holder
        lock.unlink(missing_ok=True)  # absent, or stale: its holder and trainer are gone
        record = {"pid": os.getpid(), "host": this_host(), "start_ticks": process_start_ticks(os.getpid()),
                  "job": current_slurm_job(), "since": now_iso()}
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return "another process (lock appeared while claiming)"
        with os.fdopen(fd, "w") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
    return Claim(run_dir)


# ----------------------------------------------------------------------------------------------
# Finding runs


def default_runs_dir(grid_name: str) -> Path:
    return Path("runs") / grid_name


def is_run_dir(path: Path) -> bool:
    return path.is_dir() and any((path / name).is_file() for name in RUN_MARKERS)


def find_run_dirs(paths: Path | str | Iterable[Path | str], resolve: bool = False) -> list[Path]:
    """The run directories named by `paths`, each once, in order: the path itself when it is a run
    directory, else run directories up to two levels below it (`runs/<grid>/<run_id>` when given
    `runs/`). Folders whose name starts with '.' (archives, submitit logs) are skipped.

    Used by `ablate status`, `ablate report` and the watch loop alike, so they always see the same runs.
    """
    roots = [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]
    found: dict[Path, None] = {}
    for root in roots:
        if not root.exists():
            raise FileNotFoundError(f"{root}: no such run directory or runs root")
        for run_dir in _run_dirs_under(root):
            found[run_dir.resolve() if resolve else run_dir] = None
    return list(found)


def _run_dirs_under(root: Path) -> list[Path]:
    if is_run_dir(root):
        return [root]
    if not root.is_dir():
        return []
    found = []
    for child in sorted(root.iterdir()):
        if child.name.startswith("."):
            continue
        if is_run_dir(child):
            found.append(child)
        elif child.is_dir():
            found += [g for g in sorted(child.iterdir()) if not g.name.startswith(".") and is_run_dir(g)]
    return found
