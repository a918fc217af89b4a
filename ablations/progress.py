"""How far runs have got: a grid's counts with an ETA (`ablate run`), and one run's step out of
its total from its metrics.jsonl (`ablate status --watch`)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ablations.rundir import CONFIG_FILE, METRICS_FILE

PRETRAIN_PHASE = "pretrain"


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


@dataclass
class Progress:
    """Counts over the whole grid, and an ETA from the durations of finished runs."""

    total: int
    done: int
    failed: int
    concurrency: int
    durations: list[float] = field(default_factory=list)

    def prefix(self, queued: int = 0, active: Sequence[float] = ()) -> str:
        left = self.total - self.done - self.failed
        return f"[{self.done}/{self.total} done, {self.failed} failed, {left} left{self._eta(queued, active)}]"

    def _eta(self, queued: int, active: Sequence[float]) -> str:
        if not queued and not active:
            return ""
        if not self.durations:
            return ", ETA ?"
        mean = sum(self.durations) / len(self.durations)
        work = queued * mean + sum(max(mean - elapsed, 0.0) for elapsed in active)
        return f", ETA {format_duration(work / max(1, self.concurrency))}"


@dataclass(frozen=True)
class StepProgress:
    """Optimisation steps a run has logged, out of those its config asks for (pretraining plus
    every downstream task's finetuning)."""

    step: int
    total: int

    @property
    def fraction(self) -> float:
        return min(1.0, self.step / self.total) if self.total > 0 else 0.0

    def eta_s(self, elapsed_s: float | None) -> float | None:
        """Time left at the rate so far; None before the first logged step."""
        if elapsed_s is None or self.step <= 0 or self.total <= 0:
            return None
        return max(0.0, elapsed_s * (self.total - min(self.step, self.total)) / self.step)


def step_progress(run_dir: Path) -> StepProgress | None:
    """Steps done and planned, from the run's config.yaml and metrics.jsonl; None without a config.

    Each phase (pretrain, then one per downstream task) counts up to its own step total; a phase
    counts as far as the highest step it logged. A line being written (no newline yet) is skipped.
    """
    phases = _phase_totals(Path(run_dir) / CONFIG_FILE)
    if phases is None:
        return None
    reached = dict.fromkeys(phases, 0)
    try:
        text = (Path(run_dir) / METRICS_FILE).read_text()
    except (OSError, UnicodeDecodeError):
        text = ""
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        phase, step = (record.get("phase"), record.get("step")) if isinstance(record, dict) else (None, None)
        if phase in reached and isinstance(step, int) and not isinstance(step, bool):
            reached[phase] = max(reached[phase], min(step, phases[phase]))
    return StepProgress(step=sum(reached.values()), total=sum(phases.values()))


def _phase_totals(config_path: Path) -> dict[str, int] | None:
    try:
        config = yaml.safe_load(config_path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    if not isinstance(config, dict):
        return None
    pretrain = _section(config, "pretrain")
    downstream = _section(config, "downstream")
    totals = {PRETRAIN_PHASE: _int(_section(pretrain, "optim").get("steps"))}
    per_task = _int(_section(downstream, "optim").get("steps"))
    for task in downstream.get("tasks") or []:
        totals[str(task)] = per_task
    return totals


def _section(mapping: dict[str, Any], key: str) -> dict[str, Any]:
    value = mapping.get(key)
    return value if isinstance(value, dict) else {}


def _int(value: Any) -> int:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 else 0
