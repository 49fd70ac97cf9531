"""Blending test predictions: folds of one run, then runs (models), then the submission.

All score arrays are (N, K) logits over the same recordings in the same order.
- fold blend: mean over fold models weighted by each fold's CV LWLRAP (the recipe).
- `align`: each run's logits standardised to mean 0 / std 1 over all its entries, then
  averaged (the 5th-place RFCx team), so a model with wide logits cannot dominate.
- `rank`: the mean of per-class ranks (each column ranked over recordings, scaled to 0..1).
  It drops each class's base rate, which LWLRAP (a ranking within each row) relies on, so
  it usually scores below `align` on RFCx; it is there to compare.
- `oof`: `align` with non-negative weights summing to 1, fitted to maximise the OOF LWLRAP.
Calibration and the test prior: common/calibration.py.
"""
from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from common import metrics
from common.cli import ConfigError

BLENDS = ("align", "rank", "oof")


def weighted_mean(preds: list, weights) -> np.ndarray:
    """sum_i w_i * preds_i / sum_i w_i."""
    weights = np.asarray(weights, dtype=np.float64)
    if len(preds) != len(weights) or weights.sum() <= 0:
        raise ValueError(f"{len(preds)} predictions need as many weights with a positive sum, "
                         f"got {weights.tolist()}")
    return sum(w * np.asarray(p, dtype=np.float64) for w, p in zip(weights, preds)) / weights.sum()


def standardise(x: np.ndarray) -> np.ndarray:
    """(x - mean) / std over every entry (std 0 -> only the mean removed)."""
    x = np.asarray(x, dtype=np.float64)
    std = x.std()
    return (x - x.mean()) / (std if std > 0 else 1.0)


def class_ranks(x: np.ndarray) -> np.ndarray:
    """Each column ranked over rows (ties averaged), scaled to (0, 1]."""
    return rankdata(np.asarray(x, dtype=np.float64), axis=0) / max(len(x), 1)


def blend(method: str, preds: list, weights=None, calibrated: bool = False) -> np.ndarray:
    """Blend per-run (N, K) logits; `weights` (default equal) for `oof` (and any method).
    `calibrated` logits (common/calibration.py) are on one scale already: `align` and `oof`
    average them as they are, so the blend stays a calibrated log odds."""
    if method not in BLENDS:
        raise ConfigError(f"blend={method!r}: choose one of {', '.join(BLENDS)}")
    weights = np.ones(len(preds)) if weights is None else weights
    transform = class_ranks if method == "rank" else _identity if calibrated else standardise
    return weighted_mean([transform(p) for p in preds], weights)


def _identity(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


# ----------------------------------------------------------------------------- OOF weights
def fast_lwlrap(truth: np.ndarray, scores: np.ndarray) -> float:
    """metrics.lwlrap vectorised over rows (same definition, ties against the positive)."""
    truth = np.asarray(truth) > 0
    keep = truth.any(axis=1)
    truth, scores = truth[keep], np.asarray(scores, dtype=np.float64)[keep]
    if not truth.size:
        return float("nan")
    above = scores[:, None, :] >= scores[:, :, None]       # [i, c, j]: s_ij >= s_ic
    rank = above.sum(axis=2)
    pos_rank = (above & truth[:, None, :]).sum(axis=2)
    return float(((pos_rank / rank) * truth).sum() / truth.sum())


def simplex_grid(m: int, steps: int) -> np.ndarray:
    """Every weight vector of m non-negative multiples of 1/steps summing to 1."""
    out = [np.array(c + (steps - sum(c),), dtype=np.float64) / steps
           for c in itertools.product(range(steps + 1), repeat=m - 1) if sum(c) <= steps]
    return np.stack(out)


def fit_oof_weights(oofs: list, truth: np.ndarray, steps: int = 10, max_grid: int = 3000,
                    calibrated: bool = False, to_species=None) -> tuple[np.ndarray, float]:
    """Weights (M,) >= 0 summing to 1 maximising the LWLRAP of blend('oof', oofs, w), per
    species where `to_species` (common/species.py) maps the (N, K) classes to them.

    A full simplex grid (step 1/steps) when it has at most `max_grid` points, else a
    coordinate search (move weight between pairs of runs, shrinking the step) started from
    the best of the single runs and the equal blend. Each single run is always a candidate,
    so the result is never below the best single run on these OOF predictions.
    """
    z = np.stack([_identity(o) if calibrated else standardise(o) for o in oofs])  # (M, N, K)
    to_species = to_species or _identity
    truth = to_species(truth)
    fast = lambda w: fast_lwlrap(truth, to_species(np.tensordot(w, z, axes=1)))  # noqa: E731
    exact = lambda w: metrics.lwlrap(truth, to_species(np.tensordot(w, z, axes=1)))  # noqa: E731
    m = len(oofs)
    singles = list(np.eye(m))
    if math.comb(steps + m - 1, m - 1) <= max_grid:
        best = max(singles + list(simplex_grid(m, steps)), key=fast)
    else:
        best = _coordinate_search(fast, singles + [np.full(m, 1.0 / m)], steps)
    single = max(singles, key=exact)
    if exact(best) < exact(single):  # a float tie of the fast metric picked a worse point
        best = single
    return best, exact(best)


def _coordinate_search(score, starts: list, steps: int, rounds: int = 50) -> np.ndarray:
    best = max(starts, key=score)
    best_score = score(best)
    for delta in (2.0 / steps, 1.0 / steps, 0.5 / steps):
        for _ in range(rounds):
            improved = False
            for i, j in itertools.permutations(range(len(best)), 2):
                move = min(delta, best[j])
                if move <= 0:
                    continue
                cand = best.copy()
                cand[i] += move
                cand[j] -= move
                if (s := score(cand)) > best_score:
                    best, best_score, improved = cand, s, True
            if not improved:
                break
    return best


# ----------------------------------------------------------------------------- priors
def load_priors(path, classes: list) -> np.ndarray:
    """(K,) test priors from a CSV with columns class,prior (every class, 0 < prior < 1)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"prior_scaling={str(path)!r}: use none, auto, em, or a CSV path "
                          "with columns class,prior")
    table = pd.read_csv(path, dtype={"class": str})
    if not {"class", "prior"} <= set(table.columns):
        raise ConfigError(f"{path}: needs columns class,prior; found {list(table.columns)}")
    found = dict(zip(table["class"], table["prior"]))
    missing = [c for c in classes if c not in found]
    if missing:
        raise ConfigError(f"{path}: no prior for classes {missing}")
    priors = np.array([found[c] for c in classes], dtype=np.float64)
    bad = [c for c, p in zip(classes, priors) if not 0 < p < 1]
    if bad:
        raise ConfigError(f"{path}: priors of {bad} must lie strictly between 0 and 1")
    return priors


# ----------------------------------------------------------------------------- submission
def read_sample(path, ids: list, classes: list) -> pd.DataFrame:
    """The sample submission (all text: ids keep leading zeros; its values are not used), or
    when there is none, a frame of every test recording x class."""
    if Path(path).is_file():
        return pd.read_csv(path, dtype=str)
    print(f"warning: no {path}; the submission lists every test recording x class", flush=True)
    return pd.DataFrame({"recording_id": [str(i) for i in ids], **{c: 0.0 for c in classes}})


def check_submission(sub: pd.DataFrame, sample: pd.DataFrame) -> None:
    """Raise ValueError saying what differs from the sample submission's shape."""
    if list(sub.columns) != list(sample.columns):
        missing = [c for c in sample.columns if c not in sub.columns]
        extra = [c for c in sub.columns if c not in sample.columns]
        raise ValueError(f"submission columns differ from the sample: missing {missing}, "
                         f"extra {extra}" + ("" if missing or extra else ", wrong order"))
    key = sample.columns[0]
    if len(sub) != len(sample):
        raise ValueError(f"submission has {len(sub)} rows, the sample {len(sample)}")
    ours, theirs = sub[key].astype(str).to_numpy(), sample[key].astype(str).to_numpy()
    if (ours != theirs).any():
        unknown = sorted(set(ours) - set(theirs))[:5]
        first = int(np.flatnonzero(ours != theirs)[0])
        what = f"ids not in the sample {unknown}" if unknown else "sample ids in another order"
        raise ValueError(f"submission {key} differs from the sample at row {first} "
                         f"({ours[first]!r} vs {theirs[first]!r}): {what}")
    values = sub[list(sample.columns[1:])]
    numeric = values.apply(pd.to_numeric, errors="coerce")
    bad = ~np.isfinite(numeric.to_numpy(dtype=np.float64))
    if bad.any():
        row, col = map(int, np.argwhere(bad)[0])
        raise ValueError(f"submission has {int(bad.sum())} NaN/inf/non-numeric values, first at "
                         f"{key}={ours[row]!r}, column {values.columns[col]!r}")


def make_submission(ids: list, scores: np.ndarray, classes: list,
                    sample: pd.DataFrame) -> tuple[pd.DataFrame, list]:
    """The sample's rows and columns filled with `scores`; a sample id without a prediction
    (e.g. a recording that failed to decode) gets each column's mean. Returns (sub, filled)."""
    key, cols = sample.columns[0], list(sample.columns[1:])
    unknown = [c for c in cols if c not in classes]
    if unknown:
        raise ConfigError(f"sample submission columns {unknown} are not classes of the model "
                          f"({classes[:5]}...); is it the sample of another competition?")
    frame = pd.DataFrame(np.asarray(scores, dtype=np.float64), columns=classes)
    frame.insert(0, key, [str(i) for i in ids])
    sub = sample[[key]].astype(str).merge(frame[[key] + cols], on=key, how="left")
    filled = sub.loc[sub[cols].isna().any(axis=1), key].tolist()
    sub[cols] = sub[cols].fillna(frame[cols].mean())
    return sub, filled
