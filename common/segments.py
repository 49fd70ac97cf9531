"""5 s segments of the BirdCLEF track: "local F1" on the validation clips of a fold and
"soundscape F1" on the labelled soundscapes, both by the BirdCLEF 2021 rule
(common.metrics.row_f1: a segment with nothing above the threshold is `nocall`).

A segment is scored by the model's clip output on one training-length window centred on
it (the segment itself when crop_seconds is 5), kept inside the recording.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from common import metrics, runs
from common.data import window_labels
from common.infer import predict_windows

SEGMENT_SECONDS = 5.0  # BirdCLEF 2021 scores 5 s segments


def segment_ends(duration: float) -> list[int]:
    """Segment end seconds 5, 10, ... of a soundscape `duration` s long: a last part of at
    least half a segment is a segment (common/layouts/soundscapes.py names the rows)."""
    n = max(1, math.floor(duration / SEGMENT_SECONDS + 0.5))
    return [int(SEGMENT_SECONDS * (k + 1)) for k in range(n)]


def segment_starts(duration: float, window_s: float) -> np.ndarray:
    """Window starts (s), one per segment of segment_ends: a window of `window_s` centred
    on the segment, kept inside the recording (how 05 scores a test segment, and 03 an
    unlabeled soundscape's)."""
    centres = np.array(segment_ends(duration), float) - SEGMENT_SECONDS / 2
    starts = np.clip(centres - window_s / 2, 0.0, max(duration - window_s, 0.0))
    return np.unique(np.round(starts, 6))


def clip_segments(recording_ids, durations: dict, seconds: float = SEGMENT_SECONDS) -> pd.DataFrame:
    """Consecutive segments of each clip (at least one; a last part over half a segment counts)."""
    rows = [(rid, k * seconds, (k + 1) * seconds) for rid in recording_ids
            for k in range(max(1, int(round(durations[rid] / seconds))))]
    return pd.DataFrame(rows, columns=["recording_id", "t_min", "t_max"])


class SegmentSet:
    """Segments (recording_id, t_min, t_max, ...) with their truth (N, K) from the annotation
    table: a class is present where a +1 row overlaps the segment by >= 0.5 s (or half the row)."""

    def __init__(self, table: pd.DataFrame, annotations: pd.DataFrame, classes: list,
                 sample_rate: int, crop_seconds: float):
        order = {rid: i for i, rid in enumerate(dict.fromkeys(table["recording_id"]))}
        self.table = table.assign(_o=table["recording_id"].map(order)).sort_values(
            ["_o", "t_min"], kind="stable").drop(columns="_o").reset_index(drop=True)
        self.ids = list(order)
        self.sr, self.window = sample_rate, int(round(crop_seconds * sample_rate))
        index = {c: i for i, c in enumerate(classes)}
        pos = annotations[annotations["label"] > 0]
        by_rec = {rid: grp for rid, grp in pos[pos["recording_id"].isin(order)].groupby("recording_id")}
        self.truth = np.stack([window_labels(by_rec.get(r.recording_id), r.t_min, r.t_max, index) > 0
                               for r in self.table.itertuples()]).astype(np.float32) \
            if len(self.table) else np.zeros((0, len(classes)), np.float32)

    def logits(self, model, cache, batch_size: int, device) -> np.ndarray:
        """(N, K) clip logits, one window per segment, in table order."""
        starts = []
        for rid, grp in self.table.groupby("recording_id", sort=False):
            centre = 0.5 * (grp["t_min"].to_numpy() + grp["t_max"].to_numpy()) * self.sr
            last = max(cache.length(rid) - self.window, 0)
            starts.append(np.clip(np.round(centre - self.window / 2), 0, last).astype(int).tolist())
        per_rec = predict_windows(model, cache, self.ids, self.window, self.window, batch_size,
                                  device, starts=starts)
        return np.concatenate(per_rec)

    def per_recording(self, logits: np.ndarray) -> np.ndarray:
        """(len(ids), K): the max over each recording's segments."""
        codes = pd.factorize(self.table["recording_id"])[0]
        return np.stack([logits[codes == i].max(axis=0) for i in range(len(self.ids))])

    def f1(self, logits: np.ndarray, threshold: float = 0.5) -> float:
        return metrics.row_f1(self.truth, metrics.sigmoid(logits), threshold)["f1"]


def for_validation(prep, val_ids: list, crop_seconds: float) -> SegmentSet | None:
    """The 5 s segments of a fold's validation clips (whole-clip labels only, else None)."""
    if not prep.clips:
        return None
    table = clip_segments(val_ids, prep.durations)
    return SegmentSet(table, prep.annotations, prep.classes, prep.sample_rate, crop_seconds)


def f1_scores(name: str, truth: np.ndarray, probs: np.ndarray) -> dict:
    """{name}_f1 (at 0.5), {name}_f1_best and {name}_threshold (best of a sweep),
    {name}_micro_f1 of segment probabilities (N, K) against truth (N, K); and the later
    competitions' figures: {name}_roc_auc (macro over classes with a positive, 2024/2025)
    and {name}_cmap (padded cmAP, 2023)."""
    sweep = metrics.threshold_sweep(truth, probs)
    return {f"{name}_f1": sweep["f1_at_0.5"], f"{name}_f1_best": sweep["best_f1"],
            f"{name}_threshold": sweep["best_threshold"],
            f"{name}_micro_f1": metrics.row_f1(truth, probs)["micro_f1"],
            f"{name}_roc_auc": metrics.macro_roc_auc(truth, probs),
            f"{name}_cmap": metrics.padded_cmap(truth, probs)}


def _frame(table: pd.DataFrame, probs: np.ndarray, classes: list) -> pd.DataFrame:
    return pd.concat([table.reset_index(drop=True), pd.DataFrame(probs, columns=classes)], axis=1)


def score_run(run_dir, fold_results: list, prep, cfg, device, load_model) -> dict:
    """Local F1 of the OOF segments and soundscape F1 of the fold models' mean probability,
    each at 0.5 and at the best threshold of a sweep; writes oof_segments.csv and
    soundscape_pred.csv. `load_model(fold)` returns a fold's best model."""
    sets = [for_validation(prep, r["val_ids"], cfg.crop_seconds) for r in fold_results]
    truth = np.concatenate([s.truth for s in sets])
    probs = metrics.sigmoid(np.concatenate([r["seg_logits"] for r in fold_results]))
    runs.save_csv(run_dir / "oof_segments.csv",
                  _frame(pd.concat([s.table for s in sets]), probs, prep.classes))
    out = f1_scores("local", truth, probs)
    if prep.soundscapes is None or not len(prep.soundscapes):
        return out
    trained = {rid for r in fold_results for rid in r["trained_on"]}
    leaked = trained & set(prep.soundscapes["recording_id"])
    if leaked:
        raise RuntimeError(f"soundscapes {sorted(leaked)[:3]} are in the training data; "
                           "soundscape F1 needs held-out soundscapes")
    scapes = SegmentSet(prep.soundscapes, prep.annotations, prep.classes, prep.sample_rate,
                        cfg.crop_seconds)
    probs = np.mean([metrics.sigmoid(scapes.logits(load_model(int(r["history"]["fold"].iloc[0])),
                                                   prep.cache, cfg.infer_batch, device))
                     for r in fold_results], axis=0)
    runs.save_csv(run_dir / "soundscape_pred.csv", _frame(scapes.table, probs, prep.classes))
    return {**out, **f1_scores("soundscape", scapes.truth, probs)}


def best_memo(result: dict) -> str:
    """'best thr local 0.30 (0.6234) soundscape 0.25 (0.5810) ' for the experiments memo."""
    parts = [f"{name} {result[f'{name}_threshold']:.2f} ({result[f'{name}_f1_best']:.4f})"
             for name in ("local", "soundscape") if f"{name}_threshold" in result]
    return f"best thr {' '.join(parts)} " if parts else ""
