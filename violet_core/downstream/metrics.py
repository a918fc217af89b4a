"""Retrieval and QA metrics for the downstream tasks, in percent, as the VIOLET papers report them.

Retrieval ranks take the mid-rank of ties: the rank of the ground-truth video for a text is

    rank = #(videos scoring > the ground truth) + (#(videos scoring == the ground truth) + 1) / 2,

the ground truth included in the "==" count, so a float (scipy.stats.rankdata(-row, method="average")
at the ground truth). It is the mean of the ranks the tied videos could take under a random order. A
constant model therefore gets rank (N + 1) / 2 for every text, the chance median, instead of a
perfect R@1 (an optimistic ">" or index-order rule, as the official evaluation's stable sort) or a
rank of N (the pessimistic ">=" rule, which punishes ties that bf16 scores make common). R@k counts
texts with rank <= k; MdR and MnR are the median and mean of the ranks.

Open-ended QA follows the official v2 fix: gold answers the vocabulary cannot express as one token
are kept in the denominator and count as wrong, instead of being dropped from the test set.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

RECALL_KS = (1, 5, 10)


def _to_numpy(values: Any) -> np.ndarray:
    """A numpy view of an array, list or torch tensor (any device/dtype) without importing torch."""
    if hasattr(values, "detach"):
        values = values.detach()
        if values.is_floating_point():
            values = values.float()  # bf16/fp16 have no (or a lossy) numpy counterpart
        values = values.cpu().numpy()
    return np.asarray(values)


def _as_list(values: Any) -> list:
    # Arrays and tensors become Python scalars; plain lists are kept so mixed int/str labels survive.
    if hasattr(values, "detach") or isinstance(values, np.ndarray):
        return _to_numpy(values).tolist()
    return list(values)


def retrieval_ranks(scores: np.ndarray | torch.Tensor, text_to_video: Sequence[int]) -> np.ndarray:
    """1-based mid-rank of each text's ground-truth video (ties: see the module docstring).

    scores: (N_text, N_video), higher = more similar. text_to_video: (N_text,) video indices.
    Returns (N_text,) float64 in [1, N_video]: #(score > truth) + (#(score == truth) + 1) / 2.
    """
    matrix = _to_numpy(scores).astype(np.float64)
    targets = np.asarray(_as_list(text_to_video))
    if matrix.ndim != 2 or matrix.shape[0] == 0 or matrix.shape[1] == 0:
        raise ValueError(f"scores must be a non-empty (N_text, N_video) matrix, got shape {matrix.shape}")
    if targets.shape != (matrix.shape[0],):
        raise ValueError(f"text_to_video has {targets.size} entries for {matrix.shape[0]} texts")
    if not np.issubdtype(targets.dtype, np.integer) or targets.min() < 0 or targets.max() >= matrix.shape[1]:
        raise ValueError(f"text_to_video must hold video indices in [0, {matrix.shape[1]})")
    if np.isnan(matrix).any():
        raise ValueError("scores contain NaN; a NaN has no rank")
    truth = matrix[np.arange(matrix.shape[0]), targets][:, None]
    above = (matrix > truth).sum(axis=1)
    tied = (matrix == truth).sum(axis=1)  # the ground truth itself included
    return above + (tied + 1) / 2.0


def retrieval_metrics(scores: np.ndarray | torch.Tensor, text_to_video: Sequence[int]) -> dict[str, float]:
    """Text-to-video retrieval metrics from a score matrix.

    scores: (N_text, N_video); text_to_video: (N_text,). Returns R@1, R@5, R@10 (percent of texts whose
    ground truth ranks <= k), AveR (their mean), MdR / MnR (median / mean 1-based rank), n_text, n_video.
    Ties take the mid-rank (see the module docstring).
    """
    ranks = retrieval_ranks(scores, text_to_video)
    result: dict[str, float] = {f"R@{k}": float((ranks <= k).mean() * 100) for k in RECALL_KS}
    result["AveR"] = float(np.mean([result[f"R@{k}"] for k in RECALL_KS]))
    result["MdR"] = float(np.median(ranks))
    result["MnR"] = float(ranks.mean())
    result["n_text"] = int(ranks.size)
    result["n_video"] = int(_to_numpy(scores).shape[1])
    return result


def chance_retrieval(n_video: int) -> dict[str, float]:
    """Expected metrics of random (tie-free) scores over `n_video` videos, for stating chance in reports.

    The ground-truth rank is then uniform on 1..n: R@k = min(k, n) / n * 100, and MdR = MnR = (n + 1) / 2,
    the median and mean of that distribution (for even n the median is the midpoint of n/2 and n/2 + 1).
    """
    if isinstance(n_video, bool) or not isinstance(n_video, (int, np.integer)) or n_video < 1:
        raise ValueError(f"n_video must be a positive integer, got {n_video!r}")
    n = int(n_video)
    result: dict[str, float] = {f"R@{k}": min(k, n) / n * 100 for k in RECALL_KS}
    result["AveR"] = float(np.mean([result[f"R@{k}"] for k in RECALL_KS]))
    result["MdR"] = (n + 1) / 2
    result["MnR"] = (n + 1) / 2
    result["n_video"] = n
    return result


def accuracy(pred: Sequence[int | str], gold: Sequence[int | str]) -> float:
    """Percent of positions where pred == gold. pred, gold: (N,) labels (ints or strings), N >= 1."""
    pred_list, gold_list = _as_list(pred), _as_list(gold)
    if len(pred_list) != len(gold_list):
        raise ValueError(f"{len(pred_list)} predictions for {len(gold_list)} gold labels")
    if not gold_list:
        raise ValueError("accuracy of an empty set is undefined")
    return 100.0 * sum(p == g for p, g in zip(pred_list, gold_list)) / len(gold_list)


def mc_predictions(scores: np.ndarray | torch.Tensor) -> np.ndarray:
    """Chosen option per question. scores: (N, O) -> (N,) int64 argmax; ties go to the lowest index."""
    matrix = _to_numpy(scores)
    if matrix.ndim != 2 or matrix.shape[1] == 0:
        raise ValueError(f"scores must be (N, O) with O >= 1, got shape {matrix.shape}")
    if np.isnan(matrix).any():
        raise ValueError("scores contain NaN")
    return matrix.argmax(axis=1).astype(np.int64)


def oe_accuracy(pred_token_ids: Sequence[int] | np.ndarray | torch.Tensor, gold_answers: Sequence[str],
                token_id_of: Callable[[str], int | None]) -> float:
    """Open-ended QA accuracy in percent over ALL gold answers.

    pred_token_ids: (N,) the token predicted at [MASK]; gold_answers: (N,) strings; token_id_of maps an
    answer to its single token id, or None when the vocabulary cannot express it as one token. Such
    answers count as wrong (kept in the denominator), as in the official v2 evaluation.
    """
    preds = _as_list(pred_token_ids)
    golds = list(gold_answers)
    if len(preds) != len(golds):
        raise ValueError(f"{len(preds)} predictions for {len(golds)} gold answers")
    if not golds:
        raise ValueError("accuracy of an empty set is undefined")
    correct = 0
    for pred, answer in zip(preds, golds):
        target = token_id_of(answer)
        correct += target is not None and int(pred) == int(target)
    return 100.0 * correct / len(golds)


def oe_answer_coverage(gold_answers: Sequence[str], token_id_of: Callable[[str], int | None]) -> float:
    """Percent of gold answers expressible as one token: the ceiling on `oe_accuracy`. N >= 1."""
    golds = list(gold_answers)
    if not golds:
        raise ValueError("coverage of an empty set is undefined")
    return 100.0 * sum(token_id_of(a) is not None for a in golds) / len(golds)
