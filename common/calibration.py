"""Scores comparable across classes, and the test prior under label shift.

LWLRAP ranks the classes of one recording against each other, so a class whose logits sit
high for reasons of training (LSEP has no absolute scale; a class with many TP rows learns
a larger bias) outranks the others everywhere. Two steps fix that, both fitted on the OOF
predictions only (never on test labels):

1. Calibration (`fit` / `Calibrator.apply`): Platt scaling on the clip logits with one shared
   slope and one intercept per class (L2-regularised, scikit-learn's LogisticRegression), so
   a class with 5 OOF positives still gets a sensible offset. Calibrated logits estimate
   log odds of "annotated as present" for every class on one scale.
2. Label shift (`em_prior`): the EM re-estimation of Saerens, Latinne & Decaestecker (2002)
   per class: starting from the training prior pi, the test prior pi' and the posteriors are
   re-estimated in turn: p' = r p / (r p + s (1 - p)), r = pi'/pi, s = (1-pi')/(1-pi),
   pi' = mean p'. The corrected logit is logit(p) + logit(pi') - logit(pi).

Whether the EM correction helps is decided without test truth (`simulate_shift`): OOF
recordings are resampled to skewed class priors (as a test set's can be) and the estimated
prior's error and the LWLRAP recovered (none / EM / oracle prior) are averaged over draws.
05 applies the correction only when the simulation gains.

Arrays: logits and truth (N, K); priors (K,).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from common import metrics

EPS = 1e-4


def logit(p) -> np.ndarray:
    p = np.clip(np.asarray(p, np.float64), EPS, 1 - EPS)
    return np.log(p / (1 - p))


@dataclass
class Calibrator:
    """calibrated logit = slope * z + intercept[k] (shared slope, per-class intercept)."""
    slope: float
    intercept: np.ndarray  # (K,)

    def apply(self, logits: np.ndarray) -> np.ndarray:
        return self.slope * np.asarray(logits, np.float64) + self.intercept[None, :]

    def to_dict(self, classes: list) -> dict:
        return {"slope": float(self.slope),
                "intercept": dict(zip(classes, map(float, self.intercept)))}


def fit(logits: np.ndarray, truth: np.ndarray, c: float = 1.0) -> Calibrator:
    """Platt scaling with a shared slope and per-class intercepts (see module docstring);
    `c` is the inverse L2 strength (scikit-learn's C). Raw logits are standardised first so
    the penalty means the same for any model's logit scale."""
    from sklearn.linear_model import LogisticRegression

    z = np.asarray(logits, np.float64)
    y = (np.asarray(truth) > 0).astype(int)
    n, k = z.shape
    if y.sum() == 0 or y.sum() == y.size:
        return Calibrator(1.0, np.zeros(k))
    mu, sd = z.mean(), z.std() or 1.0
    x = np.zeros((n * k, k + 1))
    x[:, 0] = ((z - mu) / sd).ravel()
    x[np.arange(n * k), 1 + np.tile(np.arange(k), n)] = 1.0
    model = LogisticRegression(C=c, max_iter=1000).fit(x, y.ravel())
    a = model.coef_[0, 0] / sd
    b = model.intercept_[0] + model.coef_[0, 1:] - a * mu
    return Calibrator(float(a), b)


def cross_fit(logits: np.ndarray, truth: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Calibrated OOF logits where each group (fold) is calibrated by a calibrator fitted on
    the other groups: an honest CV figure for the calibrated scores."""
    out = np.zeros_like(np.asarray(logits, np.float64))
    for g in np.unique(groups):
        held = groups == g
        if held.all():
            return fit(logits, truth).apply(logits)
        out[held] = fit(logits[~held], truth[~held]).apply(logits[held])
    return out


def em_prior(probs: np.ndarray, train_prior: np.ndarray, iters: int = 200,
             tol: float = 1e-6) -> np.ndarray:
    """Saerens et al. (2002) EM per class: the test prior (K,) that makes the re-weighted
    posteriors of `probs` (N, K) average to it."""
    p = np.clip(np.asarray(probs, np.float64), EPS, 1 - EPS)
    pi = np.clip(np.asarray(train_prior, np.float64), EPS, 1 - EPS)
    new = p.mean(axis=0)
    for _ in range(iters):
        r, s = new / pi, (1 - new) / (1 - pi)
        post = r * p / (r * p + s * (1 - p))
        nxt = np.clip(post.mean(axis=0), EPS, 1 - EPS)
        if np.abs(nxt - new).max() < tol:
            new = nxt
            break
        new = nxt
    return new


def shift_logits(logits: np.ndarray, train_prior: np.ndarray, test_prior: np.ndarray) -> np.ndarray:
    """Posterior log odds under the test prior: logit + logit(pi') - logit(pi)."""
    return np.asarray(logits, np.float64) + (logit(test_prior) - logit(train_prior))[None, :]


def simulate_shift(cal_logits: np.ndarray, truth: np.ndarray, draws: int = 20,
                   spread: float = 1.0, seed: int = 0, raw_logits: np.ndarray | None = None,
                   to_species=None) -> dict:
    """Resample calibrated OOF predictions to skewed priors; per draw, estimate the prior by
    EM and score LWLRAP with no correction, the EM correction and the oracle (the draw's true
    prior). Recordings are drawn with weight exp(sum_k y_k g_k), g_k ~ N(0, spread^2): each
    draw makes some classes far more common and others rarer, as RFCx's test set is skewed
    against its TP rows. With `raw_logits` (the uncalibrated scores of the same recordings)
    the draws also score them (`raw`), so calibration itself is judged under skew too.
    LWLRAP is per species where `to_species` (common/species.py) maps the classes to them.
    Returns mean figures, the gain of EM over none and the best of raw / none / em."""
    rng = np.random.default_rng(seed)
    truth = (np.asarray(truth) > 0).astype(np.float64)
    keep = truth.any(axis=1)
    z, y = np.asarray(cal_logits, np.float64)[keep], truth[keep]
    raw = None if raw_logits is None else np.asarray(raw_logits, np.float64)[keep]
    n = len(y)
    if n < 10:
        return {"draws": 0, "apply": False, "reason": f"{n} OOF recordings with a label"}
    train_prior = np.clip(metrics.sigmoid(z).mean(axis=0), EPS, 1 - EPS)
    to_species = to_species or np.asarray
    score = lambda y, s: metrics.lwlrap(to_species(y), to_species(s))  # noqa: E731
    rows = []
    for _ in range(draws):
        g = rng.normal(0.0, spread, y.shape[1])
        w = np.exp(y @ g)
        idx = rng.choice(n, n, replace=True, p=w / w.sum())
        zs, ys = z[idx], y[idx]
        true_prior = np.clip(ys.mean(axis=0), EPS, 1 - EPS)
        est = em_prior(metrics.sigmoid(zs), train_prior)
        rows.append({
            "none": score(ys, zs),
            "em": score(ys, shift_logits(zs, train_prior, est)),
            "oracle": score(ys, shift_logits(zs, train_prior, true_prior)),
            "prior_error": float(np.abs(est - true_prior).mean()),
            "prior_error_train": float(np.abs(train_prior - true_prior).mean()),
            **({} if raw is None else {"raw": score(ys, raw[idx])})})
    mean = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
    mean["em_gain"] = mean["em"] - mean["none"]
    mean["draws"] = draws
    mean["apply"] = bool(mean["em_gain"] > 0.0)
    options = [k for k in ("raw", "none", "em") if k in mean]
    mean["best"] = max(options, key=lambda k: mean[k])
    return mean
