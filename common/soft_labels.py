"""Soft pseudo labels of unlabeled soundscapes (self-training, BirdCLEF 2023-2025 layout).

01 caches unlabeled soundscapes (`--max_unlabeled`) as recordings of split "unlabeled": no
annotation, no fold. 03 scores each of their 5 s segments with one window of the model's
crop length centred on it (common.segments.segment_starts, as 05 scores test segments); with
`--soft=true` it writes, instead of 0/1 votes, per class the mean probability of the fold's
allowed voters raised to `soft_power` (> 1 sharpens: a low probability shrinks more than a
high one). Entries below `soft_floor` are zeroed: they are not written, and a window with a
written entry has target 0 for every class it does not list; a window with no entry at or
above the floor (the teacher hears nothing) is left out. 04 crops such a window exactly and
trains on the full target vector with BCE (common.losses.masked_focal_loss, `soft`).

Provenance is the hard rows' (common/provenance.py): the rows for fold k are voted by the
clean voters of fold k alone (in one level of k-fold CV, fold k's own model), and an
unlabeled recording lies in no fold, so every fold may train on its own rows of it.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

UNLABELED = "unlabeled"  # the split of the unlabeled soundscapes in recordings.csv


def targets(probs: np.ndarray, power: float, floor: float) -> np.ndarray:
    """probs (M, W, K) of the M allowed voters -> soft targets (W, K): the voters' mean
    probability ** power, 0 below `floor`."""
    out = probs.mean(axis=0) ** power
    return np.where(out >= floor, out, 0.0)


def soft_rows(rid: str, starts, window_s: float, probs: np.ndarray, power: float, floor: float,
              classes: list, voters: str, fold: int) -> list[tuple]:
    """pseudo_labels.csv rows (recording_id, window, t_start, t_end, class, score, votes,
    n_models, voters, fold, label, target) of one recording's windows: one per entry with a
    target (label 0: neither a vote for nor against; score the voters' mean probability)."""
    target = targets(probs, power, floor)
    mean = probs.mean(axis=0)
    rows = []
    for w, c in zip(*np.nonzero(target)):
        start = float(starts[w])
        rows.append((rid, int(w), round(start, 3), round(start + window_s, 3), classes[c],
                     float(mean[w, c]), 0, len(probs), voters, fold, 0, float(target[w, c])))
    return rows


def split_soft(pseudo: pd.DataFrame | None) -> tuple:
    """(hard rows, soft rows) of a pseudo table; a table without `target` (03 runs before
    soft labels, or --soft=false) has no soft rows."""
    if pseudo is None or "target" not in pseudo.columns:
        return pseudo, None
    soft = pseudo["target"].notna().to_numpy()
    return pseudo[~soft], pseudo[soft]


def windows_of(soft: pd.DataFrame) -> pd.DataFrame:
    """One anchor row (recording_id, t_min, t_max, label 1) per soft window."""
    keys = ["recording_id", "t_min", "t_max"]
    return soft.drop_duplicates(subset=keys)[keys].assign(label=1)


def by_recording(soft: pd.DataFrame | None, class_index: dict) -> dict:
    """{recording_id: (window starts (W,), ends (W,), targets (W, K) float32)}."""
    out = {}
    if soft is None or not len(soft):
        return out
    for rid, grp in soft.groupby("recording_id"):
        spans = grp[["t_min", "t_max"]].drop_duplicates().sort_values("t_min")
        row = {span: i for i, span in enumerate(zip(spans["t_min"], spans["t_max"]))}
        matrix = np.zeros((len(spans), len(class_index)), np.float32)
        for t0, t1, cls, t in zip(grp["t_min"], grp["t_max"], grp["class"], grp["target"]):
            matrix[row[(t0, t1)], class_index[cls]] = t
        out[rid] = (spans["t_min"].to_numpy(float), spans["t_max"].to_numpy(float), matrix)
    return out


def crop_targets(entry: tuple | None, start: float, end: float, min_s: float,
                 n_classes: int) -> np.ndarray:
    """Soft targets (K,) of a crop [start, end): those of the window that covers the most of
    it, when that is at least `min_s` s; NaN (no soft target) otherwise."""
    out = np.full(n_classes, np.nan, np.float32)
    if entry is None:
        return out
    t0, t1, matrix = entry
    overlap = np.minimum(t1, end) - np.maximum(t0, start)
    best = int(np.argmax(overlap))
    if overlap[best] >= min_s - 1e-9:
        out[:] = matrix[best]
    return out
