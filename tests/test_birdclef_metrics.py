"""The BirdCLEF 2021 F1 rule (common.metrics.row_f1) on hand-computed rows."""
from __future__ import annotations

import numpy as np
import pytest

from common.metrics import row_f1, threshold_sweep

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
