"""Losses on clip logits (B, K).

Labels follow the annotation table: +1 present, -1 absent (FP), 0 unknown. Stage 1 uses
0/1 targets (TP species present, everything else treated as absent), as the recipe did.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def lsep_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """LSEP: mean over the batch of log(1 + sum_{v neg, u pos} exp(f_v - f_u)).

    Computed as logsumexp over {0} and the masked pairwise differences, which is exact and
    never overflows; a row with no (pos, neg) pair contributes log(1) = 0.
    logits, targets: (B, K); targets > 0.5 are positives, the rest negatives.
    """
    pos = targets > 0.5
    diff = logits.unsqueeze(1) - logits.unsqueeze(2)  # [b, u, v] = f_v - f_u
    pair = pos.unsqueeze(2) & ~pos.unsqueeze(1)       # u positive, v negative
    diff = diff.masked_fill(~pair, float("-inf"))
    zeros = logits.new_zeros(logits.shape[0], 1)
    return torch.logsumexp(torch.cat([zeros, diff.flatten(1)], dim=1), dim=1).mean()


def bce_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy over every (example, class) entry."""
    return F.binary_cross_entropy_with_logits(logits, targets.float())


def masked_focal_terms(logits: torch.Tensor, labels: torch.Tensor, gamma: float = 2.0,
                       zero_target: float = 0.45, neg_focal: bool = True) -> dict:
    """The three per-entry terms of the stage-2/3 loss, each (B, K), before weighting.

    pos:  BCE(z, 1) * (1 - p)^gamma  where label == +1  (focal: easy positives fade out)
    neg:  BCE(z, 0) * p^gamma        where label == -1  (focal: easy negatives fade out;
                                                         plain BCE(z, 0) with neg_focal=False)
    zero: BCE(z, zero_target)        where label == 0   (unknown: pulled towards 0.45)
    The 5th-place team's stage-2 loss is a focal loss (gamma 2, alpha 1) on both labelled
    terms (docs/recipe.md, "Stage 2").
    """
    prob = torch.sigmoid(logits)
    pos_mask = (labels > 0.5).float()
    neg_mask = (labels < -0.5).float()
    zero_mask = 1.0 - pos_mask - neg_mask
    pos = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits), reduction="none")
    pos = pos * (1 - prob).pow(gamma) * pos_mask
    neg = F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits),
                                             reduction="none") * neg_mask
    if neg_focal:
        neg = neg * prob.pow(gamma)
    zero = F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, zero_target),
                                              reduction="none") * zero_mask
    return {"pos": pos, "neg": neg, "zero": zero}


def masked_focal_loss(logits: torch.Tensor, labels: torch.Tensor, labels_b: torch.Tensor | None = None,
                      lam: float = 1.0, gamma: float = 2.0, w_pos: float = 2.0, w_neg: float = 1.0,
                      w_zero: float = 1.0, zero_target: float = 0.45,
                      mix_negative: bool = False, w_rank: float = 0.0,
                      neg_focal: bool = True, soft: torch.Tensor | None = None,
                      soft_b: torch.Tensor | None = None, w_soft: float = 1.0) -> torch.Tensor:
    """Stage-2/3 loss: w_pos * pos + w_neg * neg + w_zero * zero, each term the mean over the
    batch entries its mask selects (so ~20 unknown classes per crop do not outweigh the one
    or two labelled ones; a term with no entry is 0).

    With last-layer mixup the logits are of mixed features `lam * a + (1 - lam) * b`; then
    the positive and zero terms are mixed by lam: lam * T(labels) + (1 - lam) * T(labels_b).
    The negative term is not mixed (recipe): a class marked absent (-1) in one component
    stays absent in the mix unless the other component has it present, so each component's
    negatives count in full where the other component is not +1. `mix_negative=True` mixes
    the negative term by lam like the others instead. `neg_focal=False` makes the negative
    term plain BCE (see masked_focal_terms).

    `w_rank` > 0 adds the stage-1 objective, w_rank * LSEP with the +1 entries as positives and
    every other entry as a negative (mixed by lam like the positive term): fine-tuning with
    the sigmoid terms alone lets the within-crop ranking that stage 1 learned drift.

    `soft` (B, K) (`soft_b` of the mixup partner): soft pseudo targets in [0, 1] (03
    --soft), NaN where an entry has none; their entries leave the zero term and get
    w_soft * BCE(z, target), the mean over them, mixed by lam like the positive term.
    """
    ta = masked_focal_terms(logits, labels, gamma, zero_target, neg_focal)
    # the terms mixed by lam: positive, zero, soft and (when on) the rank term; LSEP takes
    # the entries > 0.5 as positives, so the -1, 0 and soft entries are its negatives
    mixed_terms = lambda t, y, s: w_pos * _mean(t["pos"], y > 0.5) \
        + w_zero * _mean(t["zero"], (y.abs() <= 0.5) & s.isnan()) \
        + w_soft * _mean(soft_bce(logits, s), ~s.isnan()) \
        + (w_rank * lsep_loss(logits, y) if w_rank else 0.0)  # noqa: E731
    sa = torch.full_like(logits, float("nan")) if soft is None else soft.to(logits)
    if labels_b is None:
        return mixed_terms(ta, labels, sa) + w_neg * _mean(ta["neg"], labels < -0.5)
    sb = torch.full_like(logits, float("nan")) if soft_b is None else soft_b.to(logits)
    tb = masked_focal_terms(logits, labels_b, gamma, zero_target, neg_focal)
    mixed = lam * mixed_terms(ta, labels, sa) + (1 - lam) * mixed_terms(tb, labels_b, sb)
    if mix_negative:
        neg = lam * _mean(ta["neg"], labels < -0.5) + (1 - lam) * _mean(tb["neg"], labels_b < -0.5)
    else:
        mask_a = (labels < -0.5) & (labels_b <= 0.5)
        mask_b = (labels_b < -0.5) & (labels <= 0.5)
        neg = (ta["neg"] * mask_a).sum() + (tb["neg"] * mask_b).sum()
        neg = neg / (mask_a.sum() + mask_b.sum()).clamp_min(1)
    return mixed + w_neg * neg


def soft_bce(logits: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
    """BCE(z, target) per entry (B, K) against soft targets; 0 where the target is NaN."""
    has = ~soft.isnan()
    return F.binary_cross_entropy_with_logits(logits, torch.where(has, soft, 0.0),
                                              reduction="none") * has


def _mean(term: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `term` over the entries where `mask` holds (0 when none does)."""
    return (term * mask).sum() / mask.sum().clamp_min(1)


LOSSES = {"lsep": lsep_loss, "bce": bce_loss}


def frame_loss(frame_logits: torch.Tensor, frame_labels: torch.Tensor) -> torch.Tensor:
    """Masked BCE on frame logits (B, T, K) against frame labels (B, T, K) in {-1, 0, 1}
    (common/data.py frame_labels: +1 inside a TP box of the class, -1 inside an FP box):
    +1 -> target 1, -1 -> target 0, 0 -> no gradient. Mean over the labelled entries; 0 (with
    a gradient graph) when a batch has none."""
    mask = (frame_labels != 0).float()
    target = (frame_labels > 0).float()
    bce = F.binary_cross_entropy_with_logits(frame_logits, target, reduction="none")
    return (bce * mask).sum() / mask.sum().clamp(min=1.0)


def get_loss(name: str):
    if name not in LOSSES:
        from common.cli import ConfigError
        raise ConfigError(f"unknown loss '{name}'; choose one of {sorted(LOSSES)}")
    return LOSSES[name]
