"""common/losses.py: LSEP, BCE and the masked focal terms on hand-computed values."""
from __future__ import annotations

import math

import pytest
import torch

from common.cli import ConfigError, parse_cfg
from common.losses import (bce_loss, frame_loss, get_loss, lsep_loss, masked_focal_loss,
                           masked_focal_terms)


def t(rows):
    return torch.tensor(rows, dtype=torch.float64)


def sig(z):
    return 1.0 / (1.0 + math.exp(-z))


# ----------------------------------------------------------------------------- LSEP
def test_lsep_hand_computed_one_positive():
    value = lsep_loss(t([[2.0, 0.0, 1.0]]), t([[1, 0, 0]]))
    assert value.item() == pytest.approx(math.log(1 + math.exp(-2) + math.exp(-1)), rel=1e-12)


def test_lsep_hand_computed_two_positives():
    # positives u in {0, 2} (f = 1, 3), negatives v in {1, 3} (f = 0, 2)
    value = lsep_loss(t([[1.0, 0.0, 3.0, 2.0]]), t([[1, 0, 1, 0]]))
    pairs = [0 - 1, 2 - 1, 0 - 3, 2 - 3]
    expected = math.log(1 + sum(math.exp(d) for d in pairs))
    assert value.item() == pytest.approx(expected, rel=1e-12)


def test_lsep_is_zero_without_positive_or_without_negative():
    logits = t([[0.3, -2.0, 5.0], [1.0, 2.0, 3.0]])
    assert lsep_loss(logits[:1], t([[0, 0, 0]])).item() == 0.0
    assert lsep_loss(logits[1:], t([[1, 1, 1]])).item() == 0.0


def test_lsep_is_the_batch_mean():
    logits = t([[2.0, 0.0, 1.0], [0.0, 0.0, 0.0], [0.5, 0.5, 0.5]])
    targets = t([[1, 0, 0], [0, 0, 0], [0, 1, 1]])
    rows = [math.log(1 + math.exp(-2) + math.exp(-1)), 0.0, math.log(1 + 2 * math.exp(0.0))]
    assert lsep_loss(logits, targets).item() == pytest.approx(sum(rows) / 3, rel=1e-12)


def test_lsep_soft_targets_threshold_at_half():
    # targets > 0.5 are positives; 0.5 itself is a negative
    a = lsep_loss(t([[2.0, 0.0, 1.0]]), t([[0.9, 0.5, 0.1]]))
    b = lsep_loss(t([[2.0, 0.0, 1.0]]), t([[1, 0, 0]]))
    assert a.item() == pytest.approx(b.item())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_lsep_is_stable_for_huge_logits(dtype):
    logits = torch.tensor([[1e4, -1e4, 0.0], [-1e4, 1e4, 3.0]], dtype=dtype, requires_grad=True)
    targets = torch.tensor([[0, 1, 0], [0, 1, 0]], dtype=dtype)
    value = lsep_loss(logits, targets)
    assert torch.isfinite(value)
    # row 0: log(1 + e^{2e4} + e^{1e4}) ~ 2e4; row 1: log(1 + e^{-2e4} + e^{3-1e4}) ~ 0
    assert value.item() == pytest.approx(2e4 / 2, rel=1e-6)
    value.backward()
    assert torch.isfinite(logits.grad).all()
    # row 0 is dominated by the pair (v=0, u=1): d/df0 = +1/2, d/df1 = -1/2 (batch mean)
    assert logits.grad[0, 0].item() == pytest.approx(0.5, abs=1e-6)
    assert logits.grad[0, 1].item() == pytest.approx(-0.5, abs=1e-6)
    assert logits.grad[1].abs().max().item() < 1e-6


def test_lsep_gradient_matches_hand_formula():
    logits = t([[2.0, 0.0, 1.0]]).requires_grad_(True)
    lsep_loss(logits, t([[1, 0, 0]])).backward()
    s = 1 + math.exp(-2) + math.exp(-1)
    expected = [-(math.exp(-2) + math.exp(-1)) / s, math.exp(-2) / s, math.exp(-1) / s]
    torch.testing.assert_close(logits.grad[0], torch.tensor(expected, dtype=torch.float64))


def test_lsep_no_gradient_nan_for_rows_without_pairs():
    logits = t([[0.0, 1.0], [2.0, 3.0]]).requires_grad_(True)
    lsep_loss(logits, t([[0, 0], [1, 1]])).backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


# ----------------------------------------------------------------------------- BCE
def test_bce_matches_formula():
    z = [[2.0, -1.0, 0.0], [0.5, 3.0, -4.0]]
    y = [[1, 0, 1], [0, 1, 0]]
    terms = [-(yy * math.log(sig(zz)) + (1 - yy) * math.log(1 - sig(zz)))
             for zr, yr in zip(z, y) for zz, yy in zip(zr, yr)]
    assert bce_loss(t(z), t(y)).item() == pytest.approx(sum(terms) / 6, rel=1e-6)


def test_get_loss():
    assert get_loss("lsep") is lsep_loss and get_loss("bce") is bce_loss
    with pytest.raises(ConfigError, match="lsep"):
        get_loss("focal?")


# ----------------------------------------------------------------------------- masked focal
def test_masked_focal_terms_hand_computed():
    z = [1.0, -0.5, 2.0, 0.3]
    labels = [1, -1, 0, 1]
    out = masked_focal_terms(t([z]), t([labels]))
    p = [sig(v) for v in z]
    pos = [-math.log(p[0]) * (1 - p[0]) ** 2, 0.0, 0.0, -math.log(p[3]) * (1 - p[3]) ** 2]
    neg = [0.0, -math.log(1 - p[1]) * p[1] ** 2, 0.0, 0.0]  # focal negative, gamma 2
    zero = [0.0, 0.0, -(0.45 * math.log(p[2]) + 0.55 * math.log(1 - p[2])), 0.0]
    for key, expected in (("pos", pos), ("neg", neg), ("zero", zero)):
        assert out[key].shape == (1, 4)
        torch.testing.assert_close(out[key][0], torch.tensor(expected, dtype=torch.float64),
                                   rtol=1e-10, atol=1e-12)


def test_masked_focal_gamma_and_zero_target():
    z, p = 0.7, sig(0.7)
    out = masked_focal_terms(t([[z, z]]), t([[1, 0]]), gamma=0.0, zero_target=0.0)
    assert out["pos"][0, 0].item() == pytest.approx(-math.log(p))
    assert out["zero"][0, 1].item() == pytest.approx(-math.log(1 - p))


def test_masked_focal_masks_are_exclusive():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 5, generator=g, dtype=torch.float64) * 3
    labels = torch.randint(-1, 2, (6, 5), generator=g).double()
    out = masked_focal_terms(logits, labels)
    nonzero = sum((out[k] != 0).int() for k in ("pos", "neg", "zero"))
    assert torch.equal(nonzero, torch.ones_like(nonzero))  # exactly one term per entry
    assert torch.all(out["pos"][labels != 1] == 0)
    assert torch.all(out["neg"][labels != -1] == 0)
    assert torch.all(out["zero"][labels != 0] == 0)
    for key in out:
        assert torch.all(out[key] >= 0)


def test_masked_focal_stable_for_huge_logits():
    logits = torch.tensor([[1e4, -1e4, 1e4]], requires_grad=True)
    out = masked_focal_terms(logits, torch.tensor([[1.0, -1.0, 0.0]]))
    total = sum(v.sum() for v in out.values())
    assert torch.isfinite(total)
    total.backward()
    assert torch.isfinite(logits.grad).all()


# ----------------------------------------------------------------------------- focal negative
def test_negative_term_is_focal_hand_computed():
    # three -1 entries: BCE(z, 0) * p^gamma, i.e. -log(1 - p) * p^gamma
    z = [-0.5, 1.5, 3.0]
    for gamma in (2.0, 1.0):
        out = masked_focal_terms(t([z]), t([[-1, -1, -1]]), gamma=gamma)
        expected = [-math.log(1 - sig(v)) * sig(v) ** gamma for v in z]
        torch.testing.assert_close(out["neg"][0], torch.tensor(expected, dtype=torch.float64),
                                   rtol=1e-10, atol=1e-12)
    # a confident wrong entry (p = 0.95) keeps most of its BCE, an easy one (p = 0.05) almost none
    hard, easy = math.log(19.0), -math.log(19.0)
    out = masked_focal_terms(t([[hard, easy]]), t([[-1, -1]]))
    assert out["neg"][0, 0].item() == pytest.approx(-math.log(0.05) * 0.95 ** 2, rel=1e-9)
    assert out["neg"][0, 1].item() == pytest.approx(-math.log(0.95) * 0.05 ** 2, rel=1e-9)


def test_neg_focal_switch_gives_plain_bce():
    z = [[-0.5, 1.5, 3.0, 0.2]]
    labels = [[-1, -1, 1, 0]]
    plain = masked_focal_terms(t(z), t(labels), neg_focal=False)
    focal = masked_focal_terms(t(z), t(labels))
    expected = [-math.log(1 - sig(z[0][0])), -math.log(1 - sig(z[0][1])), 0.0, 0.0]
    torch.testing.assert_close(plain["neg"][0], torch.tensor(expected, dtype=torch.float64),
                               rtol=1e-10, atol=1e-12)
    for key in ("pos", "zero"):  # the switch touches the negative term only
        assert torch.equal(plain[key], focal[key])
    # the loss: w_pos * pos + w_neg * (mean of the two negatives) + w_zero * zero
    p = [sig(v) for v in z[0]]
    pos = -math.log(p[2]) * (1 - p[2]) ** 2
    zero = -(0.45 * math.log(p[3]) + 0.55 * math.log(1 - p[3]))
    assert masked_focal_loss(t(z), t(labels), neg_focal=False).item() == pytest.approx(
        2 * pos + (expected[0] + expected[1]) / 2 + zero, rel=1e-9)
    focal_neg = (expected[0] * p[0] ** 2 + expected[1] * p[1] ** 2) / 2
    assert masked_focal_loss(t(z), t(labels)).item() == pytest.approx(2 * pos + focal_neg + zero,
                                                                      rel=1e-9)


def test_stage_cfg_passes_the_switch_and_stage2_positive_weight(scripts):
    s3 = scripts("04_train_stage3")
    profile = ["--cfg_file=profiles/demo.json"]
    stage2 = parse_cfg(s3.CFG, "stage2", profile, defaults=s3.STAGE2_DEFAULTS)
    stage3 = parse_cfg(s3.CFG, "stage3", profile)
    assert stage2.w_pos == 1.0 and stage3.w_pos == 2.0  # alpha 1 in stage 2, 2 in stage 3
    assert s3.loss_kw(stage3)["neg_focal"] is True
    plain = parse_cfg(s3.CFG, "stage3", [*profile, "--neg_focal=false"])
    assert s3.loss_kw(plain)["neg_focal"] is False
    plain = parse_cfg(s3.CFG, "stage3", ["--neg_focal=false"])  # no profile: w_rank 0
    z, y = t([[2.0, -1.0]]), t([[-1, 1]])
    assert masked_focal_loss(z, y, **s3.loss_kw(plain)).item() == pytest.approx(
        2 * -math.log(sig(-1.0)) * (1 - sig(-1.0)) ** 2 + -math.log(1 - sig(2.0)), rel=1e-9)


def test_frame_loss_masks_unknown_entries_and_averages_over_labelled_ones():
    logits = torch.tensor([[[2.0, -1.0], [0.5, 3.0]]])  # (B=1, T=2, K=2)
    labels = torch.tensor([[[1, 0], [-1, 0]]], dtype=torch.int8)
    want = (math.log1p(math.exp(-2.0)) + math.log1p(math.exp(0.5))) / 2
    assert frame_loss(logits, labels).item() == pytest.approx(want)
    logits.requires_grad_(True)
    frame_loss(logits, labels).backward()
    assert logits.grad[0, :, 1].abs().sum() == 0  # the unknown class gets no gradient
    assert frame_loss(logits, torch.zeros_like(labels)).item() == 0.0  # nothing labelled
