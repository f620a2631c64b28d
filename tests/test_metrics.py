"""The metrics equal scikit-learn's, and undefined metrics are None with a reason."""

import numpy as np
import pytest
from sklearn import metrics as skm

from pcamflow import metrics as m


def random_case(seed, n=500, ties=False):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    prob = rng.random(n)
    if ties:  # coarse scores: many tied thresholds
        prob = np.round(prob * 5) / 5
    prob = np.clip(prob + 0.3 * (y - 0.5), 0, 1)
    return y, prob


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("ties", [False, True])
def test_each_metric_equals_sklearn(seed, ties):
    y, prob = random_case(seed, ties=ties)
    pred = (prob >= 0.5).astype(int)
    assert m.accuracy(y, pred) == pytest.approx(skm.accuracy_score(y, pred), abs=1e-12)
    assert m.fbeta(y, pred, beta=2) == pytest.approx(skm.fbeta_score(y, pred, beta=2), abs=1e-12)
    assert m.precision(y, pred) == pytest.approx(skm.precision_score(y, pred), abs=1e-12)
    assert m.recall(y, pred) == pytest.approx(skm.recall_score(y, pred), abs=1e-12)
    assert m.roc_auc(y, prob) == pytest.approx(skm.roc_auc_score(y, prob), abs=1e-12)
    assert m.average_precision(y, prob) == pytest.approx(skm.average_precision_score(y, prob), abs=1e-12)
    np.testing.assert_array_equal(m.confusion(y, pred), skm.confusion_matrix(y, pred, labels=[0, 1]))


def test_binary_metrics_thresholds_probabilities_like_sklearn():
    y, prob = random_case(7)
    out = m.binary_metrics(y, prob, threshold=0.3)
    pred = prob >= 0.3
    assert out["accuracy"] == pytest.approx(skm.accuracy_score(y, pred), abs=1e-12)
    assert out["f2"] == pytest.approx(skm.fbeta_score(y, pred, beta=2), abs=1e-12)
    assert out["roc_auc"] == pytest.approx(skm.roc_auc_score(y, prob), abs=1e-12)
    assert out["pr_auc"] == pytest.approx(skm.average_precision_score(y, prob), abs=1e-12)


def test_one_class_only_gives_none_with_a_reason():
    y = np.zeros(10, dtype=np.uint8)
    prob = np.linspace(0, 1, 10)
    out = m.binary_metrics(y, prob)
    assert out["roc_auc"] is None and out["pr_auc"] is None
    assert out["f2"] is None and out["recall"] is None
    assert out["accuracy"] == pytest.approx(skm.accuracy_score(y, prob >= 0.5))
    assert m.undefined_reason(y, "roc_auc") == m.NO_POSITIVES
    assert m.undefined_reason(y, "f2") == m.NO_POSITIVES
    assert m.undefined_reason(y, "accuracy") is None

    ones = np.ones(10, dtype=np.uint8)
    assert m.roc_auc(ones, prob) is None
    assert m.undefined_reason(ones, "roc_auc") == m.NO_NEGATIVES
    # only positives: AP and F2 are defined (as in sklearn)
    assert m.average_precision(ones, prob) == pytest.approx(skm.average_precision_score(ones, prob))
    assert m.fbeta(ones, prob >= 0.5, 2) == pytest.approx(skm.fbeta_score(ones, prob >= 0.5, beta=2))


def test_no_predicted_positives_leaves_precision_undefined_but_f2_zero():
    y = np.array([0, 1, 1, 0])
    pred = np.zeros(4, dtype=int)
    assert m.precision(y, pred) is None
    assert m.undefined_reason(y, "precision", pred) == m.NO_PREDICTED_POSITIVES
    assert m.fbeta(y, pred, 2) == skm.fbeta_score(y, pred, beta=2, zero_division=0) == 0.0


def test_empty_input_is_undefined_not_nan():
    empty = np.array([], dtype=int)
    assert m.accuracy(empty, empty) is None
    assert m.roc_auc(empty, empty) is None
    assert m.undefined_reason(empty, "accuracy") == m.EMPTY


def test_unknown_metric_name_is_an_error():
    with pytest.raises(ValueError, match="unknown metric"):
        m.undefined_reason([0, 1], "auroc")
