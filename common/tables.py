"""Checks of the annotation table against the decoded recordings (01_preprocess.py).

A row that cannot be used (a duplicate, an unknown or unreadable recording, a class outside
the class list, t_min >= t_max, a box outside the recording or above the cache's sr/2) is
dropped; a box that sticks
out of the recording or of 0..sr/2 is clipped. Nothing stops the run: every problem is
counted, its first rows are listed by file, row and value in report.json, and one warning
line per problem says what to fix. Rows carry `source` (the CSV) and `row` (its line).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

MAX_LISTED = 20  # rows listed per problem in report.json; all of them are counted
KEY_COLUMNS = ["recording_id", "class", "t_min", "t_max", "f_min", "f_max", "label"]
TOLERANCE_S = 0.01  # a box ending this little after the recording is not worth a warning


def _problems(ann: pd.DataFrame, recordings: pd.DataFrame, classes: list,
              cache_sr: float | None = None) -> list[tuple]:
    """(problem key, what is wrong, action, mask) in the order they are checked."""
    known = recordings[recordings["split"] != "test"].set_index("recording_id")
    duration = ann["recording_id"].map(known["duration"]).to_numpy(float)
    nyquist = ann["recording_id"].map(known["source_sr"]).to_numpy(float) / 2
    t0, t1 = ann["t_min"].to_numpy(float), ann["t_max"].to_numpy(float)
    f0, f1 = ann["f_min"].to_numpy(float), ann["f_max"].to_numpy(float)
    # boxes typed by a person (RFCx CSVs, with a row number); BirdCLEF boxes span 0..sr/2
    from_csv = ann["row"].notna().to_numpy() if "row" in ann else np.zeros(len(ann), bool)
    with np.errstate(invalid="ignore"):
        return [
            ("duplicate_row", "the same as an earlier row", "dropped",
             ann.duplicated(subset=KEY_COLUMNS).to_numpy()),
            ("recording_missing_or_unreadable", "recording_id is not a readable train "
             "recording (see 'unreadable')", "dropped", np.isnan(duration)),
            ("class_not_in_class_list", "class is not in the class list", "dropped",
             ~ann["class"].isin(classes).to_numpy()),
            ("t_min_not_before_t_max", "t_min >= t_max", "dropped", ~(t0 < t1)),
            ("outside_recording", "the box lies outside the recording", "dropped",
             (t0 >= duration) | (t1 <= 0)),
            ("above_cache_band", f"the box lies above {(cache_sr or 0) / 2:g} Hz, half the "
             "cache's sample rate (raise --sample_rate to keep it)", "dropped",
             from_csv & (f0 >= (cache_sr or np.inf) / 2)),
            ("time_clipped", "the box sticks out of the recording", "clipped",
             (t0 < 0) | (t1 > duration + TOLERANCE_S)),
            ("frequency_clipped", "f_min/f_max outside 0..sr/2 of the recording", "clipped",
             from_csv & ((f0 < 0) | (f1 > nyquist) | (f0 > nyquist))),
        ]


def _listed(rows: pd.DataFrame, what: str, action: str) -> list[dict]:
    out = []
    for _, rec in rows.head(MAX_LISTED).iterrows():
        value = {k: rec[k] for k in ("recording_id", "class", "t_min", "t_max", "f_min", "f_max")}
        out.append({"file": rec.get("source"), "row": None if pd.isna(rec.get("row", np.nan))
                    else int(rec["row"]), "value": value, "problem": what, "action": action})
    return out


def check_annotations(ann: pd.DataFrame, recordings: pd.DataFrame, classes: list,
                      report: dict, cache_sr: float | None = None) -> pd.DataFrame:
    """The usable rows of `ann` (clipped where needed); fills report['annotations_dropped'],
    report['annotations_clipped'] (counts per problem) and report['annotation_problems'].
    With `cache_sr` (the cache's sample rate), a typed box whose band starts at or above
    cache_sr / 2 is dropped: the model never hears it."""
    report.update(annotations_dropped={}, annotations_clipped={}, annotation_problems=[])
    gone = np.zeros(len(ann), bool)
    for key, what, action, mask in _problems(ann, recordings, classes, cache_sr):
        hit = mask & ~gone
        if action == "dropped":
            gone |= hit
        report[f"annotations_{action}"][key] = int(hit.sum())
        if hit.any():
            listed = _listed(ann[hit], what, action)
            report["annotation_problems"] += listed
            first = listed[0]
            print(f"WARNING: {int(hit.sum())} annotation rows {action}: {what} (first: "
                  f"{first['file']} row {first['row']}: {first['value']}); fix the CSV to keep "
                  "them as they are, see report.json", flush=True)
    out = ann[~gone].copy()
    known = recordings.set_index("recording_id")
    duration = out["recording_id"].map(known["duration"])
    out["t_min"] = out["t_min"].clip(lower=0.0)
    out["t_max"] = np.minimum(out["t_max"], duration)
    nyquist = out["recording_id"].map(known["source_sr"]) / 2
    out["f_min"] = np.minimum(out["f_min"].clip(lower=0.0), nyquist)
    out["f_max"] = np.minimum(out["f_max"], nyquist)
    return out.reset_index(drop=True)
