"""Annotation table, folds, training crops and their labels.

The annotation table is the kit's one internal contract:
    recording_id, class, t_min, t_max, f_min, f_max, label
with label +1 (the class calls in the box) or -1 (it does not). Unannotated = unknown (0).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from common import soft_labels
from common.cli import ConfigError

ANNOTATION_COLUMNS = ["recording_id", "class", "t_min", "t_max", "f_min", "f_max", "label"]


# ----------------------------------------------------------------------------- folds
def make_folds(annotations: pd.DataFrame, classes: list[str], n_folds: int, seed: int) -> pd.DataFrame:
    """Split by recording, multilabel-stratified by species.

    Returns recording_id, fold, has_tp. Recordings with TP rows get a fold 0..n_folds-1
    (stratified by TP species) and are validated once. FP-only recordings get a fold too
    (stratified by FP species): fold k's model does not train on them, so pseudo labelling
    has a model that never saw each one (RFCx: ~3,600 of the 4,727 train recordings hold
    no TP row but calls nobody annotated). They are never validated (no TP truth).
    """
    if n_folds < 2:
        raise ConfigError(f"n_folds={n_folds}: cross-validation needs 2 folds or more")
    tp = annotations[annotations["label"] > 0]
    tp_ids = sorted(tp["recording_id"].unique())
    if len(tp_ids) < n_folds:
        raise ConfigError(f"{len(tp_ids)} recordings with TP rows cannot make {n_folds} folds; "
                          "lower n_folds")
    fp_only = sorted(set(annotations["recording_id"]) - set(tp_ids))
    fp = annotations[annotations["recording_id"].isin(fp_only)]
    return pd.concat([
        pd.DataFrame({"recording_id": tp_ids, "fold": _stratified(tp, tp_ids, classes, n_folds, seed),
                      "has_tp": True}),
        pd.DataFrame({"recording_id": fp_only, "fold": _stratified(fp, fp_only, classes, n_folds, seed),
                      "has_tp": False})], ignore_index=True)


def _stratified(rows: pd.DataFrame, ids: list, classes: list[str], n_folds: int, seed: int) -> np.ndarray:
    """Fold of each id, multilabel-stratified by the classes of its rows; with fewer ids than
    folds, a seeded deal (some folds hold none)."""
    fold = np.full(len(ids), -1)
    if len(ids) < n_folds:
        fold[:] = np.random.default_rng(seed).permutation(n_folds)[:len(ids)]
        return fold
    from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

    index = {c: i for i, c in enumerate(classes)}
    row_of = {rid: i for i, rid in enumerate(ids)}
    y = np.zeros((len(ids), len(classes)), dtype=int)
    for rid, cls in zip(rows["recording_id"], rows["class"]):
        y[row_of[rid], index[cls]] = 1
    if y.shape[1] == 1:  # one class: iterstrat wants a multilabel matrix, so add its complement
        y = np.column_stack([y, 1 - y])
    splitter = MultilabelStratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    for k, (_, val_idx) in enumerate(splitter.split(np.zeros(len(ids)), y)):
        fold[val_idx] = k
    return fold


def split_fold(folds: pd.DataFrame, fold: int) -> tuple[set, set]:
    """(train recording ids, validation recording ids) of one fold, disjoint. Training holds
    every recording outside fold k (fold -1, FP-only in a preprocessing run made before they
    had folds: always training); validation the fold's recordings with TP rows. Fold k's
    FP-only recordings are in neither: held out, for pseudo labels."""
    in_fold = folds["fold"] == fold
    val = set(folds.loc[in_fold & folds["has_tp"].astype(bool), "recording_id"])
    train = set(folds.loc[~in_fold, "recording_id"])
    return train, val


# ----------------------------------------------------------------------------- crops and labels
def crop_start(t_min: float, t_max: float, duration: float, crop: float, rng) -> float:
    """Recipe crop: start uniform in [centre - crop/2, centre), clamped inside the recording."""
    centre = 0.5 * (t_min + t_max)
    start = rng.uniform(centre - crop / 2, centre)
    return float(min(max(start, 0.0), max(duration - crop, 0.0)))


def overlap_hit(t0, t1, start, end, min_overlap: float = 0.5):
    """Whether events [t0, t1) overlap the window [start, end) by at least
    min(min_overlap, half the event's length) seconds (arrays broadcast)."""
    overlap = np.minimum(t1, end) - np.maximum(t0, start)
    return overlap >= np.minimum(min_overlap, 0.5 * (np.asarray(t1) - np.asarray(t0))) - 1e-9


def window_labels(events: pd.DataFrame, start: float, end: float, class_index: dict,
                  min_overlap: float = 0.5) -> np.ndarray:
    """Labels (K,) of a window from the annotation rows of its recording.

    A row counts when it overlaps the window by at least min(min_overlap s, half the row's
    length). TP gives +1, FP gives -1, both for one class: +1 (the species calls in the
    window even if a detector also fired wrongly there); otherwise 0 (unknown).
    """
    return event_labels(event_arrays(events, class_index), start, end, len(class_index),
                        min_overlap)


def event_arrays(events: pd.DataFrame | None, class_index: dict) -> tuple | None:
    """(t_min, t_max, class index, label) arrays of annotation rows, for event_labels."""
    if events is None or len(events) == 0:
        return None
    return (events["t_min"].to_numpy(float), events["t_max"].to_numpy(float),
            np.array([class_index[c] for c in events["class"]], dtype=np.int64),
            events["label"].to_numpy(float))


def event_labels(events: tuple | None, start: float, end: float, n_classes: int,
                 min_overlap: float = 0.5) -> np.ndarray:
    """window_labels on the arrays of event_arrays (what a training crop pays per item)."""
    labels = np.zeros(n_classes, dtype=np.float32)
    if events is None:
        return labels
    t0, t1, cls, lab = events
    hit = overlap_hit(t0, t1, start, end, min_overlap)
    labels[cls[hit & (lab <= 0)]] = -1.0
    labels[cls[hit & (lab > 0)]] = 1.0  # a TP wins over an FP of the same class
    return labels


def frame_labels(events: tuple | None, start: float, crop: float, n_frames: int,
                 n_classes: int) -> np.ndarray:
    """(n_frames, K) int8 frame targets of a crop [start, start + crop) from the arrays of
    event_arrays: +1 where a frame's centre lies inside a TP box of the class, -1 inside an
    FP box (a TP wins over an FP of the same class), 0 (no frame-level gradient) elsewhere.
    Frame i of the model's output grid is centred at start + (i + 0.5) x crop / n_frames."""
    out = np.zeros((n_frames, n_classes), dtype=np.int8)
    if events is None:
        return out
    t0, t1, cls, lab = events
    centres = start + (np.arange(n_frames) + 0.5) * crop / n_frames
    inside = (centres[None, :] >= t0[:, None]) & (centres[None, :] < t1[:, None])  # (E, T)
    for sign, rows in ((-1, lab <= 0), (1, lab > 0)):
        for e in np.flatnonzero(rows & inside.any(axis=1)):
            out[inside[e], cls[e]] = sign
    return out


class CropDataset(torch.utils.data.Dataset):
    """One training crop per anchor row: (wave (crop_samples,), labels (K,) in {-1,0,1}).

    Labels come from `annotations` (TP +1, FP -1, else 0) and, when given, from `pseudo`
    rows of the same table shape (see combine_pseudo): a pseudo positive over an FP makes
    the entry unknown (0) and over an unknown entry +1 (recipe stage 3); a pseudo negative
    marks only unknown entries -1 and never changes a TP's +1 or an FP's -1.
    The crop offset is random but reproducible: drawn from (seed, epoch, index), so results
    do not depend on the number of loader workers. Call `set_epoch` before each epoch.
    An anchor row with `exact` true (a pseudo-label window) is cropped exactly at its t_min:
    that window is what the voting models scored. A pseudo row labels a crop only where it
    covers at least `pseudo_overlap` of the crop (a window label says nothing about the
    part of a crop outside the window).
    With `n_frames` > 0 an item also carries frame targets (n_frames, K) int8 from the
    annotation rows of `frame_events` (TP and FP boxes; see frame_labels); pseudo windows
    give none. With `soft` rows (03 --soft: recording_id, t_min, t_max, class, target;
    common/soft_labels.py) an item ends with soft targets (K,) float32: the targets of the
    soft window covering at least `pseudo_overlap` of the crop (classes it does not list:
    0), NaN where there is none or where an annotation row labels the entry.
    """

    def __init__(self, rows: pd.DataFrame, annotations: pd.DataFrame, cache, classes: list[str],
                 sample_rate: int, crop_seconds: float, durations: dict, seed: int = 0,
                 min_overlap: float = 0.5, pseudo: pd.DataFrame | None = None,
                 pseudo_overlap: float = 0.5, n_frames: int = 0,
                 frame_events: pd.DataFrame | None = None, soft: pd.DataFrame | None = None):
        self.rows = rows.reset_index(drop=True)
        index = {c: i for i, c in enumerate(classes)}
        self.n_classes = len(classes)
        # plain arrays, not DataFrame lookups: an item costs ~0.1 ms instead of ~1 ms
        self.by_rec = {rid: event_arrays(grp, index)
                       for rid, grp in annotations.groupby("recording_id")}
        self.pseudo_by_rec = {} if pseudo is None else \
            {rid: event_arrays(grp, index) for rid, grp in pseudo.groupby("recording_id")}
        self.rec = self.rows["recording_id"].to_numpy()
        self.t_min = self.rows["t_min"].to_numpy(float)
        self.t_max = self.rows["t_max"].to_numpy(float)
        self.cache, self.sr, self.crop = cache, sample_rate, crop_seconds
        self.durations, self.seed, self.epoch = durations, seed, 0
        self.min_overlap = min_overlap
        self.pseudo_min_s = pseudo_overlap * crop_seconds
        self.n_frames = n_frames
        self.frame_by_rec = {} if not n_frames else \
            {rid: event_arrays(grp, index) for rid, grp in
             (annotations if frame_events is None else frame_events).groupby("recording_id")}
        self.with_soft = soft is not None and len(soft) > 0
        self.soft_by_rec = soft_labels.by_recording(soft, index) if self.with_soft else {}
        self.exact = self.rows["exact"].fillna(False).to_numpy(bool) if "exact" in self.rows \
            else np.zeros(len(self.rows), bool)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, idx: int):
        """(wave in the cache's dtype (float16 for the kit's caches; the model's device
        converts it), labels float32[, frame targets][, soft targets])."""
        rng = np.random.default_rng([self.seed, self.epoch, idx])
        rid = self.rec[idx]
        start = float(self.t_min[idx]) if self.exact[idx] else \
            crop_start(self.t_min[idx], self.t_max[idx], self.durations[rid], self.crop, rng)
        n = int(round(self.crop * self.sr))
        wave = self.cache.crop(rid, int(round(start * self.sr)), n, stored=True)
        end = start + self.crop
        labels = event_labels(self.by_rec.get(rid), start, end, self.n_classes, self.min_overlap)
        if rid in self.pseudo_by_rec:
            labels = combine_pseudo(labels, event_labels(self.pseudo_by_rec[rid], start, end,
                                                         self.n_classes, self.pseudo_min_s))
        item = (torch.from_numpy(wave), torch.from_numpy(labels))
        if self.n_frames:
            item += (torch.from_numpy(frame_labels(self.frame_by_rec.get(rid), start, self.crop,
                                                   self.n_frames, self.n_classes)),)
        if self.with_soft:  # a human's label (or a hard pseudo label) wins over a soft one
            soft = soft_labels.crop_targets(self.soft_by_rec.get(rid), start, end,
                                            self.pseudo_min_s, self.n_classes)
            soft[labels != 0] = np.nan
            item += (torch.from_numpy(soft),)
        return item


def combine_pseudo(base: np.ndarray, pseudo: np.ndarray) -> np.ndarray:
    """Crop labels (K,) from the annotation labels `base` and the pseudo labels `pseudo`,
    both in {-1, 0, +1}:

        base          pseudo +1   pseudo -1   no pseudo
        +1 (TP)           +1          +1         +1     a human heard it: kept
        -1 (FP)            0          -1         -1     models and annotator disagree: unknown
         0 (unknown)      +1          -1          0     the pseudo label fills the gap
    """
    out = np.where(base == 0, pseudo, base)
    out[(base < 0) & (pseudo > 0)] = 0.0
    return out.astype(np.float32)


def cap_per_class(rows: pd.DataFrame, max_per_class: int, seed: int) -> pd.DataFrame:
    """Keep the rows of at most `max_per_class` recordings per class (a seeded draw, fixed
    for the run): the data-amount ablation (8 vs 28 clips per class). 0 keeps every row."""
    if max_per_class <= 0:
        return rows
    rng = np.random.default_rng(seed)
    keep = set()
    for cls, grp in rows.groupby("class", sort=True):
        ids = sorted(grp["recording_id"].unique())
        chosen = rng.choice(ids, max_per_class, replace=False) if len(ids) > max_per_class else ids
        keep |= {(cls, rid) for rid in chosen}
    return rows[[(c, r) in keep for c, r in zip(rows["class"], rows["recording_id"])]]


def clip_anchors(rows: pd.DataFrame, crop_seconds: float, max_chunks: int) -> pd.DataFrame:
    """Training anchors of whole-clip rows (label_unit "clips"): each clip cut into up to
    `max_chunks` equal chunks (about one crop long), so crops (drawn around an anchor) cover
    the whole clip instead of its middle only."""
    out = []
    for row in rows.itertuples(index=False):
        n = max(1, min(max_chunks, int(np.ceil((row.t_max - row.t_min) / crop_seconds - 1e-6))))
        edges = np.linspace(row.t_min, row.t_max, n + 1)
        out += [row._replace(t_min=a, t_max=b) for a, b in zip(edges[:-1], edges[1:])]
    return pd.DataFrame(out, columns=rows.columns)
