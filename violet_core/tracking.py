"""Where a run's logged records go besides `metrics.jsonl`: TensorBoard scalars and a progress bar.

`RunDir.log` hands every record (`{"phase", "step", "split"?, "lr", "samples", "step_s", losses or
metrics...}`) to one `Tracker`. Both trackers here only read records; nothing they do touches an
RNG, the model or the data order, so a resumed run stays bit-identical with or without them.

    <run>/tensorboard/<phase>/events.out.tfevents.*   one TensorBoard run per phase (pretrain, each task)

TensorBoard is optional (the `tensorboard` extra): without it the run writes `metrics.jsonl` only.
"""

from __future__ import annotations

import logging
import math
import sys
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger("violet_core")

# record keys that say where a line belongs rather than what was measured
POSITION_KEYS = ("phase", "step", "split")


class Tracker(Protocol):
    def log(self, record: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The record's finite numbers under TensorBoard tags: `train/loss`, `train/lr`, `eval/<metric>`,
    plus `train/clips_per_s` derived from the clips per step and the seconds per step."""
    prefix = record.get("split") or "train"
    values = {f"{prefix}/{key}": float(value) for key, value in record.items()
              if key not in POSITION_KEYS and isinstance(value, (int, float)) and not isinstance(value, bool)
              and math.isfinite(value)}
    step, samples, step_s = record.get("step"), record.get("samples"), record.get("step_s")
    if isinstance(step, int) and step > 0 and samples and step_s and step_s > 0:
        values[f"{prefix}/clips_per_s"] = samples / step / step_s  # clips per step / seconds per step
    return values


class TensorBoardTracker:
    """One `SummaryWriter` per phase, opened at the phase's first record in this process.

    A resumed phase (or a downstream task started over) writes again every step from its first new
    record on. The writer opens with `purge_step` = that step, so TensorBoard drops the events an
    earlier, interrupted process wrote at or after it: the curve has no duplicated steps, exactly
    as `RunDir.truncate_log` keeps `metrics.jsonl` free of them.
    """

    def __init__(self, root: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter  # ImportError without the tensorboard extra

        self._writer_class = SummaryWriter
        self.root = Path(root)
        self.writers: dict[str, Any] = {}

    def log(self, record: dict[str, Any]) -> None:
        phase, step = record.get("phase"), record.get("step")
        if not isinstance(phase, str) or not isinstance(step, int):
            return
        writer = self.writers.get(phase)
        if writer is None:
            writer = self._writer_class(log_dir=str(self.root / phase), purge_step=step)
            self.writers[phase] = writer
        for tag, value in scalars(record).items():
            writer.add_scalar(tag, value, step)
        writer.flush()  # a killed run keeps every logged line, as metrics.jsonl does

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()
        self.writers.clear()


class ProgressTracker:
    """A progress bar per phase on stderr: steps, loss, clips/s and the time left at the current pace.
    Moves at each logged step (`log_every`)."""

    def __init__(self, totals: dict[str, int]) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        self.totals = totals
        self.progress = Progress(TextColumn("{task.description:10}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[rate]} clips/s"),
                                 TextColumn("ETA {task.fields[eta]}"), console=Console(stderr=True))
        self.tasks: dict[str, Any] = {}

    def log(self, record: dict[str, Any]) -> None:
        phase, step = record.get("phase"), record.get("step")
        total = self.totals.get(phase) if isinstance(phase, str) else None
        if record.get("split") == "eval" or not total or not isinstance(step, int):
            return
        if not self.tasks:
            self.progress.start()  # at the first step, not before: a run that fails to start draws nothing
        if phase not in self.tasks:
            self.tasks[phase] = self.progress.add_task(phase, total=total, loss="-", rate="-", eta="-")
        values = scalars(record)
        step_s = record.get("step_s")
        eta = _duration((total - step) * step_s) if isinstance(step_s, (int, float)) else "-"
        loss = values.get("train/loss")
        rate = values.get("train/clips_per_s")
        self.progress.update(self.tasks[phase], completed=step, eta=eta,
                             loss="-" if loss is None else f"{loss:.4g}", rate="-" if rate is None else f"{rate:.1f}")

    def close(self) -> None:
        if self.tasks:
            self.progress.stop()


class FanOut:
    """Hands each record to several trackers; one that fails is dropped with a warning, never the run."""

    def __init__(self, trackers: list[Tracker]) -> None:
        self.trackers = list(trackers)

    def log(self, record: dict[str, Any]) -> None:
        for tracker in list(self.trackers):
            try:
                tracker.log(record)
            except Exception as error:  # noqa: BLE001 - logging must not end a training run
                log.warning("%s stopped: %s", type(tracker).__name__, " ".join(str(error).split()))
                self.trackers.remove(tracker)

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.close()


def open_trackers(run_root: Path, totals: dict[str, int], progress: bool | None = None) -> FanOut:
    """TensorBoard under `<run_root>/tensorboard/` when it is importable, and a progress bar when
    `progress` (default: when stderr is a terminal). `totals`: steps per phase, for the bar."""
    trackers: list[Tracker] = []
    try:
        trackers.append(TensorBoardTracker(Path(run_root) / "tensorboard"))
    except ImportError:
        log.info("tensorboard is not installed (pip install 'mvm-targets[tensorboard]'): metrics.jsonl only")
    if progress if progress is not None else _stderr_is_terminal():
        trackers.append(ProgressTracker(totals))
    return FanOut(trackers)


def _stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"
