"""The BirdCLEF metrics on hand-computed rows: the 2021 F1 rule (common.metrics.row_f1), the
2024/2025 macro ROC-AUC over classes with a positive and the 2023 padded cmAP, the last two
also against scikit-learn."""
from __future__ import annotations

import numpy as np
import pytest

from common.metrics import (average_precision, macro_roc_auc, padded_cmap, roc_auc, row_f1,
                            threshold_sweep)

# classes a, b, c; an all-zero truth row is `nocall`
TRUTH = np.array([[1, 0, 0],   # {a}      pred {a}      -> 1
                  [0, 0, 0],   # nocall   pred nocall   -> 1
                  [0, 0, 0],   # nocall   pred {b}      -> 0 (FP b, FN nocall)
                  [1, 1, 0],   # {a, b}   pred {a, c}   -> 2*1 / (2 + 1 + 1) = 0.5
                  [0, 0, 1],   # {c}      pred nocall   -> 0 (FP nocall, FN c)
                  [1, 1, 1]])  # {a,b,c}  pred {a,b,c}  -> 1
PROBS = np.array([[0.9, 0.1, 0.2],
                  [0.1, 0.4, 0.3],
                  [0.2, 0.7, 0.1],
                  [0.6, 0.3, 0.8],
                  [0.1, 0.1, 0.45],
                  [0.55, 0.5, 0.99]])


def test_row_f1_by_hand_nocall_and_averaging():
    out = row_f1(TRUTH, PROBS, 0.5)
    assert out["f1"] == pytest.approx((1 + 1 + 0 + 0.5 + 0 + 1) / 6)
    # pooled: TP 1+1+0+1+0+3 = 6, FP 0+0+1+1+1+0 = 3, FN 0+0+1+1+1+0 = 3
    assert out["micro_f1"] == pytest.approx(12 / 18)
    assert out["nocall_rows"] == 2 and out["rows"] == 6


def test_row_f1_threshold_moves_rows_to_nocall():
    # at 0.95 only row 6's c passes: rows 2, 3 become right (nocall), the rest mostly wrong
    out = row_f1(TRUTH, PROBS, 0.95)
    # row1 FP nocall FN a -> 0; row2 1; row3 1; row4 0; row5 0; row6 {c}: 2/(2+0+2) = 0.5
    assert out["f1"] == pytest.approx(2.5 / 6)


def test_row_f1_all_nocall_is_perfect_when_nothing_calls():
    truth = np.zeros((4, 3))
    assert row_f1(truth, np.full((4, 3), 0.2))["f1"] == 1.0
    assert row_f1(truth, np.full((4, 3), 0.7))["f1"] == 0.0


def test_row_f1_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="differ in shape"):
        row_f1(TRUTH, PROBS[:, :2])


def test_threshold_sweep_reports_best_next_to_half():
    out = threshold_sweep(TRUTH, PROBS)
    assert out["f1_at_0.5"] == pytest.approx(3.5 / 6)
    assert out["best_f1"] >= out["f1_at_0.5"]
    assert out["best_f1"] == pytest.approx(row_f1(TRUTH, PROBS, out["best_threshold"])["f1"])


# ----------------------------------------------------------------------------- 2023-2025
# classes a, b, c over 4 segments; b has no positive
Y = np.array([[1, 0, 0], [0, 0, 1], [0, 0, 0], [1, 0, 0]])
S = np.array([[0.9, 0.1, 0.2], [0.1, 0.4, 0.3], [0.4, 0.7, 0.5], [0.4, 0.3, 0.1]])


def test_macro_roc_auc_by_hand_skips_a_class_without_positive():
    # a: positives 0.9, 0.4 vs negatives 0.1, 0.4 -> pairs 1 + 1 + 1 + 0.5 (tie) = 3.5 / 4
    # c: positive 0.3 above 0.2 and 0.1, below 0.5 -> 2 / 3; b: no positive, skipped
    assert roc_auc(Y[:, 0], S[:, 0]) == pytest.approx(0.875)
    assert np.isnan(roc_auc(Y[:, 1], S[:, 1]))
    assert macro_roc_auc(Y, S) == pytest.approx((0.875 + 2 / 3) / 2)
    assert np.isnan(macro_roc_auc(np.zeros((3, 2)), np.ones((3, 2))))


def test_padded_cmap_by_hand():
    # a: AP 1 x 1/2 + 2/3 x 1/2 (the tie at 0.4 counts its positive and negative together)
    assert average_precision(Y[:, 0], S[:, 0]) == pytest.approx(0.5 + 1 / 3)
    # five all-ones rows: a 5/7 + 1/7 + 7/8 x 1/7; b 1 (only the padding is positive);
    # c 5/6 + 6/7 x 1/6 (0.5, a negative, comes before c's positive at 0.3)
    a, b, c = 6 / 7 + 1 / 8, 1.0, 5 / 6 + 1 / 7
    assert padded_cmap(Y, S) == pytest.approx((a + b + c) / 3)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_birdclef_scores_equal_sklearn(seed):
    from sklearn.metrics import average_precision_score, roc_auc_score
    rng = np.random.default_rng(seed)
    truth = (rng.random((60, 7)) < 0.15).astype(int)
    truth[:, 3] = 0  # a class without a positive: skipped by the ROC-AUC, padded for cmAP
    scores = np.round(rng.random((60, 7)), 1)  # rounded: many ties
    scored = truth.sum(axis=0) > 0
    want = roc_auc_score(truth[:, scored], scores[:, scored], average="macro")
    assert macro_roc_auc(truth, scores) == pytest.approx(want)
    pad = np.ones((5, 7))
    want = average_precision_score(np.vstack([truth, pad]), np.vstack([scores, pad]),
                                   average="macro")
    assert padded_cmap(truth, scores) == pytest.approx(want)
    for k in np.flatnonzero(scored):
        assert average_precision(truth[:, k], scores[:, k]) == pytest.approx(
            average_precision_score(truth[:, k], scores[:, k]))
