"""Front-end settings that follow the data, for fields left at their sentinel (0; fmin -1).

A 5 ms bat call at 500 kHz and a 90 ms finch syllable at 32 kHz need different STFTs, and
no fixed default serves both. From the cache's sample rate and the +1 boxes of the training
recordings (durations and bands as annotated, rows typed in a table only):

    fmax         sr/2; or 1.2 x the 99th percentile of the boxes' high frequency when the boxes
                 carry a band (it is below 0.9 sr/2), capped at sr/2
    fmin         0; or 0.8 x the 1st percentile of the boxes' low frequency when they carry one
    hop_length   a quarter of the 5th-percentile box duration (four frames or more on nearly
                 every call), between 16 samples and 25 ms
    n_fft        the next power of two >= 2 hops and >= what gives every mel filter an FFT
                 bin (sr / the narrowest mel band between fmin and fmax)
    crop_seconds 128 hops, or 4 x the 95th-percentile box duration when longer, at most 10 s

Each derived value is printed; set the field to override it. The recipe's defaults (2048,
512, 80, 15000, 10 s) are not sentinels: a profile or the command line asks for the data's.
"""
from __future__ import annotations

import math

import librosa
import numpy as np
import pandas as pd

MAX_HOP_S = 0.025
MIN_HOP = 16
CROP_FRAMES = 128
MAX_CROP_S = 10.0


def box_facts(annotations: pd.DataFrame, train_ids, sample_rate: int) -> dict:
    """Percentiles of the +1 boxes of the training recordings: durations (s) and, where the
    boxes carry a band below 0.9 x sr/2, their low and high frequency (Hz)."""
    pos = annotations[(annotations["label"] > 0) & annotations["recording_id"].isin(set(train_ids))]
    if "row" in pos and pos["row"].notna().any():  # boxes typed in a table, not whole clips
        pos = pos[pos["row"].notna()]
    if not len(pos):
        return {}
    dur = (pos["t_max"] - pos["t_min"]).to_numpy(float)
    facts = {"boxes": int(len(pos)), "duration_p05": float(np.percentile(dur, 5)),
             "duration_p95": float(np.percentile(dur, 95))}
    high = pos["f_max"].to_numpy(float)
    if np.isfinite(high).all() and np.percentile(high, 95) < 0.9 * sample_rate / 2:
        facts["f_high_p99"] = float(np.percentile(high, 99))
    low = pos["f_min"].to_numpy(float)
    if np.isfinite(low).all() and np.percentile(low, 1) > 0:
        facts["f_low_p01"] = float(np.percentile(low, 1))
    return facts


def next_pow2(x: float) -> int:
    return 1 << max(0, math.ceil(math.log2(max(x, 1.0))))


def narrowest_mel_band(n_mels: int, fmin: float, fmax: float) -> float:
    """Hz between the edges of the narrowest of `n_mels` mel filters (librosa's Slaney scale)."""
    edges = librosa.mel_frequencies(n_mels=n_mels + 2, fmin=fmin, fmax=fmax)
    return float(np.min(edges[2:] - edges[:-2]))


def derive(sample_rate: int, n_mels: int, facts: dict) -> dict:
    """The data's front end: fmin, fmax, hop_length, n_fft, crop_seconds."""
    nyquist = sample_rate / 2
    fmax = min(nyquist, round(1.2 * facts["f_high_p99"], -2)) if "f_high_p99" in facts else nyquist
    fmin = math.floor(0.8 * facts["f_low_p01"] / 10) * 10 if "f_low_p01" in facts else 0.0
    fmin = fmin if fmin < fmax / 2 else 0.0
    hop_s = min(MAX_HOP_S, facts.get("duration_p05", 4 * MAX_HOP_S) / 4)
    hop = max(MIN_HOP, int(round(hop_s * sample_rate)))
    n_fft = next_pow2(max(2 * hop, sample_rate / narrowest_mel_band(n_mels, fmin, fmax),
                          2 * (n_mels - 1)))
    crop = max(CROP_FRAMES * hop / sample_rate, 4 * facts.get("duration_p95", 0.0))
    crop = min(MAX_CROP_S, float(f"{crop:.3g}"))
    return {"fmin": float(fmin), "fmax": float(fmax), "hop_length": hop, "n_fft": n_fft,
            "crop_seconds": crop}


def follow_data(cfg, prep) -> dict:
    """Set the front-end fields of `cfg` left at their sentinel (n_fft, hop_length, fmax,
    crop_seconds 0; fmin < 0) from the data, print them, and return {field: value}."""
    wanted = {k for k in ("n_fft", "hop_length", "fmax", "crop_seconds") if getattr(cfg, k) == 0}
    wanted |= {"fmin"} if cfg.fmin < 0 else set()
    if not wanted:
        return {}
    facts = box_facts(prep.annotations, prep.ids("train"), prep.sample_rate)
    derived = derive(prep.sample_rate, cfg.n_mels, facts)
    chosen = {k: derived[k] for k in sorted(wanted)}
    for key, value in chosen.items():
        setattr(cfg, key, value)
    where = (f"{facts['boxes']} boxes, duration p05 {facts['duration_p05'] * 1000:.1f} ms, "
             f"p95 {facts['duration_p95'] * 1000:.1f} ms") if facts else "no boxes"
    print(f"front end from the data ({prep.sample_rate} Hz, {where}): "
          + ", ".join(f"{k}={v:g}" for k, v in chosen.items())
          + " (set these fields to override)", flush=True)
    return chosen
