"""The BirdCLEF 2023-2025 layout -> whole-clip annotation rows and the test soundscape segments.

    train.csv (2025) or train_metadata.csv (2023, 2024)
                          primary_label, filename ("<label>/XC123.ogg"), optional
                          secondary_labels ("['a', 'b']") and rating (0-5; 0 = unrated)
    train_audio/<label>/  the clips (ogg, 32 kHz)
    taxonomy.csv (2025) or eBird_Taxonomy_v2021.csv (2023, 2024)
                          a class column: primary_label or SPECIES_CODE
    sample_submission.csv row_id, then one probability column per class: the class list and
                          its order
    test_soundscapes/     (optional) <stem>.ogg: a row `<stem>_<end second>` per 5 s segment
                          (common/layouts/soundscapes.py); hidden until Kaggle reruns a kernel
    train_soundscapes/, unlabeled_soundscapes/
                          (optional) soundscapes without labels (2024: unlabeled_, 2025: train_)

The classes are the sample submission's columns, in their order, each checked against the
taxonomy; a primary label outside them stops 01 naming the train.csv row. Clips become
whole-clip +1 rows as in the 2021 layout (secondary labels too unless
--secondary_labels=false; one outside the class list is dropped and counted); with
--min_rating=R, clips rated below R are left out (unrated ones, rating 0 or empty, are kept).
train_soundscapes/ and unlabeled_soundscapes/ hold no labels. With --max_unlabeled=N (0, the
default: none; -1: all) N of them, a draw seeded by --seed, are cached as recordings of split
"unlabeled": no annotation row, never in a fold (so never validated, and every fold may
train on them), for 03 to pseudo-label by their 5 s segments (self-training); report.json
counts the files found and used.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from common import tables
from common.cli import ConfigError
from common.layouts import birdclef2021, soundscapes
from common.layouts.audio_index import audio_files, recording_ids
from common.layouts.base import Inputs, numbers, read_table

NAME = "birdclef2023"
METADATA = ("train.csv", "train_metadata.csv")
AUDIO = "train_audio"
SAMPLE = "sample_submission.csv"
TAXONOMY = ("taxonomy.csv", "eBird_Taxonomy_v2021.csv")
UNLABELED = ("train_soundscapes", "unlabeled_soundscapes")


def metadata_path(input_dir) -> Path | None:
    for name in METADATA:
        if (Path(input_dir) / name).is_file():
            return Path(input_dir) / name
    return None


def detect(input_dir, cfg=None) -> bool:
    return metadata_path(input_dir) is not None and (Path(input_dir) / AUDIO).is_dir()


def read_classes(input_dir) -> list[str]:
    """The sample submission's columns after row_id, in order."""
    path = Path(input_dir) / SAMPLE
    if not path.is_file():
        raise ConfigError(f"{path} does not exist: in the BirdCLEF 2023-2025 layout its columns "
                          "(row_id, then one per class) give the class list and its order; "
                          "copy the competition's sample_submission.csv into input_dir")
    header = read_table(path, ["row_id"]).columns
    classes = [str(c).strip() for c in header if c != "row_id"]
    if header[0] != "row_id" or not classes:
        raise ConfigError(f"{path}: expected row_id as the first column and one column per "
                          f"class after it; found {list(header)[:6]}")
    dup = sorted({c for c in classes if classes.count(c) > 1})
    if dup:
        raise ConfigError(f"{path}: class columns {dup[:5]} occur more than once; each class "
                          "needs one column")
    return classes


def taxonomy_path(input_dir) -> Path | None:
    """taxonomy.csv, eBird_Taxonomy_v2021.csv, else the one *taxonomy*.csv in INPUT_DIR."""
    for name in TAXONOMY:
        if (Path(input_dir) / name).is_file():
            return Path(input_dir) / name
    found = sorted(p for p in Path(input_dir).glob("*.csv") if "taxonomy" in p.name.lower())
    return found[0] if len(found) == 1 else None


def check_taxonomy(input_dir, classes: list) -> dict:
    """Every class must be a code of the taxonomy; returns facts for report.json."""
    path = taxonomy_path(input_dir)
    if path is None:
        print(f"WARNING: no taxonomy CSV ({' or '.join(TAXONOMY)}) in {input_dir}; the "
              f"{len(classes)} classes of {SAMPLE} are not checked against one", flush=True)
        return {"taxonomy": None}
    table = read_table(path, [])
    col = next((c for c in ("primary_label", "SPECIES_CODE", "species_code")
                if c in table.columns), None)
    if col is None:
        raise ConfigError(f"{path}: no class column primary_label or SPECIES_CODE; found "
                          f"{list(table.columns)[:8]}; name the taxonomy's code column so")
    codes = set(table[col].astype(str).str.strip())
    missing = [(i + 2, c) for i, c in enumerate(classes) if c not in codes]
    if missing:
        col_no, cls = missing[0]
        raise ConfigError(f"{Path(input_dir) / SAMPLE}: class column {cls!r} (column {col_no}) "
                          f"is not a {col} of {path} ({len(missing)} such columns: "
                          f"{[c for _, c in missing[:5]]}); is the sample submission of "
                          "another year's competition?")
    return {"taxonomy": path.name, "taxonomy_codes": len(codes)}


def read_metadata(input_dir, classes: list, min_rating: float) -> tuple[pd.DataFrame, dict]:
    """(recording_id, path, primary_label, secondary of every clip kept; facts)."""
    path = metadata_path(input_dir)
    meta = read_table(path, ["primary_label", "filename"])
    meta["row"] = np.arange(len(meta)) + 2
    meta["primary_label"] = meta["primary_label"].astype(str).str.strip()
    unknown = ~meta["primary_label"].isin(classes)
    if unknown.any():
        i = int(np.flatnonzero(unknown.to_numpy())[0])
        labels = sorted(set(meta.loc[unknown, "primary_label"]))
        raise ConfigError(f"{path} row {i + 2}: primary_label {meta['primary_label'].iloc[i]!r} "
                          f"is not a column of {Path(input_dir) / SAMPLE} ({int(unknown.sum())} "
                          f"rows, labels {labels[:5]}); add the class to the sample submission "
                          "or delete those rows")
    sec_col = "secondary_labels" if "secondary_labels" in meta.columns else None
    meta["secondary"] = [birdclef2021.parse_secondary(t, f"{path} row {r}") for t, r in
                         zip(meta[sec_col] if sec_col else [None] * len(meta), meta["row"])]
    facts = {"metadata": path.name, "clips_listed": len(meta)}
    if min_rating > 0 and "rating" in meta.columns:
        rating = numbers(meta, path, ["rating"], allow_empty=True)["rating"].fillna(0.0)
        low = (rating > 0) & (rating < min_rating)
        facts["clips_below_min_rating"] = int(low.sum())
        meta = meta[~low.to_numpy()]
    root = Path(input_dir) / AUDIO
    meta["path"] = [str(root / str(f)) if "/" in str(f).replace("\\", "/") else
                    str(root / lab / str(f))
                    for lab, f in zip(meta["primary_label"], meta["filename"])]
    dup = meta["path"].duplicated(keep=False)
    if dup.any():
        rows = meta.loc[dup, "row"].tolist()[:6]
        raise ConfigError(f"{path}: filenames {sorted(set(meta.loc[dup, 'filename']))[:3]} occur "
                          f"more than once (rows {rows}); each clip needs its own file")
    ids = recording_ids(meta["path"], root)
    meta["recording_id"] = [ids[Path(p)] for p in meta["path"]]
    return meta[["recording_id", "path", "primary_label", "secondary"]], facts


def unlabeled_files(input_dir, limit: int, seed: int) -> tuple[list[Path], dict]:
    """(the unlabeled soundscapes to cache, facts): every file of train_soundscapes/ and
    unlabeled_soundscapes/ with limit -1, none with 0, else a seeded draw of `limit`
    (sorted by path: the same files for the same folder and seed)."""
    found = {name: audio_files(Path(input_dir) / name) for name in UNLABELED
             if (Path(input_dir) / name).is_dir()}
    paths = [p for name in found for p in found[name]]
    if limit >= 0 and len(paths) > limit:
        chosen = np.random.default_rng(seed).choice(len(paths), limit, replace=False)
        paths = [paths[i] for i in sorted(chosen)]
    return paths, {**{f"{k}_found": len(v) for k, v in found.items()},
                   "unlabeled_used": len(paths)}


def read(input_dir, cfg) -> Inputs:
    """The clips (train), the test soundscapes (test, when present) and, with max_unlabeled,
    unlabeled soundscapes (unlabeled: no annotations, no fold)."""
    classes = read_classes(input_dir)
    notes = check_taxonomy(input_dir, classes)
    meta, facts = read_metadata(input_dir, classes, float(getattr(cfg, "min_rating", 0.0)))
    tests = soundscapes.files(input_dir)
    soundscapes.check_lengths(tests)
    clash = sorted({p.stem for p in tests} & set(meta["recording_id"]))
    if clash:
        raise ConfigError(f"{Path(input_dir) / soundscapes.FOLDER}: soundscapes {clash[:3]} have "
                          "the names of training clips; rename them")
    files = [(rid, "train", p) for rid, p in zip(meta["recording_id"], meta["path"])]
    files += [(p.stem, "test", str(p)) for p in tests]
    unlabeled, found = unlabeled_files(input_dir, int(getattr(cfg, "max_unlabeled", 0)),
                                       int(getattr(cfg, "seed", 0)))
    ids = recording_ids(unlabeled, input_dir)  # the stem, or the folder too where stems repeat
    clash = sorted(set(ids.values()) & {rid for rid, _, _ in files})
    if clash:
        raise ConfigError(f"unlabeled soundscapes {clash[:3]} have the names of training clips "
                          "or test soundscapes; rename them")
    files += [(ids[p], "unlabeled", str(p)) for p in unlabeled]
    notes = {**notes, **facts, "test_soundscapes": len(tests), **found}
    if not tests:
        print(f"no test soundscapes in {Path(input_dir) / soundscapes.FOLDER}: the run trains "
              "and validates, 05 blends on OOF predictions and writes no submission", flush=True)
    empty = pd.DataFrame(columns=["row_id", "recording_id", "t_min", "t_max", "birds"])

    def annotate(recordings: pd.DataFrame, report: dict, sample_rate: int) -> tuple:
        ok = recordings[recordings["split"] == "train"]
        durations = dict(zip(ok["recording_id"], ok["duration"]))
        ann = birdclef2021.annotations(meta, empty, durations, classes, sample_rate,
                                       cfg.secondary_labels)
        return tables.check_annotations(ann, recordings, classes, report), None, None

    return Inputs(layout=NAME, files=files, classes=classes, annotate=annotate,
                  rows_per_recording={rid: 1 + len(s) for rid, s in
                                      zip(meta["recording_id"], meta["secondary"])},
                  label_unit="clips", notes=notes, submission="probabilities",
                  test_segments=(lambda recordings: soundscapes.segment_table(recordings, str))
                  if tests else None)
