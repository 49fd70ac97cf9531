"""Calibration of class scores on OOF predictions, the EM test-prior estimate (Saerens et al.
2002) and the skewed-prior simulation that decides whether 05 applies it."""
from __future__ import annotations

import numpy as np
import pytest

from common import calibration, metrics


def test_em_prior_hand_computed_fixed_point():
    # one class, train prior 0.5, calibrated posteriors 0.8 (x2) and 0.2 (x2): the mean is
    # 0.5 and the EM fixed point stays at 0.5 (nothing shifted)
    probs = np.array([[0.8], [0.8], [0.2], [0.2]])
    assert calibration.em_prior(probs, np.array([0.5]))[0] == pytest.approx(0.5, abs=1e-6)
    # three of four at 0.8: a test prior above 0.5; EM must satisfy pi' = mean(p'),
    # p' = r p / (r p + s (1 - p)), r = pi'/0.5, s = (1 - pi')/0.5
    probs = np.array([[0.8], [0.8], [0.8], [0.2]])
    est = calibration.em_prior(probs, np.array([0.5]))[0]
    r, s = est / 0.5, (1 - est) / 0.5
    post = r * probs / (r * probs + s * (1 - probs))
    assert est == pytest.approx(post.mean(), abs=1e-5)
    assert 0.65 < est < 0.95


def test_em_recovers_a_simulated_label_shift_within_bounds():
    """Calibrated scores of a known model: y ~ Bernoulli(pi), z | y ~ N(+-1.5, 1); the true
    posterior at train prior 0.2 is known in closed form. Moving the test prior to 0.6, EM
    must land within 0.05 of it, far closer than the training prior (error 0.4)."""
    rng = np.random.default_rng(0)

    def sample(pi, n):
        y = rng.random((n, 1)) < pi
        z = np.where(y, 1.5, -1.5) + rng.normal(size=(n, 1))
        llr = 3.0 * z  # log N(z; 1.5, 1) - log N(z; -1.5, 1)
        return y, llr + np.log(0.2 / 0.8)  # posterior log odds under the train prior 0.2

    _, _ = sample(0.2, 10)
    y, logits = sample(0.6, 4000)
    est = calibration.em_prior(metrics.sigmoid(logits), np.array([0.2]))[0]
    assert abs(est - y.mean()) < 0.05
    shifted = calibration.shift_logits(logits, np.array([0.2]), np.array([est]))
    # the corrected posteriors average to the estimate (EM's fixed point)
    assert metrics.sigmoid(shifted).mean() == pytest.approx(est, abs=1e-3)


def test_calibration_makes_classes_comparable():
    """Class 1's raw logits sit 4 higher than class 0's for the same evidence; the fitted
    per-class intercepts remove the offset and LWLRAP rises."""
    rng = np.random.default_rng(1)
    n, k = 600, 3
    truth = (rng.random((n, k)) < 0.3).astype(float)
    evidence = 2.0 * (2 * truth - 1) + rng.normal(size=(n, k))
    raw = evidence + np.array([0.0, 4.0, -2.0])
    cal = calibration.fit(raw, truth)
    fixed = cal.apply(raw)
    assert metrics.lwlrap(truth, fixed) > metrics.lwlrap(truth, raw) + 0.05
    # intercept differences undo the offsets (up to the shared slope)
    diff = (cal.intercept - cal.intercept[0]) / cal.slope
    np.testing.assert_allclose(diff, [0.0, -4.0, 2.0], atol=0.5)
    groups = np.arange(n) % 3
    crossed = calibration.cross_fit(raw, truth, groups)
    assert crossed.shape == raw.shape
    assert metrics.lwlrap(truth, crossed) > metrics.lwlrap(truth, raw) + 0.05


def test_simulation_reports_prior_error_and_recovered_lwlrap():
    rng = np.random.default_rng(2)
    n, k = 400, 6
    truth = (rng.random((n, k)) < 0.25).astype(float)
    truth[truth.sum(1) == 0, 0] = 1
    z = 0.75 * (2 * truth - 1) + rng.normal(size=(n, k))
    logits = 1.5 * z + np.log(0.25 / 0.75)  # the exact posterior log odds at prior 0.25
    sim = calibration.simulate_shift(logits, truth, draws=8, spread=1.5, seed=0)
    assert sim["draws"] == 8
    assert sim["prior_error"] < sim["prior_error_train"]  # EM tracks the skewed prior
    assert sim["oracle"] >= sim["none"] - 0.01
    assert sim["apply"] == (sim["em_gain"] > 0)
    raw = logits + np.arange(k)[None, :]  # the same scores with class offsets: worse rankings
    judged = calibration.simulate_shift(logits, truth, draws=8, spread=1.5, seed=0, raw_logits=raw)
    assert judged["raw"] < judged["none"]
    assert judged["best"] == max(("raw", "none", "em"), key=lambda o: judged[o])
    assert judged["best"] != "raw"
    tiny = calibration.simulate_shift(logits[:5], truth[:5])
    assert tiny["apply"] is False and tiny["draws"] == 0


# ----------------------------------------------------------------------------- frequency term
def test_frequency_term_rates_are_cross_fitted_by_fold():
    from common import prior_term
    truth = np.array([[1, 0], [1, 0], [0, 1], [1, 1]])
    groups = np.array([0, 0, 1, 1])
    term = prior_term.cross_fitted(truth, groups)
    # fold 0 rows see fold 1's rows only: class 0 in 1 of 2, class 1 in 2 of 2 (add-one)
    assert np.allclose(term[:2], np.log([[2 / 4, 3 / 4]] * 2))
    # fold 1 rows see fold 0's: class 0 in 2 of 2, class 1 in 0 of 2
    assert np.allclose(term[2:], np.log([[3 / 4, 1 / 4]] * 2))
    assert np.allclose(prior_term.log_rates(truth), np.log([4 / 6, 3 / 6]))


def test_frequency_term_is_chosen_only_where_it_lifts_oof_lwlrap():
    """Skewed classes and a weak model: the class shares carry most of the ranking, so a
    weight > 0 is chosen, and the scores it adds lift the OOF LWLRAP. A strong model on
    uniform classes keeps weight 0."""
    from common import prior_term
    rng = np.random.default_rng(1)
    n, k = 600, 8
    rates = np.array([0.6, 0.3, 0.15, 0.08, 0.04, 0.03, 0.02, 0.01])
    truth = (rng.random((n, k)) < rates).astype(int)
    groups = np.arange(n) % 3
    weak = truth * 0.5 + rng.normal(0, 1.0, (n, k))
    got = prior_term.choose(weak, truth, groups)
    assert got["weight"] > 0
    assert got["cv_by_weight"][got["weight"]] > got["cv_by_weight"][0.0] + 0.02
    lifted = prior_term.apply(weak, truth, got["weight"])
    assert metrics.lwlrap(truth, lifted) > metrics.lwlrap(truth, weak)
    flat = (rng.random((n, k)) < 0.2).astype(int)
    strong = flat * 4.0 + rng.normal(0, 0.5, (n, k))
    assert prior_term.choose(strong, flat, groups)["weight"] == 0.0
    assert np.array_equal(prior_term.apply(strong, flat, 0.0), strong)
