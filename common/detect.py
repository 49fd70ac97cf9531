"""Sound events from framewise scores: an event table and Raven selection tables.

An event is a run of consecutive frames whose probability is >= `threshold` for one
species, kept when it lasts >= `min_duration` seconds. Frame j of a track sits at
j * hop_seconds; a run of frames a..b (inclusive) spans [a * hop, (b + 1) * hop) seconds,
clipped to the recording's duration.

Raven (Cornell's sound analysis tool) opens one tab-separated selection table per sound
file; naming it `<recording>.Table.1.selections.txt` lets Raven pair it with the file.

Events are per model class and carry the class's species (a submission column,
common/species.py); the two differ only for RFCx song-type classes (class s16_t4, species s16).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from common.runs import atomic_write

EVENT_COLUMNS = ["recording_id", "species", "class", "t_start", "t_end", "peak_score"]
RAVEN_COLUMNS = ["Selection", "View", "Channel", "Begin Time (s)", "End Time (s)",
                 "Low Freq (Hz)", "High Freq (Hz)", "Species", "Class", "Score"]
RAVEN_SUFFIX = ".Table.1.selections.txt"


def runs_above(mask: np.ndarray) -> list[tuple[int, int]]:
    """[(first, last + 1)] of every run of True in a 1-D boolean array."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)))


def extract_events(track: np.ndarray, classes: list, hop_seconds: float, threshold: float = 0.5,
                   min_duration: float = 0.0, duration: float | None = None,
                   species: list | None = None) -> pd.DataFrame:
    """(T, K) frame probabilities -> events (species, class, t_start, t_end, peak_score),
    sorted by start time then class; `species` of each class (default: the class itself)."""
    track = np.asarray(track)
    rows = []
    for k, (name, cls) in enumerate(zip(species or classes, classes)):
        for a, b in runs_above(track[:, k] >= threshold):
            start, end = a * hop_seconds, b * hop_seconds
            if duration is not None:
                end = min(end, duration)
            if end - start + 1e-9 >= min_duration:
                rows.append((name, cls, round(start, 4), round(end, 4), float(track[a:b, k].max())))
    events = pd.DataFrame(rows, columns=EVENT_COLUMNS[1:])
    return events.sort_values(["t_start", "class"], kind="stable").reset_index(drop=True)


def detection_table(tracks: dict, classes: list, hop_seconds: float, threshold: float,
                    min_duration: float, durations: dict | None = None,
                    species: list | None = None) -> pd.DataFrame:
    """Events of every recording: {recording_id: (T, K) track} -> one table (EVENT_COLUMNS)."""
    parts = []
    for rid, track in tracks.items():
        events = extract_events(track, classes, hop_seconds, threshold, min_duration,
                                (durations or {}).get(rid), species)
        events.insert(0, "recording_id", rid)
        parts.append(events)
    if not parts:
        return pd.DataFrame(columns=EVENT_COLUMNS)
    return pd.concat(parts, ignore_index=True)


def species_bands(annotations: pd.DataFrame, classes: list, sample_rate: int) -> dict:
    """{class: (low Hz, high Hz)}: the band of its TP boxes, else 0 .. sample_rate / 2."""
    nyquist = sample_rate / 2.0
    bands = {c: (0.0, nyquist) for c in classes}
    tp = annotations[annotations["label"] > 0]
    if {"f_min", "f_max"} <= set(tp.columns):
        for species, grp in tp.groupby("class"):
            low, high = grp["f_min"].min(), grp["f_max"].max()
            if species in bands and pd.notna(low) and pd.notna(high) and high > low:
                bands[species] = (float(low), float(min(high, nyquist)))
    return bands


def raven_frame(events: pd.DataFrame, bands: dict) -> pd.DataFrame:
    """Events of one recording -> a Raven selection table (RAVEN_COLUMNS)."""
    events = events.reset_index(drop=True)
    band = [bands.get(c, (0.0, 0.0)) for c in events["class"]]
    return pd.DataFrame({
        "Selection": np.arange(1, len(events) + 1),
        "View": "Spectrogram 1",
        "Channel": 1,
        "Begin Time (s)": events["t_start"].astype(float),
        "End Time (s)": events["t_end"].astype(float),
        "Low Freq (Hz)": [round(b[0], 1) for b in band],
        "High Freq (Hz)": [round(b[1], 1) for b in band],
        "Species": events["species"].astype(str),
        "Class": events["class"].astype(str),
        "Score": events["peak_score"].astype(float).round(4),
    }, columns=RAVEN_COLUMNS)


def write_raven(path, events: pd.DataFrame, bands: dict) -> Path:
    """One recording's events as a tab-separated Raven selection table (written atomically)."""
    table = raven_frame(events, bands)
    return atomic_write(path, lambda f: table.to_csv(f, sep="\t", index=False, lineterminator="\n"))


def write_raven_tables(folder, detections: pd.DataFrame, recording_ids: list,
                       bands: dict) -> list[Path]:
    """`<folder>/<rid>.Table.1.selections.txt` for every recording (header only if no event)."""
    folder = Path(folder)
    groups = dict(list(detections.groupby("recording_id", sort=False)))
    empty = pd.DataFrame(columns=EVENT_COLUMNS)
    return [write_raven(folder / f"{rid}{RAVEN_SUFFIX}", groups.get(rid, empty), bands)
            for rid in recording_ids]


def read_raven(path) -> pd.DataFrame:
    """A Raven selection table -> the event table (EVENT_COLUMNS plus f_low, f_high);
    recording_id comes from the file name (`<rid>.Table.1.selections.txt`); a table without
    a Class column (written before it, or by hand) has its species as the class."""
    path = Path(path)
    table = pd.read_csv(path, sep="\t", dtype={"Species": str, "Class": str})
    missing = [c for c in RAVEN_COLUMNS if c not in table.columns and c != "Class"]
    if missing:
        raise ValueError(f"{path} is not a Raven selection table: columns {missing} missing")
    name = path.name
    rid = name[:-len(RAVEN_SUFFIX)] if name.endswith(RAVEN_SUFFIX) else path.stem
    return pd.DataFrame({
        "recording_id": rid,
        "species": table["Species"].astype(str),
        "class": table["Class" if "Class" in table.columns else "Species"].astype(str),
        "t_start": table["Begin Time (s)"].astype(float),
        "t_end": table["End Time (s)"].astype(float),
        "peak_score": table["Score"].astype(float),
        "f_low": table["Low Freq (Hz)"].astype(float),
        "f_high": table["High Freq (Hz)"].astype(float),
    })
