"""Metrics: LWLRAP (the RFCx metric), per-class AP, F1 / precision / recall at a threshold."""
from __future__ import annotations

import numpy as np
from scipy.special import expit


def sigmoid(logits) -> np.ndarray:
    """Probabilities of logits, float64, without overflow warnings for large |logits|."""
    return expit(np.asarray(logits, dtype=np.float64))


def lwlrap(truth: np.ndarray, scores: np.ndarray) -> float:
    """Label-weighted label-ranking average precision.

    truth (N, K) 0/1, scores (N, K). For each positive (i, c): the fraction of row i's
    labels ranked at or above c that are positive; averaged over all positives. Rows with no
    positive are dropped. Equals sklearn's label_ranking_average_precision_score with
    sample_weight = truth.sum(1) (ties count against the positive, as there).
    """
    truth = np.asarray(truth) > 0
    scores = np.asarray(scores, dtype=np.float64)
    if truth.shape != scores.shape:
        raise ValueError(f"truth {truth.shape} and scores {scores.shape} differ in shape")
    keep = truth.any(axis=1)
    truth, scores = truth[keep], scores[keep]
    if truth.size == 0:
        return float("nan")
    total, count = 0.0, 0
    for row_truth, row_score in zip(truth, scores):
        pos_scores = row_score[row_truth]
        # rank of each positive: labels scoring >= it (ties ranked above, like sklearn)
        ranks = (row_score[None, :] >= pos_scores[:, None]).sum(axis=1)
        pos_ranks = (pos_scores[None, :] >= pos_scores[:, None]).sum(axis=1)
        total += float((pos_ranks / ranks).sum())
        count += len(pos_scores)
    return total / count


def per_class_ap(truth: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Average precision of each class over rows (NaN for a class with no positive)."""
    from sklearn.metrics import average_precision_score
    truth = np.asarray(truth) > 0
    out = np.full(truth.shape[1], np.nan)
    for k in range(truth.shape[1]):
        if truth[:, k].any():
            out[k] = average_precision_score(truth[:, k], scores[:, k])
    return out


def f1_at(truth: np.ndarray, probs: np.ndarray, threshold: float = 0.5) -> dict:
    """Micro F1, precision and recall of `probs >= threshold` over every (row, class)."""
    truth = np.asarray(truth) > 0
    pred = np.asarray(probs) >= threshold
    tp = float((pred & truth).sum())
    precision = tp / max(pred.sum(), 1)
    recall = tp / max(truth.sum(), 1)
    f1 = 2 * precision * recall / max(precision + recall, 1e-12)
    return {"f1": f1, "precision": precision, "recall": recall}


def prevalence_baseline(truth: np.ndarray) -> float:
    """LWLRAP of giving every row the same scores: each class's prevalence in `truth`."""
    truth = np.asarray(truth) > 0
    scores = np.tile(truth.mean(axis=0), (truth.shape[0], 1))
    # break ties between equally frequent classes the same way for every row
    scores = scores + np.arange(truth.shape[1])[None, :] * 1e-9
    return lwlrap(truth, scores)


# ----------------------------------------------------------------------------- BirdCLEF F1
def row_f1(truth: np.ndarray, probs: np.ndarray, threshold: float = 0.5) -> dict:
    """Row-wise micro F1 of 5 s segments, the BirdCLEF 2021 rule.

    truth (N, K) 0/1 with an all-zero row meaning `nocall`; probs (N, K). A row's predicted
    set is the classes with prob >= threshold, or {nocall} when none passes; its true set
    is its positives, or {nocall}. Each row scores 2 TP / (2 TP + FP + FN) over those sets
    (nocall is a label like any other) and "f1" is the mean over rows, as the competition
    scored it; "micro_f1" pools TP, FP and FN over all rows first.
    """
    truth = np.asarray(truth) > 0
    pred = np.asarray(probs) >= threshold
    if truth.shape != pred.shape:
        raise ValueError(f"truth {truth.shape} and probs {pred.shape} differ in shape")
    pred_none, true_none = ~pred.any(axis=1), ~truth.any(axis=1)
    tp = (pred & truth).sum(axis=1) + (pred_none & true_none)
    fp = (pred & ~truth).sum(axis=1) + (pred_none & ~true_none)
    fn = (~pred & truth).sum(axis=1) + (~pred_none & true_none)
    rows = 2 * tp / np.maximum(2 * tp + fp + fn, 1)
    pooled = 2 * tp.sum() / max(2 * tp.sum() + fp.sum() + fn.sum(), 1)
    return {"f1": float(rows.mean()) if len(rows) else float("nan"), "micro_f1": float(pooled),
            "nocall_rows": int(true_none.sum()), "rows": int(len(rows))}


def threshold_sweep(truth: np.ndarray, probs: np.ndarray,
                    thresholds=np.round(np.arange(0.05, 0.96, 0.05), 2)) -> dict:
    """Row F1 over a grid of thresholds: the best one next to the F1 at 0.5."""
    scores = [row_f1(truth, probs, t)["f1"] for t in thresholds]
    best = int(np.argmax(scores))
    return {"f1_at_0.5": row_f1(truth, probs, 0.5)["f1"], "best_f1": float(scores[best]),
            "best_threshold": float(thresholds[best])}
