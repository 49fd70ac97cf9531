"""common/metrics.py: LWLRAP against sklearn and by hand, F1 at a threshold, the baseline."""
from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import label_ranking_average_precision_score

from common.metrics import f1_at, lwlrap, per_class_ap, prevalence_baseline


def sklearn_lwlrap(truth, scores):
    truth = np.asarray(truth)
    keep = truth.sum(1) > 0
    return label_ranking_average_precision_score(truth[keep], scores[keep],
                                                 sample_weight=truth[keep].sum(1))


@pytest.mark.parametrize("seed", range(5))
def test_lwlrap_equals_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    truth = (rng.random((40, 7)) < 0.3).astype(int)
    truth[0] = 0  # a row without positive: dropped by both
    scores = np.round(rng.random((40, 7)), 1)  # many ties
    scores[1] = 0.5  # a row tied everywhere
    assert lwlrap(truth, scores) == pytest.approx(sklearn_lwlrap(truth, scores), rel=1e-12)


def test_lwlrap_equals_sklearn_multi_positive_rows():
    rng = np.random.default_rng(11)
    truth = (rng.random((25, 24)) < 0.15).astype(int)
    truth[:, 3] = 1
    scores = rng.normal(size=(25, 24))
    assert lwlrap(truth, scores) == pytest.approx(sklearn_lwlrap(truth, scores), rel=1e-12)


def test_lwlrap_hand_computed():
    truth = np.array([[1, 0, 1], [0, 1, 0]])
    scores = np.array([[0.9, 0.8, 0.1], [0.5, 0.2, 0.1]])
    # row 0: c0 rank 1 -> 1/1; c2 rank 3 with 2 positives at or above -> 2/3
    # row 1: c1 rank 2 -> 1/2; mean over the 3 positives
    assert lwlrap(truth, scores) == pytest.approx((1 + 2 / 3 + 1 / 2) / 3)


def test_lwlrap_ties_count_against_the_positive():
    # one positive tied with one negative: rank 2 -> precision 1/2
    assert lwlrap(np.array([[1, 0, 0]]), np.array([[0.5, 0.5, 0.1]])) == pytest.approx(0.5)


def test_lwlrap_perfect_and_rows_without_positive_dropped():
    truth = np.array([[1, 0, 1], [0, 1, 0]])
    scores = np.array([[0.9, 0.8, 0.1], [0.5, 0.2, 0.1]])
    base = lwlrap(truth, scores)
    more_truth = np.vstack([truth, [[0, 0, 0]]])
    more_scores = np.vstack([scores, [[0.1, 0.9, 0.3]]])
    assert lwlrap(more_truth, more_scores) == pytest.approx(base)
    assert lwlrap(truth, truth * 2.0) == pytest.approx(1.0)
    assert math.isnan(lwlrap(np.zeros((2, 3)), np.ones((2, 3))))


def test_lwlrap_is_label_weighted_not_row_weighted():
    truth = np.array([[1, 1, 1, 0], [1, 0, 0, 0]])
    scores = np.array([[4.0, 3.0, 2.0, 1.0], [0.0, 1.0, 2.0, 3.0]])
    # row 0: three positives at precision 1; row 1: one positive at rank 4 -> 1/4
    assert lwlrap(truth, scores) == pytest.approx((3 + 0.25) / 4)


def test_lwlrap_shape_mismatch():
    with pytest.raises(ValueError, match="shape"):
        lwlrap(np.zeros((2, 3)), np.zeros((2, 4)))


def test_f1_at_hand_computed():
    truth = np.array([[1, 0, 1], [0, 1, 0]])
    probs = np.array([[0.9, 0.6, 0.4], [0.1, 0.7, 0.5]])
    # pred >= 0.5: (0,0) (0,1) (1,1) (1,2); TP = (0,0) (1,1)
    out = f1_at(truth, probs, 0.5)
    assert out["precision"] == pytest.approx(2 / 4)
    assert out["recall"] == pytest.approx(2 / 3)
    assert out["f1"] == pytest.approx(4 / 7)
    strict = f1_at(truth, probs, 0.8)  # only (0, 0)
    assert strict["precision"] == pytest.approx(1.0)
    assert strict["recall"] == pytest.approx(1 / 3)
    assert strict["f1"] == pytest.approx(0.5)


def test_f1_at_no_predictions_is_zero():
    out = f1_at(np.array([[1, 0]]), np.array([[0.1, 0.2]]), 0.5)
    assert out == {"f1": 0.0, "precision": 0.0, "recall": 0.0}


def test_prevalence_baseline_equals_lwlrap_of_tiled_prevalence():
    rng = np.random.default_rng(3)
    rates = np.array([0.9, 0.05, 0.5, 0.3, 0.15, 0.7])
    truth = (rng.random((60, 6)) < rates).astype(int)
    prevalence = truth.mean(0)
    assert len(set(prevalence)) == 6  # distinct, so no tie-break matters
    expected = lwlrap(truth, np.tile(prevalence, (60, 1)))
    assert prevalence_baseline(truth) == pytest.approx(expected, rel=1e-12)
    assert 0 < prevalence_baseline(truth) < 1


def test_per_class_ap():
    truth = np.array([[1, 0], [0, 0], [1, 0]])
    scores = np.array([[0.9, 0.1], [0.2, 0.5], [0.3, 0.2]])
    ap = per_class_ap(truth, scores)
    assert ap[0] == pytest.approx(1.0)
    assert math.isnan(ap[1])
