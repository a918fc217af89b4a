"""Which metric stands for a run: one definition for `ablate run`'s progress lines, `ablate status`
and `ablate report` (whose tables list these metrics first, in this order)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

# In order of preference; a run without any of them is shown by its first downstream metric,
# else by its pretraining loss.
HEADLINE = ("retrieval/R@1", "retrieval/R@5", "retrieval/R@10", "retrieval/AveR", "qa_oe/acc", "qa_mc/acc")
PRETRAIN_PREFIX = "pretrain/"
PRETRAIN_LOSS = "pretrain/loss"


def headline(metrics: Mapping[str, Any]) -> tuple[str, float] | None:
    """The one (name, value) a progress or status line shows for a run's final.json metrics."""
    numbers = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    for key in HEADLINE:
        if key in numbers:
            return key, numbers[key]
    downstream = [k for k in numbers if not k.startswith(PRETRAIN_PREFIX)]
    if downstream:
        return downstream[0], numbers[downstream[0]]
    if PRETRAIN_LOSS in numbers:
        return PRETRAIN_LOSS, numbers[PRETRAIN_LOSS]
    return None


def format_metric(item: tuple[str, float] | None) -> str:
    """'retrieval/R@1=12.5', or '' for no metric."""
    if item is None:
        return ""
    key, value = item
    return f"{key}={value:.4g}" if math.isfinite(value) else f"{key}={value}"
