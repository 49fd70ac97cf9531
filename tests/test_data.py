"""common/data.py and the table readers of common/layouts: tables, RFCx annotations, folds,
crop starts, window labels, CropDataset."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from common.cli import ConfigError
from common.data import (ANNOTATION_COLUMNS, CropDataset, combine_pseudo, crop_start,
                         event_arrays, frame_labels, make_folds, split_fold, window_labels)
from common.layouts.base import read_table
from common.layouts.rfcx import RFCX_COLUMNS, rfcx_annotations, rfcx_classes
from tests.conftest import ArrayCache

CLASSES = ["s0", "s1", "s2", "s3"]
INDEX = {c: i for i, c in enumerate(CLASSES)}


def events(rows):
    return pd.DataFrame(rows, columns=["recording_id", "class", "t_min", "t_max", "label"])


# ----------------------------------------------------------------------------- tables
def test_read_table_missing_column_names_column_and_file(tmp_path):
    path = tmp_path / "train_tp.csv"
    pd.DataFrame({"recording_id": ["a"], "species_id": [1]}).to_csv(path, index=False)
    with pytest.raises(ConfigError) as info:
        read_table(path, ["recording_id", "species_id", "t_min"])
    message = str(info.value)
    assert "t_min" in message and str(path) in message
    assert "species_id" not in message.split("missing column(s)")[1].split(";")[0]


def test_read_table_missing_and_empty_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        read_table(tmp_path / "nope.csv", ["a"])
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ConfigError, match="empty"):
        read_table(tmp_path / "empty.csv", ["a"])


def test_read_table_ok(tmp_path):
    path = tmp_path / "t.csv"
    pd.DataFrame({"a": [1], "b": [2], "c": [3]}).to_csv(path, index=False)
    assert read_table(path, ["a", "c"]).shape == (1, 3)


def write_rfcx(folder):
    tp = pd.DataFrame([["rec1", 3, 1, 1.0, 500.0, 2.5, 2000.0],
                       ["rec2", 12, 1, 10.0, 600.0, 12.0, 3000.0]], columns=RFCX_COLUMNS)
    fp = pd.DataFrame([["rec1", 7, 1, 4.0, 100.0, 5.0, 900.0],
                       ["rec3", 3, 4, 30.0, 800.0, 31.0, 1200.0]], columns=RFCX_COLUMNS)
    tp.to_csv(folder / "train_tp.csv", index=False)
    fp.to_csv(folder / "train_fp.csv", index=False)


def test_rfcx_annotations(tmp_path):
    write_rfcx(tmp_path)
    ann = rfcx_annotations(tmp_path)
    assert set(ANNOTATION_COLUMNS) <= set(ann.columns)
    assert len(ann) == 4
    assert ann["label"].tolist() == [1, 1, -1, -1]
    assert ann["class"].tolist() == ["s3", "s12", "s7", "s3"]
    assert ann["recording_id"].tolist() == ["rec1", "rec2", "rec1", "rec3"]
    row = ann.iloc[0]
    assert (row["t_min"], row["t_max"], row["f_min"], row["f_max"]) == (1.0, 2.5, 500.0, 2000.0)
    # numeric class order when there is no sample_submission.csv: s3 < s7 < s12
    assert rfcx_classes(tmp_path, ann) == ["s3", "s7", "s12"]


def test_rfcx_classes_follow_sample_submission(tmp_path):
    write_rfcx(tmp_path)
    cols = ["recording_id"] + [f"s{k}" for k in range(24)]
    pd.DataFrame(columns=cols).to_csv(tmp_path / "sample_submission.csv", index=False)
    assert rfcx_classes(tmp_path, rfcx_annotations(tmp_path)) == cols[1:]


def test_rfcx_annotations_missing_column(tmp_path):
    write_rfcx(tmp_path)
    bad = pd.read_csv(tmp_path / "train_fp.csv").drop(columns=["t_max"])
    bad.to_csv(tmp_path / "train_fp.csv", index=False)
    with pytest.raises(ConfigError, match="train_fp.csv.*t_max"):
        rfcx_annotations(tmp_path)


# ----------------------------------------------------------------------------- folds
def synthetic_annotations(n_species=6, per_species=10, n_fp_only=12, seed=0):
    rng = np.random.default_rng(seed)
    rows, rec = [], 0
    for k in range(n_species):
        for _ in range(per_species):
            rid = f"r{rec:03d}"
            rows.append((rid, f"s{k}", 1.0, 2.0, 1))
            if rng.random() < 0.3:  # a second TP species on some recordings
                rows.append((rid, f"s{(k + 1) % n_species}", 5.0, 6.0, 1))
            if rng.random() < 0.5:  # FP rows on TP recordings too
                rows.append((rid, f"s{(k + 2) % n_species}", 8.0, 9.0, -1))
            rec += 1
    for j in range(n_fp_only):
        rows.append((f"fp{j:03d}", f"s{j % n_species}", 3.0, 4.0, -1))
        rows.append((f"fp{j:03d}", f"s{(j + 3) % n_species}", 13.0, 14.0, -1))
    frame = pd.DataFrame(rows, columns=["recording_id", "class", "t_min", "t_max", "label"])
    return frame, [f"s{k}" for k in range(n_species)]


def test_make_folds_by_recording_stratified():
    ann, classes = synthetic_annotations()
    folds = make_folds(ann, classes, n_folds=5, seed=0)
    assert folds["recording_id"].is_unique  # no recording in two folds
    assert set(folds["recording_id"]) == set(ann["recording_id"])
    tp_ids = set(ann.loc[ann["label"] > 0, "recording_id"])
    tp_rows = folds[folds["recording_id"].isin(tp_ids)]
    assert len(tp_rows) == len(tp_ids) == 60
    assert set(tp_rows["fold"]) == set(range(5))
    assert tp_rows["has_tp"].all()
    fp_rows = folds[~folds["recording_id"].isin(tp_ids)]
    assert len(fp_rows) == 12
    assert not fp_rows["has_tp"].any()
    assert set(fp_rows["fold"]) == set(range(5))  # held out by one fold each, 12 over 5 folds
    assert fp_rows["fold"].value_counts().max() <= 3
    # stratification: every species is validated in every fold, about evenly
    fold_of = dict(zip(folds["recording_id"], folds["fold"]))
    tp = ann[ann["label"] > 0].drop_duplicates(["recording_id", "class"])
    counts = pd.crosstab(tp["class"], tp["recording_id"].map(fold_of))
    assert counts.shape == (6, 5)
    assert (counts.min(axis=1) >= 1).all()
    assert ((counts.max(axis=1) - counts.min(axis=1)) <= 2).all()
    sizes = tp_rows["fold"].value_counts()
    assert sizes.max() - sizes.min() <= 2


def test_make_folds_is_deterministic_for_a_seed():
    ann, classes = synthetic_annotations()
    a = make_folds(ann, classes, 5, seed=3)
    b = make_folds(ann, classes, 5, seed=3)
    pd.testing.assert_frame_equal(a, b)


def test_split_fold_disjoint_and_covering():
    ann, classes = synthetic_annotations()
    folds = make_folds(ann, classes, n_folds=4, seed=1)
    fp_only = set(folds.loc[~folds["has_tp"], "recording_id"])
    every = set(folds["recording_id"])
    vals, held = [], []
    for k in range(4):
        train, val = split_fold(folds, k)
        assert train.isdisjoint(val)
        assert val and val.isdisjoint(fp_only)  # FP-only recordings are never validated
        out = every - train - val  # the fold's FP-only recordings: neither trained nor validated
        assert out and out <= fp_only
        vals.append(val)
        held.append(out)
    assert set().union(*vals) == every - fp_only
    assert sum(len(v) for v in vals) == len(every - fp_only)  # each validated once
    assert set().union(*held) == fp_only and sum(map(len, held)) == len(fp_only)  # each held out once


def test_split_fold_keeps_unfolded_fp_only_recordings_in_training():
    """A preprocessing run from before FP-only recordings had folds (fold -1) still works:
    they train in every fold."""
    ann, classes = synthetic_annotations()
    folds = make_folds(ann, classes, n_folds=4, seed=1)
    folds.loc[~folds["has_tp"], "fold"] = -1
    fp_only = set(folds.loc[~folds["has_tp"], "recording_id"])
    for k in range(4):
        train, val = split_fold(folds, k)
        assert fp_only <= train and train | val == set(folds["recording_id"])


def test_make_folds_deals_fewer_fp_only_recordings_than_folds():
    ann, classes = synthetic_annotations(n_fp_only=2)
    folds = make_folds(ann, classes, n_folds=5, seed=0)
    fp = folds[~folds["has_tp"]]
    assert len(fp) == 2 and fp["fold"].between(0, 4).all() and fp["fold"].is_unique


def test_make_folds_of_a_single_class():
    ann = events([(f"r{i}", "s0", 0.0, 1.0, 1) for i in range(6)])
    folds = make_folds(ann, ["s0"], 3, seed=0)
    assert sorted(folds["fold"].value_counts().tolist()) == [2, 2, 2]


def test_make_folds_too_few_recordings():
    ann, classes = synthetic_annotations(n_species=2, per_species=1, n_fp_only=1)
    with pytest.raises(ConfigError, match="n_folds"):
        make_folds(ann, classes, n_folds=5, seed=0)


# ----------------------------------------------------------------------------- crop starts
def test_crop_start_bounds_and_event_centre_inside():
    rng = np.random.default_rng(0)
    duration, crop = 60.0, 10.0
    for _ in range(3000):
        t_min = rng.uniform(0, duration - 0.3)
        t_max = min(duration, t_min + rng.uniform(0.27, 8.0))
        start = crop_start(t_min, t_max, duration, crop, rng)
        assert 0.0 <= start <= duration - crop
        centre = 0.5 * (t_min + t_max)
        assert start <= centre <= start + crop


def test_crop_start_uses_the_recipe_window():
    rng = np.random.default_rng(1)
    starts = np.array([crop_start(30.0, 32.0, 60.0, 10.0, rng) for _ in range(2000)])
    # centre 31: start uniform in [26, 31)
    assert starts.min() >= 26.0 and starts.max() < 31.0
    assert starts.min() < 26.1 and starts.max() > 30.9
    assert abs(starts.mean() - 28.5) < 0.15


def test_crop_start_short_recording_and_edges():
    rng = np.random.default_rng(2)
    for _ in range(200):
        assert crop_start(1.0, 2.0, 6.0, 10.0, rng) == 0.0  # shorter than the crop
        assert 0.0 <= crop_start(0.0, 0.5, 60.0, 10.0, rng) < 0.25  # [-4.75, 0.25) clamped
        assert crop_start(59.0, 60.0, 60.0, 10.0, rng) == 50.0  # [54.5, 59.5) clamped to 50
        assert crop_start(0.0, 10.0, 10.0, 10.0, rng) == 0.0  # exactly one crop long


# ----------------------------------------------------------------------------- window labels
def test_window_labels_tp_fp_unknown():
    ev = events([("r", "s0", 1.0, 2.0, 1), ("r", "s1", 3.0, 4.0, -1), ("r", "s3", 20.0, 21.0, 1)])
    assert window_labels(ev, 0.0, 10.0, INDEX).tolist() == [1.0, -1.0, 0.0, 0.0]
    assert window_labels(ev, 15.0, 25.0, INDEX).tolist() == [0.0, 0.0, 0.0, 1.0]
    assert window_labels(None, 0.0, 10.0, INDEX).tolist() == [0.0] * 4
    assert window_labels(ev.iloc[:0], 0.0, 10.0, INDEX).tolist() == [0.0] * 4


@pytest.mark.parametrize("order", [1, -1])
def test_window_labels_tp_wins_over_fp_in_either_order(order):
    ev = events([("r", "s2", 1.0, 2.0, 1), ("r", "s2", 1.5, 3.0, -1)][::order])
    assert window_labels(ev, 0.0, 10.0, INDEX).tolist() == [0.0, 0.0, 1.0, 0.0]


def test_window_labels_fp_outside_does_not_cancel_tp_inside():
    ev = events([("r", "s2", 1.0, 2.0, 1), ("r", "s2", 30.0, 31.0, -1), ("r", "s1", 30.0, 31.0, 1),
                 ("r", "s1", 5.0, 6.0, -1)])
    assert window_labels(ev, 0.0, 10.0, INDEX).tolist() == [0.0, -1.0, 1.0, 0.0]


@pytest.mark.parametrize("t_min,t_max,expected", [
    (4.8, 6.0, 0.0),   # 0.2 s inside, needs min(0.5, 0.6) = 0.5 s
    (4.5, 6.0, 1.0),   # 0.5 s inside: enough
    (4.6, 6.0, 0.0),   # 0.4 s inside
    (4.7, 5.1, 1.0),   # short event (0.4 s): 0.3 s inside >= half its length 0.2
    (4.9, 5.3, 0.0),   # short event: 0.1 s inside < 0.2
    (5.0, 6.0, 0.0),   # touches the end only
    (-1.0, 0.4, 0.0),  # 0.4 s inside at the start, needs 0.5
    (-1.0, 0.6, 1.0),
    (1.0, 2.0, 1.0),   # wholly inside
])
def test_window_labels_min_overlap_rule(t_min, t_max, expected):
    ev = events([("r", "s0", t_min, t_max, 1)])
    assert window_labels(ev, 0.0, 5.0, INDEX, min_overlap=0.5)[0] == expected
    ev_fp = events([("r", "s0", t_min, t_max, -1)])
    assert window_labels(ev_fp, 0.0, 5.0, INDEX, min_overlap=0.5)[0] == -expected


def test_window_labels_min_overlap_setting():
    ev = events([("r", "s0", 4.0, 8.0, 1)])  # 1 s inside [0, 5)
    assert window_labels(ev, 0.0, 5.0, INDEX, min_overlap=0.5)[0] == 1.0
    assert window_labels(ev, 0.0, 5.0, INDEX, min_overlap=1.5)[0] == 0.0


# ----------------------------------------------------------------------------- CropDataset


def make_dataset(seed=5):
    sr = 1000
    rng = np.random.default_rng(0)
    cache = ArrayCache({"a": rng.normal(size=20 * sr).astype(np.float32),
                        "b": rng.normal(size=3 * sr).astype(np.float32)})
    ann = events([("a", "s0", 8.0, 9.0, 1), ("a", "s1", 8.2, 8.9, -1), ("a", "s2", 19.0, 19.5, 1),
                  ("b", "s3", 1.0, 2.0, 1)])
    rows = ann[ann["label"] > 0]
    ds = CropDataset(rows, ann, cache, CLASSES, sr, crop_seconds=4.0,
                     durations={"a": 20.0, "b": 3.0}, seed=seed)
    return ds, cache, ann


def test_crop_dataset_items():
    ds, cache, _ = make_dataset()
    assert len(ds) == 3
    wave, labels = ds[0]
    assert isinstance(wave, torch.Tensor) and wave.shape == (4000,) and wave.dtype == torch.float32
    assert labels.shape == (4,)
    assert labels.tolist() == [1.0, -1.0, 0.0, 0.0]  # s2 at 19 s is never in a crop around 8.5 s
    wave_b, labels_b = ds[2]  # 3 s recording, 4 s crop: zero-padded tail
    assert wave_b.shape == (4000,)
    assert torch.all(wave_b[3000:] == 0)
    np.testing.assert_array_equal(wave_b[:3000].numpy(), cache.waves["b"])
    assert labels_b.tolist() == [0.0, 0.0, 0.0, 1.0]


def test_crop_dataset_wave_matches_its_crop_start():
    ds, cache, ann = make_dataset()
    ds.set_epoch(3)
    # row 0: event 8-9 s, start drawn in [6.5, 8.5); row 1: event at 19 s, clamped to 16 s
    for idx, (t0, t1, lo, hi) in enumerate([(8.0, 9.0, 6.5, 8.5), (19.0, 19.5, 16.0, 16.0)]):
        wave, _ = ds[idx]
        start = crop_start(t0, t1, 20.0, 4.0, np.random.default_rng([5, 3, idx]))
        assert lo <= start <= hi
        expected = cache.crop("a", int(round(start * 1000)), 4000)
        np.testing.assert_array_equal(wave.numpy(), expected)


def test_crop_dataset_deterministic_per_seed_epoch_index():
    ds, _, _ = make_dataset()
    again, _, _ = make_dataset()
    ds.set_epoch(2)
    again.set_epoch(2)
    for idx in range(len(ds)):
        assert torch.equal(ds[idx][0], again[idx][0])
        assert torch.equal(ds[idx][0], ds[idx][0])
        assert torch.equal(ds[idx][1], again[idx][1])


def test_crop_dataset_changes_across_epochs_and_seeds():
    ds, _, _ = make_dataset()
    ds.set_epoch(0)
    first = ds[0][0]
    ds.set_epoch(1)
    second = ds[0][0]
    assert not torch.equal(first, second)
    other, _, _ = make_dataset(seed=6)
    assert not torch.equal(other[0][0], first)


# ----------------------------------------------------------------------------- pseudo labels
def test_pseudo_labels_never_overrule_a_tp_and_negatives_fill_only_unknowns():
    """A hand-made crop: 10 s recording, anchor row 1-2 s, 5 s crop at [0, 5) (clamped)."""
    base = events([("r", "s0", 1.0, 2.0, 1),    # TP
                   ("r", "s1", 1.0, 2.0, -1),   # FP
                   ("r", "s3", 2.0, 3.0, -1)])  # FP
    pseudo = events([("r", "s0", 0.0, 5.0, -1),   # pseudo negative over the TP: stays +1
                     ("r", "s1", 0.0, 5.0, 1),    # pseudo positive over the FP: unknown
                     ("r", "s2", 0.0, 5.0, -1),   # pseudo negative over unknown: -1
                     ("r", "s3", 0.0, 5.0, -1)])  # pseudo negative over an FP: stays -1
    cache = ArrayCache({"r": np.zeros(10 * 100, dtype=np.float32)})
    rows = pd.DataFrame({"recording_id": ["r"], "t_min": [1.0], "t_max": [2.0]})
    plain = CropDataset(rows, base, cache, CLASSES, 100, 5.0, {"r": 10.0})
    with_pseudo = CropDataset(rows, base, cache, CLASSES, 100, 5.0, {"r": 10.0}, pseudo=pseudo)
    assert plain[0][1].tolist() == [1.0, -1.0, 0.0, -1.0]
    assert with_pseudo[0][1].tolist() == [1.0, 0.0, -1.0, -1.0]
    # the other cells of the rule: a pseudo positive over a TP or over unknown gives +1
    more = events([("r", "s0", 0.0, 5.0, 1), ("r", "s2", 0.0, 5.0, 1)])
    ds = CropDataset(rows, base, cache, CLASSES, 100, 5.0, {"r": 10.0}, pseudo=more)
    assert ds[0][1].tolist() == [1.0, -1.0, 1.0, -1.0]
    assert ds[0][1].dtype == torch.float32


def test_combine_pseudo_table():
    base = np.array([1, 1, 1, -1, -1, -1, 0, 0, 0], dtype=np.float32)
    pseudo = np.array([1, -1, 0, 1, -1, 0, 1, -1, 0], dtype=np.float32)
    assert combine_pseudo(base, pseudo).tolist() == [1, 1, 1, 0, -1, -1, 1, -1, 0]


# ----------------------------------------------------------------------------- frame targets
def test_frame_labels_tp_fp_unknown_by_frame_centre():
    """A 4 s crop from 6 s on, 8 frames of 0.5 s (centres 6.25, 6.75, ..., 9.75): a TP box of
    s0 over 7.0-8.0 marks the frames centred at 7.25 and 7.75; an FP box of s1 over 6.0-7.0
    marks 6.25 and 6.75 with -1; an FP of s0 over 7.5-9.0 loses to the TP where they meet;
    every other entry is 0 (no frame-level gradient)."""
    ann = events([("a", "s0", 7.0, 8.0, 1), ("a", "s1", 6.0, 7.0, -1), ("a", "s0", 7.5, 9.0, -1),
                  ("a", "s3", 20.0, 21.0, 1)])
    out = frame_labels(event_arrays(ann, INDEX), 6.0, 4.0, 8, 4)
    assert out.shape == (8, 4) and out.dtype == np.int8
    assert out[:, 0].tolist() == [0, 0, 1, 1, -1, -1, 0, 0]
    assert out[:, 1].tolist() == [-1, -1, 0, 0, 0, 0, 0, 0]
    assert not out[:, 2:].any()
    assert not frame_labels(None, 0.0, 4.0, 8, 4).any()


def test_crop_dataset_frame_targets_follow_the_crop():
    sr = 1000
    cache = ArrayCache({"a": np.zeros(20 * sr, np.float32)})
    ann = events([("a", "s0", 8.0, 9.0, 1), ("a", "s1", 8.0, 12.0, -1)])
    ds = CropDataset(ann[ann["label"] > 0], ann[ann["label"] > 0], cache, CLASSES, sr, 4.0,
                     {"a": 20.0}, seed=1, n_frames=16, frame_events=ann)
    wave, labels, frames = ds[0]
    assert frames.shape == (16, 4) and labels.tolist() == [1.0, 0.0, 0.0, 0.0]
    # the TP's 1 s is 4 frames of 0.25 s wherever the crop starts, all inside the crop
    assert int((frames[:, 0] == 1).sum()) == 4 and not (frames[:, 0] == -1).any()
    assert (frames[:, 1] == -1).sum() >= 4 and not (frames[:, 1] == 1).any()
    assert len(ds[0]) == 3 and len(CropDataset(ann, ann, cache, CLASSES, sr, 4.0, {"a": 20.0})[0]) == 2
