"""The one interface every input layout returns, and the table readers they share.

A layout module has `NAME`, `detect(input_dir) -> bool` and `read(input_dir, cfg) -> Inputs`.
`read` validates INPUT_DIR before any audio is decoded (a mistake that cannot be dropped
safely stops with a ConfigError naming the file, row and value); what needs the decoded
recordings (durations, source sample rates) happens in `Inputs.annotate`.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from common.cli import ConfigError

LABEL_UNITS = ("events", "clips")  # what a +1 row means: a timed event, or a whole clip


@dataclass
class Inputs:
    """What one layout found in INPUT_DIR.

    files      (recording_id, split, path) of every audio file to decode; split is train,
               test, soundscape (labelled, held out of training: clips only) or unlabeled
               (no annotations, no fold, no test row: 03 pseudo-labels it for self-training)
    classes    the class list, in submission order
    species_of {class: species (a submission column)} where a class is a part of a species
               (RFCx song types, common/species.py); {}: every class is its own species
    annotate   annotate(recordings, report, sample_rate) -> (annotation table of the train
               recordings, test clip truth or None, test events or None), checked against the
               decoded `recordings` (recording_id, split, duration, source_sr, ...) and the
               cache's sample rate; every dropped or clipped row is counted in `report`
    rows_per_recording  annotation rows named per recording before any check (the rows lost
               with an unreadable file)
    label_unit "events" (a row is a timed box) or "clips" (a +1 row labels a whole clip and
               the labelled soundscape segments score "soundscape F1"): a property of the
               data that the stages read from classes.json
    segments   labelled soundscape segments (clips only), else None
    notes      facts for report.json (counted skips found while reading, the test split, ...)
    submission what 05 submits: "recordings" (a row per test recording, RFCx), "birds" (a
               row per 5 s segment of each test soundscape, space-separated codes or nocall:
               BirdCLEF 2021) or "probabilities" (a row per segment, a column per class:
               BirdCLEF 2023-2025)
    test_segments  test_segments(recordings) -> row_id, recording_id, t_min, t_max of every
               5 s segment of the decoded test soundscapes (common/layouts/soundscapes.py),
               for the segment submissions; else None
    """
    layout: str
    files: list
    classes: list
    annotate: Callable
    rows_per_recording: dict = field(default_factory=dict)
    label_unit: str = "events"
    segments: pd.DataFrame | None = None
    notes: dict = field(default_factory=dict)
    submission: str = "recordings"
    test_segments: Callable | None = None
    species_of: dict = field(default_factory=dict)


def read_table(path, required: list[str], sep: str = ",") -> pd.DataFrame:
    """Read a CSV and stop with a message naming the file and any missing column."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path} does not exist; is input_dir the competition folder?")
    try:
        frame = pd.read_csv(path, sep=sep)
    except pd.errors.EmptyDataError:
        raise ConfigError(f"{path} is empty; expected columns {required}") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path} is not a readable table ({err}); save it as UTF-8 CSV/TSV") from None
    missing = [c for c in required if c not in frame.columns]
    if missing:
        close = {c: difflib.get_close_matches(c, [str(f) for f in frame.columns], n=1)
                 for c in missing}
        hint = "".join(f" '{m[0]}' looks like '{c}'." for c, m in close.items() if m)
        raise ConfigError(f"{path}: missing column(s) {missing}; found {list(frame.columns)}."
                          f"{hint} Rename the header to {required}.")
    return frame


def numbers(frame: pd.DataFrame, path, columns: list[str], integer: bool = False,
            allow_empty: bool = False) -> pd.DataFrame:
    """`columns` of `frame` as floats (ints); stops at the first cell that is not a number,
    naming the file, its line (the header is line 1) and the value. `allow_empty` keeps
    empty cells as NaN (an optional frequency)."""
    out = pd.DataFrame(index=frame.index)
    for col in columns:
        values = pd.to_numeric(frame[col], errors="coerce")
        bad = values.isna() & ~(frame[col].isna() if allow_empty else False)
        if integer:
            bad = bad | (values.round() != values) & values.notna()
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            value = frame[col].iloc[i]
            what = " is empty" if pd.isna(value) else \
                f"={value!r} is not {'an integer' if integer else 'a number'}"
            raise ConfigError(f"{path} row {i + 2}: {col}{what} ({int(bad.sum())} such rows "
                              "in that column); correct or delete those rows")
        out[col] = values.astype(int if integer else float)
    return out


def alternatives(text: str) -> list[str]:
    """'audio_file|filename' -> ['audio_file', 'filename'] (a CFG column setting)."""
    return [t.strip() for t in str(text).split("|") if t.strip()]


def find_column(columns, names: str, where, setting: str, required: bool = True) -> str | None:
    """The first of the `|`-separated `names` among `columns` (exact, else ignoring case);
    a required one that is absent stops with the columns found and the setting to change."""
    present = [str(c) for c in columns]
    for name in alternatives(names):
        if name in present:
            return name
    lower = {c.lower(): c for c in present}
    for name in alternatives(names):
        if name.lower() in lower:
            return lower[name.lower()]
    if not required:
        return None
    close = difflib.get_close_matches(alternatives(names)[0], present, n=1) if names else []
    hint = f" '{close[0]}' looks like it; " if close else " "
    raise ConfigError(f"{where}: no column {' or '.join(map(repr, alternatives(names)))}; found "
                      f"{present}.{hint}name the column with --{setting}=<column name>")
