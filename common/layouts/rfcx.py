"""The RFCx layout (Rainforest Connection Species Audio Detection, Kaggle 2020-21):

    train/*.flac, test/*.flac     one file per recording
    train_tp.csv, train_fp.csv    recording_id, species_id, songtype_id, t_min, f_min, t_max, f_max
    sample_submission.csv         recording_id, s0..s23 (the class order)
    test_truth.csv (optional)     recording_id, s0..: complete 0/1 test labels (the demo, nips4b)
    test_events.csv (optional)    recording_id, class, t_min, t_max: every call of the test set

TP rows become +1 rows of the annotation table, FP rows -1 rows; unannotated time is unknown.
A row's class is its species (s3), or with `classes=species_songtype` its (species, songtype)
pair: a species seen in one song type in the TP/FP tables keeps its name, one seen in
several is split (s16_t1, s16_t4), and classes.json maps each class to its species (the
submission column, common/species.py).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from common import tables
from common.audio import AUDIO_EXTENSIONS
from common.cli import ConfigError
from common.layouts.base import Inputs, numbers, read_table

NAME = "rfcx"
RFCX_COLUMNS = ["recording_id", "species_id", "songtype_id", "t_min", "f_min", "t_max", "f_max"]
EVENT_COLUMNS = ["recording_id", "class", "t_min", "t_max"]
CLASS_MODES = ("species", "species_songtype")  # 01's `classes`: one class per species, or per
#                                               (species, songtype) pair of the TP/FP tables


def detect(input_dir, cfg=None) -> bool:
    return (Path(input_dir) / "train_tp.csv").is_file()


def rfcx_annotations(input_dir, songtypes: bool = False) -> pd.DataFrame:
    """train_tp.csv (+1) and train_fp.csv (-1) as rows of the annotation table, class = the
    species (s3); with `songtypes` also each row's songtype_id (checked to be an integer)."""
    parts = []
    for name, label in (("train_tp.csv", 1), ("train_fp.csv", -1)):
        path = Path(input_dir) / name
        frame = read_table(path, RFCX_COLUMNS)
        times = numbers(frame, path, ["t_min", "t_max", "f_min", "f_max"])
        song = numbers(frame, path, ["songtype_id"], integer=True) if songtypes else {}
        parts.append(pd.DataFrame({
            "recording_id": frame["recording_id"].astype(str),
            "class": "s" + numbers(frame, path, ["species_id"], integer=True)["species_id"].astype(str),
            **times, "label": label, "source": name,
            "row": np.arange(len(frame)) + 2, **song}))  # the CSV line, for messages (header = 1)
    return pd.concat(parts, ignore_index=True)


def songtype_classes(ann: pd.DataFrame, species: list) -> tuple[pd.DataFrame, list, dict]:
    """(rows with their (species, songtype) class, the class list, {class: species}): per
    species in submission order, one class per song type its TP/FP rows show, named s16_t4
    where it shows several and after the species (s3) where it shows one or none. Rows of a
    species outside the submission keep the species name (01 drops and counts them)."""
    types = ann.groupby("class")["songtype_id"].unique()
    classes, species_of, name = [], {}, {}
    for sp in species:
        seen = sorted(int(t) for t in types.get(sp, []))
        several = len(seen) > 1
        for t in seen or [None]:
            cls = f"{sp}_t{t}" if several else sp
            classes.append(cls)
            species_of[cls] = sp
            name[(sp, t)] = cls
    rows = ann.assign(**{"class": [name.get((c, t), c) for c, t in
                                   zip(ann["class"], ann["songtype_id"])]})
    return rows.drop(columns="songtype_id"), classes, species_of


def rfcx_classes(input_dir, annotations: pd.DataFrame) -> list[str]:
    """Species order of the submission (s0..s23), else the numeric order of the species seen."""
    sub = Path(input_dir) / "sample_submission.csv"
    if sub.is_file():
        cols = [c for c in pd.read_csv(sub, nrows=0).columns if c != "recording_id"]
        if cols:
            return cols
    return sorted(annotations["class"].unique(), key=lambda c: int(c[1:]))


def list_audio(input_dir) -> list[tuple[str, str, str]]:
    """(recording_id, split, path) of every audio file under train/ and test/; test/ may be
    missing or empty (the run then trains and validates, and 05 writes no submission)."""
    found = []
    for split in ("train", "test"):
        folder = Path(input_dir) / split
        if not folder.is_dir():
            if split == "test":
                continue
            raise ConfigError(f"{folder} is missing: input_dir must hold train/ and test/ "
                              "(the RFCx layout)")
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() in AUDIO_EXTENSIONS:
                found.append((path.stem, split, str(path)))
    if not any(split == "test" for _, split, _ in found):
        state = "holds no audio file" if (Path(input_dir) / "test").is_dir() else "is missing"
        print(f"no test recordings: {Path(input_dir) / 'test'} {state}; the run trains and "
              "validates, 05 blends on OOF predictions and writes no submission", flush=True)
    return found


def test_truth(input_dir, classes: list, test_ids: set) -> tuple:
    """(clip truth, events) of the test recordings from test_truth.csv / test_events.csv
    when INPUT_DIR has them, else None for each; `classes`: the truth's columns (species)."""
    truth = events = None
    path = Path(input_dir) / "test_truth.csv"
    if path.is_file():
        truth = read_table(path, ["recording_id", *classes])
        truth["recording_id"] = truth["recording_id"].astype(str)
        truth = truth.loc[truth["recording_id"].isin(test_ids), ["recording_id", *classes]]
    path = Path(input_dir) / "test_events.csv"
    if path.is_file():
        events = read_table(path, EVENT_COLUMNS)
        events["recording_id"] = events["recording_id"].astype(str)
        events = events[events["recording_id"].isin(test_ids)]
    return truth, events


def read(input_dir, cfg=None) -> Inputs:
    songtypes = getattr(cfg, "classes", "species") == "species_songtype"
    ann = rfcx_annotations(input_dir, songtypes)
    species = rfcx_classes(input_dir, ann)
    classes, species_of = species, {}
    if songtypes:
        ann, classes, species_of = songtype_classes(ann, species)

    def annotate(recordings: pd.DataFrame, report: dict, sample_rate: int) -> tuple:
        checked = tables.check_annotations(ann, recordings, classes, report, sample_rate)
        test_ids = set(recordings.loc[recordings["split"] == "test", "recording_id"])
        return (checked, *test_truth(input_dir, species, test_ids))

    return Inputs(layout=NAME, files=list_audio(input_dir), classes=classes, annotate=annotate,
                  rows_per_recording=ann["recording_id"].value_counts().to_dict(),
                  species_of=species_of)
