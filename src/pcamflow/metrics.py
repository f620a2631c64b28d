"""Binary classification metrics, one function each, equal to scikit-learn's (tested against it).

Every metric takes labels in {0, 1}; the threshold metrics take hard predictions in {0, 1} and the
ranking metrics take P(positive). A metric that is undefined on the given labels (e.g. ROC-AUC with
one class only, recall/F-beta without any positive label) returns None, never 0 or NaN, and
`undefined_reason` says why (the slices table reports the reason in a column).
"""

from __future__ import annotations

import numpy as np

from pcamflow.rundir import LOWER_IS_BETTER

# Reasons a metric is undefined (user-facing text).
NO_POSITIVES = "no positive labels"
NO_NEGATIVES = "no negative labels"
NO_PREDICTED_POSITIVES = "no predicted positives"
EMPTY = "no samples"
METRIC_NAMES = ("accuracy", "precision", "recall", "f2", "fbeta", "roc_auc", "pr_auc", "average_precision")
# is_better lives here, not in train.py, so that aggregation jobs rank without importing torch.


def is_better(value: float | None, best: float | None, metric: str) -> bool:
    """Whether `value` of a validation metric strictly beats `best`; None (undefined) never wins."""
    if value is None:
        return False
    if best is None:
        return True
    return value < best if metric in LOWER_IS_BETTER else value > best


def _labels(y) -> np.ndarray:
    return np.asarray(y).astype(bool, copy=False).ravel()


def _scores(prob) -> np.ndarray:
    return np.asarray(prob, dtype=np.float64).ravel()


def confusion(y_true, y_pred) -> np.ndarray:
    """2 x 2 counts [[tn, fp], [fn, tp]], laid out like sklearn's confusion_matrix(labels=[0, 1])."""
    y, p = _labels(y_true), _labels(y_pred)
    tp = int(np.count_nonzero(y & p))
    fp = int(np.count_nonzero(~y & p))
    fn = int(np.count_nonzero(y & ~p))
    tn = y.size - tp - fp - fn
    return np.array([[tn, fp], [fn, tp]], dtype=np.int64)


def accuracy(y_true, y_pred) -> float | None:
    y, p = _labels(y_true), _labels(y_pred)
    if y.size == 0:
        return None
    return float(np.count_nonzero(y == p) / y.size)


def precision(y_true, y_pred) -> float | None:
    (_, fp), (_, tp) = confusion(y_true, y_pred)
    return None if tp + fp == 0 else float(tp / (tp + fp))


def recall(y_true, y_pred) -> float | None:
    (_, _), (fn, tp) = confusion(y_true, y_pred)
    return None if tp + fn == 0 else float(tp / (tp + fn))


def fbeta(y_true, y_pred, beta: float = 2.0) -> float | None:
    """F-beta (beta = 2 weighs recall 4x); undefined without positive labels (recall is 0/0)."""
    (_, fp), (fn, tp) = confusion(y_true, y_pred)
    if tp + fn == 0:
        return None
    b2 = beta * beta
    return float((1 + b2) * tp / ((1 + b2) * tp + b2 * fn + fp))


def roc_auc(y_true, prob) -> float | None:
    """Area under the ROC curve as the Mann-Whitney statistic with average ranks for ties."""
    y, s = _labels(y_true), _scores(prob)
    n_pos = int(np.count_nonzero(y))
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = _average_ranks(s)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def average_precision(y_true, prob) -> float | None:
    """PR-AUC as sklearn defines it: sum over distinct thresholds of (R_n - R_{n-1}) * P_n."""
    y, s = _labels(y_true), _scores(prob)
    if not y.any():
        return None
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    # last position of each run of equal scores: one threshold per distinct score
    ends = np.r_[np.flatnonzero(np.diff(s)), y.size - 1]
    tps = np.cumsum(y)[ends]
    precisions = tps / (ends + 1)
    recalls = tps / tps[-1]
    return float(np.sum(np.diff(recalls, prepend=0.0) * precisions))


def binary_metrics(y_true, prob, threshold: float = 0.5) -> dict[str, float | None]:
    """accuracy, precision, recall, f2 at `threshold` (prob >= threshold is positive), roc_auc, pr_auc."""
    pred = _scores(prob) >= threshold
    return {
        "accuracy": accuracy(y_true, pred),
        "precision": precision(y_true, pred),
        "recall": recall(y_true, pred),
        "f2": fbeta(y_true, pred, beta=2.0),
        "roc_auc": roc_auc(y_true, prob),
        "pr_auc": average_precision(y_true, prob),
    }


def undefined_reason(y_true, metric: str, y_pred=None) -> str | None:
    """Why `metric` is None on these labels (and predictions, for precision); None when defined."""
    if metric not in METRIC_NAMES:
        raise ValueError(f"undefined_reason: unknown metric {metric!r} (one of {', '.join(METRIC_NAMES)})")
    y = _labels(y_true)
    if y.size == 0:
        return EMPTY
    has_pos, has_neg = bool(y.any()), bool((~y).any())
    if metric in ("recall", "f2", "fbeta", "pr_auc", "average_precision") and not has_pos:
        return NO_POSITIVES
    if metric == "roc_auc" and not (has_pos and has_neg):
        return NO_POSITIVES if not has_pos else NO_NEGATIVES
    if metric == "precision":
        if y_pred is None:
            raise ValueError("undefined_reason: precision needs y_pred")
        if not _labels(y_pred).any():
            return NO_PREDICTED_POSITIVES
    return None


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their average rank (like scipy.stats.rankdata)."""
    order = np.argsort(values, kind="stable")
    sorted_vals = values[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_vals)) + 1]
    ends = np.r_[starts[1:], values.size]
    mean_rank = (starts + ends + 1) / 2.0  # average of ranks start+1 .. end
    ranks = np.empty(values.size, dtype=np.float64)
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks
