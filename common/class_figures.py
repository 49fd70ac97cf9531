"""Per-class figures researchers read (what BirdNET-Analyzer and Koogu users expect): for
every class AP, ROC-AUC and precision / recall / F1 over a grid of thresholds, at three levels:

    recording  one score per test recording (the clip score) against its clip labels
    segment    the test recordings cut into segments one crop long; a segment's score is the
               max of the frame track inside it, its truth whether an annotated event overlaps
               it by >= min(0.5 s, half the event) (common.data.overlap_hit)
    event      detections (05's event table) matched one to one to the annotated events of the
               same recording and class by time IoU >= `iou` (greedy, best IoU first)

"Class" here is a submission column: the species (common/species.py). Where the model's
classes split a species (RFCx song types), its scores and frame tracks are the max over its
classes and a detection counts for its species.

Written by 05 into the ensemble run: per_class.csv (one row per level and class),
per_class_thresholds.csv (level, class, threshold, precision, recall, f1, tp, fp, fn),
detections_all.csv (every detection with the recording's source file) and a markdown
section for report.md, also printed.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from common import runs
from common.data import overlap_hit

THRESHOLDS = np.round(np.arange(0.05, 0.96, 0.05), 2)
IOU = 0.5          # per-class tables (one-to-one at IoU >= 0.5)
EVENT_IOU = 0.3    # event F1 (DCASE task 5 rule)
COLLAR_S, COLLAR_SHARE = 0.2, 0.2  # event F1, onset rule (sed_eval)


def sweep(truth: np.ndarray, probs: np.ndarray, thresholds=THRESHOLDS) -> pd.DataFrame:
    """(threshold, precision, recall, f1, tp, fp, fn) of one class's 0/1 truth and scores."""
    truth, probs = np.asarray(truth) > 0, np.asarray(probs, float)
    rows = []
    for t in thresholds:
        pred = probs >= t
        tp, fp, fn = int((pred & truth).sum()), int((pred & ~truth).sum()), int((~pred & truth).sum())
        precision = tp / (tp + fp) if tp + fp else float("nan")
        recall = tp / (tp + fn) if tp + fn else float("nan")
        f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan")
        rows.append((float(t), precision, recall, f1, tp, fp, fn))
    return pd.DataFrame(rows, columns=["threshold", "precision", "recall", "f1", "tp", "fp", "fn"])


def class_rows(level: str, truth: np.ndarray, probs: np.ndarray, classes: list) -> tuple:
    """(summary rows, threshold rows) of every class at one level."""
    from sklearn.metrics import average_precision_score, roc_auc_score
    truth = np.asarray(truth) > 0
    summary, table = [], []
    for k, cls in enumerate(classes):
        y, p = truth[:, k], np.asarray(probs)[:, k]
        grid = sweep(y, p).assign(level=level, **{"class": cls})
        table.append(grid)
        best = grid.loc[grid["f1"].fillna(-1).idxmax()]
        at = grid.loc[(grid["threshold"] - 0.5).abs().idxmin()]
        summary.append({
            "level": level, "class": cls, "positives": int(y.sum()), "negatives": int((~y).sum()),
            "ap": float(average_precision_score(y, p)) if y.any() else float("nan"),
            "roc_auc": float(roc_auc_score(y, p)) if y.any() and (~y).any() else float("nan"),
            "precision_0.5": at["precision"], "recall_0.5": at["recall"], "f1_0.5": at["f1"],
            "best_f1": best["f1"], "best_threshold": best["threshold"]})
    return summary, table


def segment_level(tracks: dict, hop_s: float, events: pd.DataFrame, durations: dict,
                  seg_s: float, classes: list) -> tuple[np.ndarray, np.ndarray]:
    """(truth (S, K), scores (S, K)) of the consecutive `seg_s` segments of every recording
    with a track (the last one may be shorter)."""
    index = {c: i for i, c in enumerate(classes)}
    by_rec = dict(list(events.groupby("recording_id"))) if len(events) else {}
    truth, scores = [], []
    for rid, track in tracks.items():
        n_seg = max(1, int(np.ceil(durations[rid] / seg_s - 1e-9)))
        grp = by_rec.get(rid)
        for s in range(n_seg):
            a, b = s * seg_s, min((s + 1) * seg_s, durations[rid])
            first = int(np.floor(a / hop_s))
            scores.append(track[first:max(int(np.ceil(b / hop_s)), first + 1)].max(axis=0))
            row = np.zeros(len(classes), np.float32)
            if grp is not None:
                hit = overlap_hit(grp["t_min"].to_numpy(float), grp["t_max"].to_numpy(float), a, b)
                for cls in grp.loc[hit, "class"]:
                    if cls in index:
                        row[index[cls]] = 1
            truth.append(row)
    return np.array(truth), np.array(scores)


def iou_1d(a0, a1, b0, b1) -> np.ndarray:
    """Time IoU of intervals a (n,) against b (m,) -> (n, m)."""
    inter = np.minimum(a1[:, None], b1[None, :]) - np.maximum(a0[:, None], b0[None, :])
    inter = np.clip(inter, 0, None)
    union = (a1 - a0)[:, None] + (b1 - b0)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def onset_close(a0, a1, b0, collar: float = COLLAR_S, share: float = COLLAR_SHARE) -> np.ndarray:
    """Onset matching of reference events a (n,) against detections b (m,) -> (n, m) scores:
    |onset difference| <= max(collar s, share x the reference's length) (DCASE's sed_eval
    onset rule: 0.2 s or 20 % of the event) gives 1 - difference / limit (> 0; closer is
    higher), else 0."""
    limit = np.maximum(collar, share * (a1 - a0))[:, None]
    diff = np.abs(a0[:, None] - b0[None, :])
    return np.where(diff <= limit, 1.0 - diff / (limit + 1e-9) + 1e-9, 0.0)


RULES = {"onset": lambda a0, a1, b0, b1: onset_close(a0, a1, b0),
         "iou": lambda a0, a1, b0, b1: iou_1d(a0, a1, b0, b1)}


def rule_name(rule: str, iou: float) -> str:
    return (f"event (onset within max({COLLAR_S:g} s, {COLLAR_SHARE:.0%} of the event))"
            if rule == "onset" else f"event (IoU >= {iou:g})")


def event_matches(events: pd.DataFrame, detections: pd.DataFrame, iou: float = IOU,
                  rule: str = "iou", key: str = "species") -> pd.DataFrame:
    """Per class: annotated events, detections, matched pairs (one to one, best match first:
    by time IoU >= `iou` for rule `iou` (DCASE task 5), by onset distance within the collar
    for rule `onset` (sed_eval)), precision, recall, F1. `detections`: recording_id,
    species, class, t_start, t_end (05's detections.csv); its column `key` is matched to the
    events' class (species for the test events; class for boxes of the model's classes)."""
    counts = {}
    det = pd.DataFrame({"recording_id": detections["recording_id"], "class": detections[key],
                        "t_min": detections["t_start"], "t_max": detections["t_end"]})
    keys = set(map(tuple, events[["recording_id", "class"]].drop_duplicates().to_numpy())) | \
        set(map(tuple, det[["recording_id", "class"]].drop_duplicates().to_numpy()))
    ev_groups = events.groupby(["recording_id", "class"]).indices
    det_groups = det.groupby(["recording_id", "class"]).indices
    for key in keys:
        e = events.iloc[ev_groups.get(key, [])]
        d = det.iloc[det_groups.get(key, [])]
        matched = 0
        if len(e) and len(d):
            m = RULES[rule](e["t_min"].to_numpy(float), e["t_max"].to_numpy(float),
                            d["t_min"].to_numpy(float), d["t_max"].to_numpy(float))
            ok = m >= iou if rule == "iou" else m > 0
            pairs = sorted(zip(*np.nonzero(ok)), key=lambda ij: -m[ij])
            used_e, used_d = set(), set()
            for i, j in pairs:
                if i not in used_e and j not in used_d:
                    used_e.add(i)
                    used_d.add(j)
            matched = len(used_e)
        c = counts.setdefault(key[1], [0, 0, 0])
        c[0] += len(e)
        c[1] += len(d)
        c[2] += matched
    rows = []
    for cls, (n_e, n_d, tp) in sorted(counts.items()):
        precision = tp / n_d if n_d else float("nan")
        recall = tp / n_e if n_e else float("nan")
        rows.append({"level": rule_name(rule, iou), "class": cls, "positives": n_e,
                     "detections": n_d, "matched": tp, "precision": precision, "recall": recall,
                     "f1": 2 * tp / (n_e + n_d) if n_e + n_d else float("nan")})
    return pd.DataFrame(rows)


def event_f1(events: pd.DataFrame, detections: pd.DataFrame, key: str = "species") -> dict:
    """Overall (micro: pooled over classes) event precision, recall and F1 under both
    matching rules: {"onset": {...}, "iou_0.3": {...}}, each with the counts (`key`: see
    event_matches)."""
    out = {}
    for rule, iou in (("onset", 0.0), ("iou", EVENT_IOU)):
        rows = event_matches(events, detections, iou=iou, rule=rule, key=key)
        n_e, n_d, tp = (int(rows[c].sum()) if len(rows) else 0
                        for c in ("positives", "detections", "matched"))
        out[rule if rule == "onset" else f"iou_{iou:g}"] = {
            "precision": tp / n_d if n_d else 0.0, "recall": tp / n_e if n_e else 0.0,
            "f1": 2 * tp / (n_e + n_d) if n_e + n_d else 0.0,
            "events": n_e, "detections": n_d, "matched": tp}
    return out


def markdown(summary: pd.DataFrame, events: pd.DataFrame | None) -> str:
    fmt = lambda v: "" if pd.isna(v) else f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["", "## Per-class figures on the test recordings", ""]
    cols = ["class", "positives", "negatives", "ap", "roc_auc", "precision_0.5", "recall_0.5",
            "f1_0.5", "best_f1", "best_threshold"]
    for level, grp in summary.groupby("level", sort=False):
        lines += [f"{level} level:", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(fmt(r[c]) for c in cols) + " |" for _, r in grp.iterrows()]
        lines += [f"| mean | | | {fmt(grp['ap'].mean())} | {fmt(grp['roc_auc'].mean())} | | | "
                  f"{fmt(grp['f1_0.5'].mean())} | {fmt(grp['best_f1'].mean())} | |", ""]
    if events is not None and len(events):
        cols = ["class", "positives", "detections", "matched", "precision", "recall", "f1"]
        lines += [f"{events['level'].iloc[0]} level (events = annotated boxes):", "",
                  "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(fmt(r[c]) for c in cols) + " |" for _, r in events.iterrows()]
        lines.append("")
    lines.append("Full threshold tables: per_class_thresholds.csv (0.05 to 0.95).")
    return "\n".join(lines) + "\n"


def with_sources(run_dir: Path, prep) -> pd.DataFrame | None:
    """detections.csv of `run_dir` plus each recording's source file, as detections_all.csv."""
    if not (run_dir / "detections.csv").is_file():
        return None
    det = pd.read_csv(run_dir / "detections.csv", dtype={"recording_id": str})
    recs = prep.recordings
    paths = recs["path"] if "path" in recs else recs["recording_id"]  # runs before 01 kept paths
    source = dict(zip(recs["recording_id"], paths))
    runs.save_csv(run_dir / "detections_all.csv", det.assign(source_file=det["recording_id"].map(source)))
    return det


def write(run_dir, prep, found, ids: list, probs: np.ndarray, tracks: dict | None = None,
          hop_s: float = 0.0, seg_s: float = 0.0, input_dir=None) -> tuple[str, list, dict]:
    """Write detections_all.csv and, where the test recordings have truth (`found` =
    prep.test_truth(...): ids, (N, S) per species), the per-species figures of `probs` (N, K)
    and `tracks` ({id: (T, K)}) into `run_dir`; returns (the markdown section, also printed,
    or "", the files written, the overall event F1 by both matching rules ({} without
    reference events or detections))."""
    run_dir = Path(run_dir)
    det = with_sources(run_dir, prep)
    files = [] if det is None else ["detections_all.csv"]
    if found is None:
        return "", files, {}
    order = {rid: i for i, rid in enumerate(ids)}
    truth_ids, truth = found
    species, to_species = prep.species.columns, prep.species.to_species
    scores = to_species(probs[[order[r] for r in truth_ids]])
    summary, table = class_rows("recording", truth, scores, species)
    events, event_rows = prep.test_events(input_dir), None
    if events is not None and tracks and seg_s > 0 and set(truth_ids) <= set(tracks):
        seg_truth, seg_scores = segment_level({r: to_species(tracks[r]) for r in truth_ids},
                                              hop_s, events, prep.durations, seg_s, species)
        more, grid = class_rows(f"segment ({seg_s:g} s)", seg_truth, seg_scores, species)
        summary, table = summary + more, table + grid
    overall = {}
    if det is not None and events is not None:
        keep = set(truth_ids)
        events, det = events[events["recording_id"].isin(keep)], det[det["recording_id"].isin(keep)]
        event_rows = event_matches(events, det)
        overall = event_f1(events, det)
    summary = pd.DataFrame(summary)
    runs.save_csv(run_dir / "per_class.csv", pd.concat([summary, event_rows], ignore_index=True))
    runs.save_csv(run_dir / "per_class_thresholds.csv", pd.concat(table, ignore_index=True)[
        ["level", "class", "threshold", "precision", "recall", "f1", "tp", "fp", "fn"]])
    text = markdown(summary, event_rows) + event_f1_lines(overall)
    print(text, flush=True)
    return text, files + ["per_class.csv", "per_class_thresholds.csv"], overall


def event_f1_lines(overall: dict) -> str:
    """The overall event F1 of both matching rules as markdown lines ("" without)."""
    if not overall:
        return ""
    lines = ["", "Event F1 over all classes (detections.csv against the reference events):", ""]
    for name, v in overall.items():
        lines.append(f"- {name}: F1 {v['f1']:.3f}, precision {v['precision']:.3f}, recall "
                     f"{v['recall']:.3f} ({v['matched']} matched of {v['events']} events and "
                     f"{v['detections']} detections)")
    return "\n".join(lines) + "\n"
