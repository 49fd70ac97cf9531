"""How good 03's pseudo labels are, from what the data offers: agreement with the TP and
FP annotations, the demo's placed calls (demo_events.csv), and where the positives lie."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from common.data import overlap_hit
from common.soft_labels import UNLABELED


def match_events(events: pd.DataFrame, windows: pd.DataFrame, min_overlap: float) -> tuple:
    """Events (recording_id, class, t_min, t_max) against windows (recording_id, class,
    t_start, t_end) of the same recording and class, matched by overlap_hit: (events inside
    some window, windows holding some event), boolean arrays in the rows' order."""
    events, windows = events.reset_index(drop=True), windows.reset_index(drop=True)
    event_hit, window_hit = np.zeros(len(events), bool), np.zeros(len(windows), bool)
    by_key = windows.groupby(["recording_id", "class"]).indices
    t0, t1 = events["t_min"].to_numpy(float)[:, None], events["t_max"].to_numpy(float)[:, None]
    start, end = windows["t_start"].to_numpy(float), windows["t_end"].to_numpy(float)
    for key, e in events.groupby(["recording_id", "class"]).indices.items():
        w = by_key.get(key)
        if w is not None:
            hit = overlap_hit(t0[e], t1[e], start[w], end[w], min_overlap)  # (events, windows)
            event_hit[e] |= hit.any(axis=1)
            window_hit[w] |= hit.any(axis=0)
    return event_hit, window_hit


def agreement(table: pd.DataFrame, ann: pd.DataFrame, label: int, min_overlap: float, ids) -> float:
    """Fraction of annotation rows with `label` (on recordings that got votes) covered by a
    pseudo positive of the same class: recall against TP, false-positive rate against FP."""
    rows = ann[(ann["label"] == label) & ann["recording_id"].isin(ids)]
    covered, _ = match_events(rows, table[table["label"] > 0], min_overlap)
    return float(covered.mean()) if len(rows) else 0.0


def precision_vs_events(table: pd.DataFrame, input_dir, n_folds: int,
                        min_overlap: float = 0.5, species_of=str) -> dict | None:
    """Demo only (INPUT_DIR/demo_events.csv lists every call placed): the share of pseudo
    positives with a call of their species (`species_of(class)`, common/species.py) in the
    window, for windows voted on by every fold model (`all_models`, the test recordings) and
    by fewer (`fewer_models`)."""
    path = Path(input_dir) / "demo_events.csv"
    if not path.is_file():
        return None
    events = pd.read_csv(path, dtype={"recording_id": str})
    calls = events[events["kind"] == "call"]
    calls = calls.assign(**{"class": "s" + calls["species_id"].astype(str)})
    pos = table[table["label"] > 0]
    by_species = pos.assign(**{"class": pos["class"].map(species_of)})
    _, right = match_events(calls, by_species, min_overlap)
    full = (pos["n_models"] == n_folds).to_numpy()
    return {name: {"windows": int(mask.sum()),
                   "precision": float(right[mask].mean()) if mask.any() else None}
            for name, mask in (("all_models", full), ("fewer_models", ~full))}


def positives_on(pos: pd.DataFrame, prep) -> dict:
    """Pseudo-positive windows on test recordings, train recordings with TP rows, unlabeled
    recordings and the other train recordings (FP-only: calls nobody annotated, each held
    out by one fold)."""
    has_tp = set(prep.folds.loc[prep.folds["has_tp"].astype(bool), "recording_id"])
    rid = pos["recording_id"]
    test = rid.isin(set(prep.ids("test")))
    tp = rid.isin(has_tp)
    free = rid.isin(set(prep.ids(UNLABELED)))
    return {"test": int(test.sum()), "train_tp": int(tp.sum()), "unlabeled": int(free.sum()),
            "train_fp_only": int((~test & ~tp & ~free).sum())}
