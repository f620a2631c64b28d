"""Known values, ties, undefined metrics (None with a reason, no warning), and the bootstrap's counting."""

import warnings
from fractions import Fraction

import numpy as np
import pytest
from sklearn import metrics as skm

from pcamflow import metrics as m

# A hand-checked case. At 0.5: tp = 2 (0.9, 0.8), fp = 1 (0.6), fn = 1 (0.4), tn = 2.
Y = np.array([1, 1, 0, 0, 1, 0])
PROB = np.array([0.9, 0.4, 0.6, 0.2, 0.8, 0.1])


def random_case(seed, n=500, ties=False):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    prob = rng.random(n)
    if ties:  # coarse scores: many tied thresholds
        prob = np.round(prob * 5) / 5
    prob = np.clip(prob + 0.3 * (y - 0.5), 0, 1)
    return y, prob


@pytest.fixture
def no_warnings():
    """scikit-learn warns on undefined metrics; the project answers None instead, silently."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def test_known_values_on_a_hand_checked_case(no_warnings):
    out = m.binary_metrics(Y, PROB)
    assert out["accuracy"] == pytest.approx(4 / 6)
    assert out["precision"] == pytest.approx(2 / 3)
    assert out["recall"] == pytest.approx(2 / 3)
    assert out["f2"] == pytest.approx(5 * 2 / (5 * 2 + 4 * 1 + 1))  # (1 + 4) tp / ((1 + 4) tp + 4 fn + fp)
    assert out["roc_auc"] == pytest.approx(8 / 9)  # of 9 (positive, negative) pairs, 0.4 < 0.6 is wrong
    # thresholds 0.9, 0.8, 0.6, 0.4 reach recall 1/3, 2/3, 2/3, 1 with precision 1, 1, 2/3, 3/4
    assert out["pr_auc"] == pytest.approx(1 / 3 + 1 / 3 + 0 + 1 / 3 * 3 / 4)
    np.testing.assert_array_equal(m.confusion(Y, PROB >= 0.5), [[2, 1], [1, 2]])  # [[tn, fp], [fn, tp]]


def test_a_probability_equal_to_the_threshold_is_positive():
    out = m.binary_metrics([1, 0], [0.3, 0.2], threshold=0.3)
    assert out["recall"] == 1.0 and out["precision"] == 1.0


def test_binary_metrics_thresholds_probabilities_like_sklearn():
    y, prob = random_case(7)
    out = m.binary_metrics(y, prob, threshold=0.3)
    pred = prob >= 0.3
    assert out["accuracy"] == pytest.approx(skm.accuracy_score(y, pred), abs=1e-12)
    assert out["f2"] == pytest.approx(skm.fbeta_score(y, pred, beta=2), abs=1e-12)
    assert out["roc_auc"] == pytest.approx(skm.roc_auc_score(y, prob), abs=1e-12)
    assert out["pr_auc"] == pytest.approx(skm.average_precision_score(y, prob), abs=1e-12)


def test_ties_count_half_and_their_order_does_not_matter():
    y, prob = np.array([1, 0, 1, 0]), np.array([0.5, 0.5, 0.7, 0.2])
    assert m.roc_auc(y, prob) == pytest.approx(3.5 / 4)  # the tied pair (0.5, 0.5) counts half
    # thresholds 0.7, 0.5: recall 1/2 at precision 1, then recall 1 at precision 2/3
    assert m.average_precision(y, prob) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    order = [1, 0, 3, 2]  # the tied tiles swapped
    assert m.roc_auc(y[order], prob[order]) == m.roc_auc(y, prob)
    assert m.average_precision(y[order], prob[order]) == m.average_precision(y, prob)
    # one score for every tile: no ranking at all
    assert m.roc_auc(y, np.full(4, 0.3)) == 0.5
    assert m.average_precision(y, np.full(4, 0.3)) == 0.5  # the prevalence


@pytest.mark.parametrize("seed", range(3))
def test_roc_auc_is_the_exact_pair_count_rounded_once(seed):
    """The share of (positive, negative) pairs ranked right, ties half, as an exact fraction."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 60)
    prob = np.round(rng.random(60) * 8) / 8  # ties
    pos, neg = prob[y == 1], prob[y == 0]
    twice_u = sum(2 * int(p > q) + int(p == q) for p in pos for q in neg)
    assert m.roc_auc(y, prob) == float(Fraction(twice_u, 2 * pos.size * neg.size))


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("ties", [False, True])
def test_ranking_metrics_equal_sklearn(seed, ties):
    y, prob = random_case(seed, ties=ties)
    assert m.roc_auc(y, prob) == pytest.approx(skm.roc_auc_score(y, prob), abs=1e-12)
    assert m.average_precision(y, prob) == pytest.approx(skm.average_precision_score(y, prob), abs=1e-12)


def six_metrics(y, prob, accuracy, precision, recall, fbeta, roc_auc, average_precision):
    """The bootstrap's metrics in evaluate.METRICS order, at threshold 0.5, by the given functions."""
    pred = prob >= 0.5
    hard = (accuracy(y, pred), precision(y, pred), recall(y, pred), fbeta(y, pred, beta=2))
    return (*hard, roc_auc(y, prob), average_precision(y, prob))


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("ties", [False, True])
def test_a_resample_counted_gives_the_metrics_of_the_resampled_tiles(seed, ties):
    """The bootstrap's path: the same numbers as the metrics of y[idx], bit for bit, and as sklearn's."""
    y, prob = random_case(seed, ties=ties)
    idx = np.random.default_rng(100 + seed).integers(0, y.size, size=y.size)
    counts = np.bincount(idx, minlength=y.size)
    yb, pb = y[idx], prob[idx]
    pred = prob >= 0.5
    counted = m.resampled_threshold_metrics(counts, y, pred) + m.RankedScores(y, prob).auc_and_ap(counts)
    direct = six_metrics(yb, pb, m.accuracy, m.precision, m.recall, m.fbeta, m.roc_auc, m.average_precision)
    assert counted == direct
    sklearn = six_metrics(
        yb,
        pb,
        skm.accuracy_score,
        skm.precision_score,
        skm.recall_score,
        skm.fbeta_score,
        skm.roc_auc_score,
        skm.average_precision_score,
    )
    assert counted == pytest.approx(sklearn, abs=1e-12)


def test_a_resample_without_positives_leaves_them_undefined(no_warnings):
    y, prob = np.array([1, 0, 0, 1]), np.array([0.9, 0.2, 0.6, 0.4])
    counts = np.array([0, 2, 2, 0])  # only the negatives drawn
    accuracy, precision, recall, f2 = m.resampled_threshold_metrics(counts, y, prob >= 0.5)
    assert accuracy == 0.5 and precision == 0.0 and recall is None and f2 is None
    assert m.RankedScores(y, prob).auc_and_ap(counts) == (None, None)
    _, precision, _, _ = m.resampled_threshold_metrics(counts, y, np.zeros(4, bool))
    assert precision is None


def test_one_class_only_gives_none_with_a_reason(no_warnings):
    y = np.zeros(10, dtype=np.uint8)
    prob = np.linspace(0, 1, 10)
    out = m.binary_metrics(y, prob)
    assert out["roc_auc"] is None and out["pr_auc"] is None
    assert out["f2"] is None and out["recall"] is None
    assert out["accuracy"] == pytest.approx(skm.accuracy_score(y, prob >= 0.5))
    assert m.undefined_reason(y, "roc_auc") == m.NO_POSITIVES
    assert m.undefined_reason(y, "f2") == m.NO_POSITIVES
    assert m.undefined_reason(y, "accuracy") is None
    np.testing.assert_array_equal(m.confusion(y, prob >= 0.5), [[5, 5], [0, 0]])

    ones = np.ones(10, dtype=np.uint8)
    assert m.roc_auc(ones, prob) is None
    assert m.undefined_reason(ones, "roc_auc") == m.NO_NEGATIVES
    # only positives: AP and F2 are defined (as in sklearn)
    assert m.average_precision(ones, prob) == pytest.approx(skm.average_precision_score(ones, prob))
    assert m.fbeta(ones, prob >= 0.5, 2) == pytest.approx(skm.fbeta_score(ones, prob >= 0.5, beta=2))


def test_no_predicted_positives_leaves_precision_undefined_but_f2_zero(no_warnings):
    y = np.array([0, 1, 1, 0])
    pred = np.zeros(4, dtype=int)
    assert m.precision(y, pred) is None
    assert m.undefined_reason(y, "precision", pred) == m.NO_PREDICTED_POSITIVES
    assert m.fbeta(y, pred, 2) == skm.fbeta_score(y, pred, beta=2, zero_division=0) == 0.0


def test_empty_input_is_undefined_not_nan(no_warnings):
    empty = np.array([], dtype=int)
    assert m.accuracy(empty, empty) is None
    assert m.roc_auc(empty, empty) is None
    assert m.undefined_reason(empty, "accuracy") == m.EMPTY
    assert all(v is None for v in m.binary_metrics(empty, empty.astype(float)).values())
    np.testing.assert_array_equal(m.confusion(empty, empty), np.zeros((2, 2)))


def test_unknown_metric_name_is_an_error():
    with pytest.raises(ValueError, match="unknown metric"):
        m.undefined_reason([0, 1], "auroc")
