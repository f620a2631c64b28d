"""Binary classification metrics: scikit-learn's, with None and a reason where a metric is undefined.

Every metric takes labels in {0, 1}; the threshold metrics take hard predictions in {0, 1} and the
ranking metrics take P(positive). A metric that is undefined on the given labels (e.g. ROC-AUC with
one class only, recall/F-beta without any positive label) returns None, never 0 or NaN and never a
warning, and `undefined_reason` says why (the slices table reports the reason in a column).

The threshold metrics and the confusion matrix are scikit-learn's. ROC-AUC and average precision
are computed here (RankedScores): scikit-learn's differ from these in the last bit for about a third
of inputs (its ROC area is a sum of trapezoids; the Mann-Whitney count here is exact). The bootstrap
needs every metric on a thousand resamples of each model, where scikit-learn's calls would take
minutes: it counts resampled tiles instead (resampled_threshold_metrics, RankedScores(...).auc_and_ap).
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
# scikit-learn is imported inside the metrics that use it: the import takes seconds, and those
# jobs import this module for is_better only.


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


# ---------------------------------------------------------------- threshold metrics (scikit-learn)


def confusion(y_true, y_pred) -> np.ndarray:
    """2 x 2 counts [[tn, fp], [fn, tp]] (scikit-learn's confusion_matrix; all zeros without samples)."""
    from sklearn.metrics import confusion_matrix

    y, p = _labels(y_true), _labels(y_pred)
    if y.size == 0:
        return np.zeros((2, 2), dtype=np.int64)
    return confusion_matrix(y, p, labels=[False, True]).astype(np.int64, copy=False)


def accuracy(y_true, y_pred) -> float | None:
    from sklearn.metrics import accuracy_score

    y, p = _labels(y_true), _labels(y_pred)
    return None if y.size == 0 else float(accuracy_score(y, p))


def precision(y_true, y_pred) -> float | None:
    """Undefined (None) without predicted positives, where scikit-learn would warn and give 0."""
    from sklearn.metrics import precision_score

    y, p = _labels(y_true), _labels(y_pred)
    return None if not p.any() else float(precision_score(y, p))


def recall(y_true, y_pred) -> float | None:
    """Undefined (None) without positive labels, where scikit-learn would warn and give 0."""
    from sklearn.metrics import recall_score

    y, p = _labels(y_true), _labels(y_pred)
    return None if not y.any() else float(recall_score(y, p))


def fbeta(y_true, y_pred, beta: float = 2.0) -> float | None:
    """F-beta (beta = 2 weighs recall 4x); undefined without positive labels (recall is 0/0)."""
    from sklearn.metrics import fbeta_score

    y, p = _labels(y_true), _labels(y_pred)
    return None if not y.any() else float(fbeta_score(y, p, beta=beta))


def resampled_threshold_metrics(counts: np.ndarray, y_true, y_pred, beta: float = 2.0) -> tuple:
    """(accuracy, precision, recall, F-beta) of the resample that holds tile i counts[i] times.

    The numbers of the functions above, bit for bit, None where undefined: counted here because the
    bootstrap needs them on a thousand resamples per model, and scikit-learn's calls take
    milliseconds each (minutes per evaluation instead of seconds)."""
    y, p = _labels(y_true), _labels(y_pred)
    n, positives, predicted, tp = int(counts.sum()), int(counts @ y), int(counts @ p), int(counts @ (y & p))
    fp, fn = predicted - tp, positives - tp
    b2 = beta * beta
    return (
        None if n == 0 else (n - fp - fn) / n,
        None if predicted == 0 else tp / predicted,
        None if positives == 0 else tp / positives,
        None if positives == 0 else (1 + b2) * tp / ((1 + b2) * tp + b2 * fn + fp),
    )


# ---------------------------------------------------------------- ranking metrics


class RankedScores:
    """One model's tiles sorted once by score, in runs of equal score (one threshold per run).

    The ranking metrics of a resample that holds tile i counts[i] times come from per-run counts,
    without sorting again: the bootstrap's resamples cost O(n) each instead of a sort each."""

    def __init__(self, y_true, prob):
        y, s = _labels(y_true), _scores(prob)
        if y.size != s.size:
            raise ValueError(f"ranking metrics: {y.size} labels but {s.size} scores")
        self._order = np.argsort(-s, kind="stable")  # highest score first
        self._y = y[self._order]
        ranked = s[self._order]
        self._starts = np.r_[0, np.flatnonzero(np.diff(ranked)) + 1] if s.size else np.zeros(0, np.intp)

    def _runs(self, counts: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """(tiles, positives) per run that holds any tile, highest score first (int64)."""
        w = np.ones(self._y.size, np.int64) if counts is None else np.asarray(counts, np.int64)[self._order]
        if w.size == 0:
            return w, w
        tiles = np.add.reduceat(w, self._starts)
        positives = np.add.reduceat(w * self._y, self._starts)
        held = tiles > 0
        return tiles[held], positives[held]

    def roc_auc(self, counts: np.ndarray | None = None) -> float | None:
        """Area under the ROC curve: the Mann-Whitney U (a tie counts half) over n_pos * n_neg."""
        return self._roc_auc(*self._runs(counts))

    def average_precision(self, counts: np.ndarray | None = None) -> float | None:
        """PR-AUC as scikit-learn defines it: sum over thresholds of (R_n - R_{n-1}) * P_n."""
        return self._average_precision(*self._runs(counts))

    def auc_and_ap(self, counts: np.ndarray | None = None) -> tuple[float | None, float | None]:
        """(roc_auc, average_precision) from one pass over the runs."""
        runs = self._runs(counts)
        return self._roc_auc(*runs), self._average_precision(*runs)

    @staticmethod
    def _roc_auc(tiles: np.ndarray, positives: np.ndarray) -> float | None:
        negatives = tiles - positives
        n_pos, n_neg = int(positives.sum()), int(negatives.sum())
        if n_pos == 0 or n_neg == 0:
            return None
        below = n_neg - np.cumsum(negatives)  # negatives scored lower than each run
        twice_u = int(positives @ (2 * below + negatives))  # integers: exact, one rounding at the end
        return twice_u / 2 / (n_pos * n_neg)

    @staticmethod
    def _average_precision(tiles: np.ndarray, positives: np.ndarray) -> float | None:
        tps = np.cumsum(positives)
        if tps.size == 0 or tps[-1] == 0:
            return None
        precisions = tps / np.cumsum(tiles)
        recalls = tps / tps[-1]
        return float(np.sum(np.diff(recalls, prepend=0.0) * precisions))


def roc_auc(y_true, prob) -> float | None:
    """Area under the ROC curve (ties count half); undefined with one class only."""
    return RankedScores(y_true, prob).roc_auc()


def average_precision(y_true, prob) -> float | None:
    """PR-AUC (average precision, as scikit-learn defines it); undefined without positive labels."""
    return RankedScores(y_true, prob).average_precision()


# ---------------------------------------------------------------- all of them, and why one is undefined


def binary_metrics(y_true, prob, threshold: float = 0.5) -> dict[str, float | None]:
    """accuracy, precision, recall, f2 at `threshold` (prob >= threshold is positive), roc_auc, pr_auc."""
    pred = _scores(prob) >= threshold
    auc, ap = RankedScores(y_true, prob).auc_and_ap()
    return {
        "accuracy": accuracy(y_true, pred),
        "precision": precision(y_true, pred),
        "recall": recall(y_true, pred),
        "f2": fbeta(y_true, pred, beta=2.0),
        "roc_auc": auc,
        "pr_auc": ap,
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
