"""The event rule of 05's detections (frame threshold, minimum duration) chosen on held-out
training recordings, never on test.

Each OOF recording that has annotation rows is scored by the fold model that validated it
(common/heldout.py: the same frame tracks as the test recordings', over runs by the run
weights); events are extracted for every (threshold, minimum duration) of a grid and matched
to the recording's TP boxes by time IoU >= 0.3 (common/class_figures.py). Training labels are
often sparse (RFCx: some calls of a species boxed, others not), so detections count only
where something is known: a (recording, class) pair with an annotation row (TP or FP box, or
the -1 rows of fully annotated data). The rule with the best event F1 wins; ties go to the
higher threshold. The minimum durations follow the data: fractions of the TP boxes' median
length.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from common import detect, heldout
from common.class_figures import EVENT_IOU, event_f1

# 0.95 beyond the tenths: every demo run of 2026-12-06 chose 0.9, the old grid's edge
THRESHOLDS = np.round(np.r_[np.arange(0.1, 0.91, 0.1), 0.95], 2)
DURATION_SHARES = (0.0, 0.25, 0.5, 1.0)  # x the median TP box length
MAX_RECORDINGS = 200


def oof_recordings(infos: list, prep, n: int = MAX_RECORDINGS, seed: int = 0) -> list:
    """Up to n recordings in every run's OOF table that hold a TP row (seeded draw)."""
    common = set.intersection(*(set(i["oof"].index) for i in infos))
    tp = prep.annotations[prep.annotations["label"] > 0]
    ids = sorted(common & set(tp["recording_id"]))
    if len(ids) > n:
        ids = sorted(np.random.default_rng(seed).choice(ids, n, replace=False).tolist())
    return ids


def choose(infos: list, prep, preps: dict, weights, hop: int, device, stride_s: float) -> dict:
    """{"threshold", "min_seconds", "oof_f1", "recordings", "grid"}: the event rule with the
    best OOF event F1 (IoU >= 0.3), or {} when no OOF recording has a TP box."""
    ids = oof_recordings(infos, prep)
    if not ids:
        return {}
    tracks = heldout.heldout_tracks(infos, prep, preps, ids, weights, hop, device, stride_s)
    ann = prep.annotations[prep.annotations["recording_id"].isin(ids)]
    ref = ann[ann["label"] > 0][["recording_id", "class", "t_min", "t_max"]]
    known = set(zip(ann["recording_id"], ann["class"]))
    median = float((ref["t_max"] - ref["t_min"]).median())
    hop_s = hop / prep.sample_rate
    rows = []
    for share in DURATION_SHARES:
        for threshold in THRESHOLDS:
            det = detect.detection_table(tracks, prep.classes, hop_s, float(threshold),
                                         share * median, prep.durations)
            keep = np.array([(r, c) in known for r, c in zip(det["recording_id"], det["class"])],
                            dtype=bool)
            det = det.loc[keep] if len(det) else det
            f1 = event_f1(ref, det, key="class")[f"iou_{EVENT_IOU:g}"]["f1"]
            rows.append({"threshold": float(threshold), "min_seconds": round(share * median, 4),
                         "oof_f1": f1})
    grid = pd.DataFrame(rows)
    best = grid.sort_values(["oof_f1", "threshold"], ascending=False, kind="stable").iloc[0]
    return {"threshold": float(best["threshold"]), "min_seconds": float(best["min_seconds"]),
            "oof_f1": float(best["oof_f1"]), "recordings": len(ids), "grid": grid}
