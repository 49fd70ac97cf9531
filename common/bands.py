"""Per-class frequency bands for the band head of the SED model (`band_head`, issue 17).

Each class gets a band (low Hz, high Hz) from the TP boxes of the recordings its fold model
trains on (never its validation recordings: README "Honest CV"); the band head pools the
encoder's frequency rows with per-class weights from that band instead of their plain mean
(common/sed.py, BandAttentionHead). The bands are stored as plain lists in the model_cfg
(key "bands"), so a checkpoint rebuilds the same model with no other input; the row weights
are computed from them when the model is built.

Rows: the encoder map (B, C, F', T') has F' frequency rows; they split the front end's
n_mels mel bins evenly (a resized image still spans the mel axis evenly, so the same holds
with image_size). Mel bin i of librosa's filter bank (MelFrontEnd) is centred at
librosa.mel_frequencies(n_mels + 2, fmin, fmax)[i + 1] and reaches half way to its
neighbours' centres, so on the mel scale the bins tile [mel(fmin) + d / 2, mel(fmax) - d / 2]
with d = (mel(fmax) - mel(fmin)) / (n_mels + 1).
"""
from __future__ import annotations

import librosa
import numpy as np
import pandas as pd

FLOOR = 0.05          # weight of a row outside the band, before normalisation: never blind
QUANTILES = (0.05, 0.95)  # of the boxes' f_min and f_max
FULL_SHARE = 0.95     # a band covering this share of the mel axis is the full range


def mel_bin_edges(n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    """(n_mels + 1,) mel-scale edges of the front end's bins (module docstring)."""
    centres = librosa.hz_to_mel(librosa.mel_frequencies(n_mels + 2, fmin=fmin, fmax=fmax))
    return (centres[:-1] + centres[1:]) / 2.0


def row_weights(bands: list, rows: int, n_mels: int, fmin: float, fmax: float,
                floor: float = FLOOR) -> np.ndarray:
    """(K, rows) weights: per class, the fraction of each encoder row's mel range that lies
    inside the class's band (measured on the mel scale), raised to at least `floor`, and
    normalised to sum 1 over the rows. A band that covers every row gives uniform weights
    (the plain mean over frequency); a band that misses every row does, too."""
    edges = mel_bin_edges(n_mels, fmin, fmax)
    # row r holds the mel bins r * n_mels / rows .. (r + 1) * n_mels / rows (fractions allowed)
    row_edges = np.interp(np.arange(rows + 1) * n_mels / rows, np.arange(n_mels + 1), edges)
    lo_row, hi_row = row_edges[:-1], row_edges[1:]
    band = librosa.hz_to_mel(np.asarray(bands, dtype=np.float64).reshape(-1, 2))
    inside = (np.minimum(hi_row, band[:, 1:]) - np.maximum(lo_row, band[:, :1])).clip(min=0.0)
    weights = np.maximum(inside / (hi_row - lo_row), floor)
    return weights / weights.sum(axis=1, keepdims=True)


def class_bands(annotations: pd.DataFrame, classes: list, recording_ids, n_mels: int,
                fmin: float, fmax: float) -> list[list[float]]:
    """[[low Hz, high Hz]] per class, from the TP boxes (label > 0, finite f_min < f_max) of
    `recording_ids` only (a fold's training recordings: nothing comes from its validation
    labels).

    The rule: low = the 5th percentile of the boxes' f_min, high = the 95th percentile of
    their f_max, each widened by one mel bin of the front end and clipped to fmin..fmax.
    Percentiles, not min / max: one mis-drawn box (a box from 0 Hz, or up to Nyquist) would
    otherwise open the band to the whole axis, and a class with many boxes has its odd ones;
    with a handful of boxes they are close to min / max. The widening keeps a call that
    touches a band edge inside the band's row, and the head's floor (FLOOR) keeps the rows
    outside the band from being blind. A class without such boxes, or whose band covers
    FULL_SHARE of the mel axis or more, or lies outside fmin..fmax, gets the full range
    [fmin, fmax]; so do all classes of clip-label data (no f_min / f_max columns)."""
    full = [float(fmin), float(fmax)]
    bands = {c: list(full) for c in classes}
    if not {"f_min", "f_max"} <= set(annotations.columns):
        return [bands[c] for c in classes]
    tp = annotations[(annotations["label"] > 0)
                     & annotations["recording_id"].isin(set(recording_ids))]
    f_lo, f_hi = tp["f_min"].astype(float), tp["f_max"].astype(float)
    tp = tp[np.isfinite(f_lo) & np.isfinite(f_hi) & (f_hi > f_lo)]
    mel_lo, mel_hi = librosa.hz_to_mel(fmin), librosa.hz_to_mel(fmax)
    margin = (mel_hi - mel_lo) / (n_mels + 1)  # one mel bin
    for cls, grp in tp.groupby("class"):
        if cls not in bands:
            continue
        low = max(librosa.hz_to_mel(grp["f_min"].astype(float).quantile(QUANTILES[0])) - margin,
                  mel_lo)
        high = min(librosa.hz_to_mel(grp["f_max"].astype(float).quantile(QUANTILES[1])) + margin,
                   mel_hi)
        if low < high and high - low < FULL_SHARE * (mel_hi - mel_lo):
            bands[cls] = [round(float(librosa.mel_to_hz(low)), 1),
                          round(float(librosa.mel_to_hz(high)), 1)]
    return [bands[c] for c in classes]


def for_fold(mcfg: dict, annotations: pd.DataFrame, classes: list, recording_ids,
             fold: int) -> dict:
    """The fold's model_cfg: with band_head on, `mcfg` plus the bands of the fold's training
    recordings (class_bands), and one printed line saying what they are; else `mcfg`."""
    if not mcfg.get("band_head"):
        return mcfg
    bands = class_bands(annotations, classes, recording_ids, mcfg["n_mels"], mcfg["fmin"],
                        mcfg["fmax"])
    full = [float(mcfg["fmin"]), float(mcfg["fmax"])]
    narrow = [(c, b) for c, b in zip(classes, bands) if b != full]
    if not {"f_min", "f_max"} <= set(annotations.columns):
        print(f"fold {fold}: band_head: the annotations have no f_min / f_max (clip labels?); "
              f"every class uses the full range {full[0]:g}..{full[1]:g} Hz", flush=True)
    else:
        shown = ", ".join(f"{c} {b[0]:.0f}-{b[1]:.0f}" for c, b in narrow[:6])
        print(f"fold {fold}: band_head: {len(narrow)} of {len(classes)} classes have a band "
              f"narrower than {full[0]:g}..{full[1]:g} Hz (from the training recordings' TP "
              f"boxes){': ' + shown if shown else ''}{' ...' if len(narrow) > 6 else ''}",
              flush=True)
    return {**mcfg, "bands": bands}
