"""A class-frequency term on the blended scores, its weight chosen on OOF recordings.

LWLRAP ranks the classes within each recording. Where the classes are skewed (RFCx: a few
species call in most recordings) and a model trained on few rows separates them weakly, the
ranking that gives every recording the classes' frequencies can beat the model, and the sum
of both beats each. 05 adds `weight x log(rate_c)` to every recording's blended score of
class c, where rate_c is the share of train recordings with a TP row of c (add-one smoothed).
The weight is chosen on the blend's OOF predictions by LWLRAP from `WEIGHTS`, each fold's
rates counted on the other folds' recordings (so a recording's own label never lifts its
score); 0 (no term) unless a weight scores above it. The OOF truth is the sparse TP truth,
so the choice assumes the test recordings are skewed as the annotated train rows are.
"""
from __future__ import annotations

import numpy as np

from common import metrics

WEIGHTS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)
MIN_GAIN = 0.002  # OOF LWLRAP a weight must add over no term


def log_rates(truth: np.ndarray) -> np.ndarray:
    """(K,) log of each class's add-one smoothed share of rows with a positive."""
    truth = np.asarray(truth) > 0
    return np.log((truth.sum(axis=0) + 1.0) / (len(truth) + 2.0))


def cross_fitted(truth: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """(N, K): each row's log rates counted on the rows of the other groups (folds)."""
    truth, groups = np.asarray(truth) > 0, np.asarray(groups)
    out = np.empty(truth.shape, dtype=np.float64)
    for g in np.unique(groups):
        rows = groups == g
        out[rows] = log_rates(truth[~rows])
    return out


def choose(oof_scores: np.ndarray, truth: np.ndarray, groups: np.ndarray,
           weights=WEIGHTS, score=metrics.lwlrap) -> dict:
    """{"weight", "cv_by_weight": {w: OOF LWLRAP}, "cv_rates_only"}: the weight whose OOF
    LWLRAP (`score(truth, scores)`) is highest, 0 unless it beats no term by MIN_GAIN."""
    truth = np.asarray(truth) > 0
    if not truth.any() or len(np.unique(groups)) < 2:
        return {"weight": 0.0, "cv_by_weight": {}, "note": "no OOF truth across folds"}
    term = cross_fitted(truth, groups)
    scores = np.asarray(oof_scores, dtype=np.float64)
    cv = {float(w): score(truth, scores + w * term) for w in weights}
    best = max(cv, key=lambda w: (cv[w], -w))
    weight = best if cv[best] >= cv[0.0] + MIN_GAIN else 0.0
    ties = np.arange(truth.shape[1])[None, :] * 1e-9  # the baseline's order among equal rates
    return {"weight": weight, "cv_by_weight": cv,
            "cv_rates_only": score(truth, term + ties)}


def check_setting(value) -> None:
    """`frequency_term` is auto, none or a weight >= 0."""
    from common.cli import ConfigError
    if str(value) in ("auto", "none"):
        return
    try:
        ok = float(value) >= 0
    except ValueError:
        ok = False
    if not ok:
        raise ConfigError(f"frequency_term={value!r}: use auto, none or a weight >= 0 (e.g. 1)")


def for_blend(setting, oof_scores: np.ndarray, truth: np.ndarray, groups: np.ndarray,
              score=metrics.lwlrap) -> dict:
    """The term of a blend: {"weight", "note", "cv"}: weight chosen on its OOF scores
    (`setting` auto), 0 (none, or no OOF truth) or as set; `cv` its OOF `score` with the
    term (None when the weight is 0), and a one-line note of the figures behind it."""
    setting = str(setting)
    if setting == "none" or not len(truth):
        return {"weight": 0.0, "note": "off", "cv": None}
    fixed = setting != "auto"
    got = choose(oof_scores, truth, groups, (0.0, float(setting)) if fixed else WEIGHTS, score)
    cv = got["cv_by_weight"]
    if not cv:
        return {"weight": 0.0, "note": got["note"], "cv": None}
    weight = float(setting) if fixed else got["weight"]
    note = (f"weight {weight:g}{'' if fixed else ' chosen on OOF'}: OOF LWLRAP {cv[0.0]:.4f} "
            f"without, {cv[weight]:.4f} with; class shares alone {got['cv_rates_only']:.4f}; "
            "by weight " + ", ".join(f"{w:g} {v:.4f}" for w, v in cv.items()))
    return {"weight": weight, "note": note, "cv": cv[weight] if weight else None}


def apply(scores: np.ndarray, truth: np.ndarray, weight: float) -> np.ndarray:
    """scores + weight x log rates counted on every row of `truth` (the train recordings)."""
    scores = np.asarray(scores, dtype=np.float64)
    if not weight:
        return scores
    return scores + weight * log_rates(truth)[None, :]
