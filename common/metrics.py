"""Metrics: LWLRAP (the RFCx metric), per-class AP, F1 / precision / recall at a threshold,
the BirdCLEF 2021 row F1, macro ROC-AUC (BirdCLEF 2024/2025) and padded cmAP (2023)."""
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


# ----------------------------------------------------------------------------- BirdCLEF 2023-2025
def roc_auc(truth: np.ndarray, scores: np.ndarray) -> float:
    """ROC-AUC of one class (truth (N,) 0/1, scores (N,)): the chance that a random positive
    scores above a random negative, ties counting one half (Mann-Whitney U from average
    ranks; equals sklearn's roc_auc_score). NaN without a positive or without a negative."""
    from scipy.stats import rankdata
    truth = np.asarray(truth) > 0
    n_pos, n_neg = int(truth.sum()), int((~truth).sum())
    if not n_pos or not n_neg:
        return float("nan")
    ranks = rankdata(np.asarray(scores, dtype=np.float64))
    return float((ranks[truth].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def macro_roc_auc(truth: np.ndarray, scores: np.ndarray) -> float:
    """BirdCLEF 2024/2025: the mean ROC-AUC over the classes (columns) that have a positive
    in `truth` (N, K); a class whose every row is positive has no ROC curve and is skipped
    too. NaN when no class is scored."""
    truth, scores = np.asarray(truth) > 0, np.asarray(scores, dtype=np.float64)
    if truth.shape != scores.shape:
        raise ValueError(f"truth {truth.shape} and scores {scores.shape} differ in shape")
    per_class = [roc_auc(truth[:, k], scores[:, k]) for k in range(truth.shape[1])]
    scored = [v for v in per_class if np.isfinite(v)]
    return float(np.mean(scored)) if scored else float("nan")


def average_precision(truth: np.ndarray, scores: np.ndarray) -> float:
    """AP of one class as sklearn's average_precision_score: sum over the distinct score
    thresholds (descending) of (recall gained) x precision there. NaN without a positive."""
    truth = np.asarray(truth) > 0
    if not truth.any():
        return float("nan")
    scores = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-scores, kind="stable")
    s, t = scores[order], truth[order]
    last = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1]  # end of each run of ties
    tp = np.cumsum(t)[last]
    precision = tp / (last + 1)
    recall_gain = np.diff(np.r_[0, tp]) / truth.sum()
    return float((recall_gain * precision).sum())


def padded_cmap(truth: np.ndarray, scores: np.ndarray, padding: int = 5) -> float:
    """BirdCLEF 2023: macro AP over every class after `padding` rows of all-ones are added
    to both truth and scores (so every class has a positive, and a class with few positives
    is not judged on them alone)."""
    truth, scores = np.asarray(truth) > 0, np.asarray(scores, dtype=np.float64)
    if truth.shape != scores.shape:
        raise ValueError(f"truth {truth.shape} and scores {scores.shape} differ in shape")
    ones = np.ones((padding, truth.shape[1]))
    truth, scores = np.vstack([truth, ones > 0]), np.vstack([scores, ones])
    return float(np.mean([average_precision(truth[:, k], scores[:, k])
                          for k in range(truth.shape[1])]))
