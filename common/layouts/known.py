"""What is known where, for box annotations (the box-table and Raven layouts).

    a box                 its class is present (+1) in its time span (and band)
    fully_annotated=true  every call of every class is boxed, so inside the known time of an
                          annotated recording a class is absent (-1) wherever it has no box;
                          false (sparse labels, as RFCx's): unboxed time is unknown (0)
    known time            the whole recording, or, when annotated_windows.csv exists, only its
                          windows (outside them nothing is known, not even absence)
    background            recordings in the background folder or list hold none of the
                          classes: -1 for every class over the whole recording; a box whose
                          label is in `background_labels` (noise, background, other) is -1 for
                          every class over its span
    test split            recordings under a `test_folder` folder or marked "test" in the
                          `test_column`; else a seeded, class-stratified fraction of the
                          annotated and background recordings (`test_fraction`). Their boxes
                          are the test truth (clip labels and events), never training rows.

`build` turns what a reader found (`BoxData`) into the layout's `Inputs`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from common import tables
from common.cli import ConfigError
from common.layouts.audio_index import AudioIndex, recording_ids
from common.layouts.base import Inputs, find_column, numbers, read_table

MIN_GAP_S = 1e-3   # shorter stretches between boxes make no -1 row
MAX_LISTED = tables.MAX_LISTED


@dataclass
class BoxData:
    """What a box reader found: boxes (path, class, t_min, t_max, f_min, f_max (NaN = not
    given), source, row, split_mark), the files whose annotation was read (a box or an empty
    Raven table), rows it could not use (counted skips) and the audio index."""
    boxes: pd.DataFrame
    annotated: set
    index: AudioIndex
    skipped: list = field(default_factory=list)  # {key, problem, file, row, value}


def skip(skipped: list, key: str, problem: str, file, row, value) -> None:
    skipped.append({"key": key, "problem": problem, "file": str(file),
                    "row": None if row is None else int(row), "value": value})


# ----------------------------------------------------------------------------- reading
def background_files(input_dir, cfg, index: AudioIndex) -> set:
    """The recordings named by `cfg.background`: a folder below input_dir, or a text/CSV list
    of files (one per line, or the first column). The default folder may be absent."""
    setting = str(getattr(cfg, "background", "") or "")
    if not setting:
        return set()
    path = Path(setting) if Path(setting).is_absolute() else Path(input_dir) / setting
    if path.is_dir():
        return {p for p in index.paths if path.resolve() in p.resolve().parents}
    if path.is_file():
        lines = [line.split(",")[0].strip() for line in path.read_text().splitlines()]
        found = set()
        for i, line in enumerate(lines):
            if not line or (i == 0 and line.lower() in ("file", "filename", "path", "audio_file")):
                continue
            hit, why = index.resolve(line, path.parent)
            if hit is None:
                raise ConfigError(f"{path} line {i + 1}: {why}; fix the background list")
            found.add(hit)
        return found
    if setting != "background":
        raise ConfigError(f"background={setting!r}: {path} is neither a folder nor a list of "
                          "files; give the folder of recordings that hold none of the classes")
    return set()


def read_windows(input_dir, cfg, index: AudioIndex, skipped: list) -> pd.DataFrame | None:
    """annotated_windows.csv (file, start, end; column names as the box table's) or None."""
    name = str(getattr(cfg, "annotated_windows", "") or "")
    path = Path(name) if Path(name).is_absolute() else Path(input_dir) / name
    if not name or not path.is_file():
        if name and name != "annotated_windows.csv":
            raise ConfigError(f"annotated_windows={name!r}: {path} does not exist")
        return None
    frame = read_table(path, [])
    cols = [find_column(frame.columns, getattr(cfg, s), path, s)
            for s in ("file_column", "start_column", "end_column")]
    times = numbers(frame, path, cols[1:])
    rows = []
    for i, (name_, t0, t1) in enumerate(zip(frame[cols[0]], times[cols[1]], times[cols[2]])):
        hit, why = index.resolve(name_, path.parent)
        if hit is None:
            skip(skipped, "window_file_missing", f"annotated window of a missing file: {why}",
                 path.name, i + 2, str(name_))
        elif t1 <= t0:
            skip(skipped, "window_end_not_after_start", "window end <= start", path.name, i + 2,
                 f"{t0}..{t1}")
        else:
            rows.append((hit, float(t0), float(t1)))
    return pd.DataFrame(rows, columns=["path", "t_min", "t_max"])


# ----------------------------------------------------------------------------- split
def split_marks(data: BoxData, cfg, rid_of: dict) -> dict:
    """{path: "test" | "train"} from the test folder and the test column; a recording marked
    both ways stops with the rows at fault."""
    marks = {}
    folder = str(getattr(cfg, "test_folder", "") or "").lower()
    if folder:
        for path in rid_of:
            try:
                parts = [p.lower() for p in path.relative_to(data.index.root).parts[:-1]]
            except ValueError:
                parts = []
            if folder in parts:
                marks[path] = "test"
    marked = data.boxes[data.boxes["split_mark"].notna()]
    for path, grp in marked.groupby("path"):
        values = set(grp["split_mark"].astype(str).str.strip().str.lower())
        if len(values) > 1:
            first = grp.iloc[0]
            raise ConfigError(f"{first['source']}: the boxes of {Path(path).name} are marked "
                              f"{sorted(values)} in the split column (rows "
                              f"{grp['row'].astype(int).tolist()[:5]}); mark a recording test "
                              "or train, not both")
        value = values.pop()
        if value == "test" or marks.get(path) != "test":
            marks[path] = "test" if value == "test" else "train"
    return marks


def held_out(candidates: dict, fraction: float, seed: int) -> set:
    """A seeded fraction of `candidates` ({id: set of classes}), stratified by class."""
    ids = sorted(candidates)
    n_test = int(round(fraction * len(ids)))
    if fraction > 0 and len(ids) >= 2:
        n_test = min(max(n_test, 1), len(ids) - 1)
    if n_test <= 0:
        return set()
    from iterstrat.ml_stratifiers import MultilabelStratifiedShuffleSplit
    labels = sorted({c for v in candidates.values() for c in v})
    y = np.array([[c in candidates[i] for c in labels] for i in ids], dtype=int)
    if y.shape[1] == 1:  # one class: iterstrat wants a multilabel matrix, so add its complement
        y = np.column_stack([y, 1 - y])
    splitter = MultilabelStratifiedShuffleSplit(n_splits=1, test_size=n_test, random_state=seed)
    _, test = next(splitter.split(np.zeros(len(ids)), y))
    chosen = [ids[i] for i in test][:n_test]
    if len(chosen) < n_test:  # classes too rare to stratify (one recording each): a seeded
        # draw, recordings whose classes all occur elsewhere first (they keep training data)
        counts = y.sum(axis=0)
        rest = [i for i in np.random.default_rng(seed).permutation(len(ids)) if ids[i] not in chosen]
        rest.sort(key=lambda i: bool((counts[y[i] > 0] < 2).any()))
        chosen += [ids[i] for i in rest[:n_test - len(chosen)]]
    return set(chosen)


# ----------------------------------------------------------------------------- known time
def merged(intervals) -> list:
    """Sorted, merged [(start, end)] of any intervals."""
    out = []
    for a, b in sorted(intervals):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def minus(region: list, cuts: list) -> list:
    """The parts of the merged `region` outside the merged `cuts`, longer than MIN_GAP_S."""
    out = []
    for a, b in region:
        start = a
        for c, d in cuts:
            if d <= start or c >= b:
                continue
            if c - start > MIN_GAP_S:
                out.append((start, c))
            start = max(start, d)
        if b - start > MIN_GAP_S:
            out.append((start, b))
    return out


def _rows(rid, classes, spans, nyquist, source) -> list:
    return [(rid, c, a, b, 0.0, nyquist, -1, source) for c in classes for a, b in spans]


def known_rows(pos: pd.DataFrame, noise: pd.DataFrame, regions: dict, background: set,
               classes: list, nyquist: dict, durations: dict, fully: bool) -> pd.DataFrame:
    """The -1 rows of the train recordings (see the module docstring). `pos`: their checked
    +1 boxes; `noise`: their background-label boxes; `regions`: {rid: known time}."""
    rows = []
    for rid in sorted(background):
        rows += _rows(rid, classes, [(0.0, durations[rid])], nyquist[rid], "background recording")
    for box in noise.itertuples(index=False):
        rows += _rows(box.recording_id, classes, [(box.t_min, box.t_max)], nyquist[box.recording_id],
                      "background label")
    if fully:
        by_rec = {rid: grp for rid, grp in pos.groupby("recording_id")}
        for rid, region in regions.items():
            if rid in background:
                continue
            grp = by_rec.get(rid)
            for cls in classes:
                cuts = [] if grp is None else merged(zip(grp.loc[grp["class"] == cls, "t_min"],
                                                         grp.loc[grp["class"] == cls, "t_max"]))
                rows += _rows(rid, [cls], minus(region, cuts), nyquist[rid], "fully annotated")
    return pd.DataFrame(rows, columns=["recording_id", "class", "t_min", "t_max", "f_min",
                                       "f_max", "label", "source"])


def known_regions(recordings: pd.DataFrame, annotated: set, windows: pd.DataFrame | None) -> dict:
    """{rid: merged known time} of the train recordings: the annotated windows when the
    windows file exists, else the whole of every annotated recording."""
    durations = dict(zip(recordings["recording_id"], recordings["duration"]))
    if windows is None:
        return {rid: [(0.0, durations[rid])] for rid in annotated if rid in durations}
    out = {}
    for rid, grp in windows[windows["recording_id"].isin(durations)].groupby("recording_id"):
        spans = [(max(a, 0.0), min(b, durations[rid])) for a, b in zip(grp["t_min"], grp["t_max"])]
        out[rid] = merged([s for s in spans if s[1] > s[0]])
    return out


# ----------------------------------------------------------------------------- the layout
def build(name: str, input_dir, cfg, data: BoxData) -> Inputs:
    """The Inputs of a box layout: classes, files with their split, and the annotate step."""
    bg_labels = {b.lower() for b in getattr(cfg, "background_labels", [])}
    boxes = data.boxes.copy()
    boxes["background"] = boxes["class"].str.lower().isin(bg_labels)
    classes = sorted(boxes.loc[~boxes["background"], "class"].unique())
    if not classes:
        raise ConfigError(f"{input_dir}: the annotations name no class (every label is empty or "
                          f"one of background_labels {sorted(bg_labels)}); label some calls")
    background = background_files(input_dir, cfg, data.index)
    windows = read_windows(input_dir, cfg, data.index, data.skipped)
    paths = set(data.index.paths) | set(boxes["path"]) | background
    paths |= set() if windows is None else set(windows["path"])
    rid_of = recording_ids(paths, data.index.root)
    boxes["recording_id"] = boxes["path"].map(rid_of)
    if windows is not None:
        windows["recording_id"] = windows["path"].map(rid_of)
    annotated = {rid_of[p] for p in data.annotated} | \
        (set() if windows is None else set(windows["recording_id"]))
    test = choose_test(data, cfg, rid_of, annotated, background, boxes)
    files = [(rid_of[p], "test" if rid_of[p] in test else "train", str(p)) for p in sorted(paths)]
    bg_ids = {rid_of[p] for p in background}
    notes = {"layout": name, "classes": len(classes), "background_recordings": len(bg_ids),
             "annotated_recordings": len(annotated), "test_recordings": len(test),
             "unannotated_recordings": len(set(rid_of.values()) - annotated - bg_ids),
             "fully_annotated": bool(cfg.fully_annotated),
             "annotated_windows": None if windows is None else len(windows)}

    def annotate(recordings: pd.DataFrame, report: dict, sample_rate: int) -> tuple:
        return annotate_boxes(boxes, recordings, report, classes, cfg, annotated, bg_ids, windows,
                              data.skipped, sample_rate)

    return Inputs(layout=name, files=files, classes=classes, annotate=annotate,
                  rows_per_recording=boxes["recording_id"].value_counts().to_dict(), notes=notes)


def choose_test(data: BoxData, cfg, rid_of: dict, annotated: set, background: set,
                boxes: pd.DataFrame) -> set:
    """Recording ids of the test split (marked ones, else a stratified seeded fraction)."""
    marks = {rid_of[p]: m for p, m in split_marks(data, cfg, rid_of).items()}
    if any(m == "test" for m in marks.values()):
        return {rid for rid, m in marks.items() if m == "test"}
    marked_train = {rid for rid, m in marks.items() if m == "train"}  # never drawn for test
    candidates = {rid: set() for rid in (annotated | {rid_of[p] for p in background}) - marked_train}
    for rid, cls in zip(boxes.loc[~boxes["background"], "recording_id"],
                        boxes.loc[~boxes["background"], "class"]):
        if rid in candidates:
            candidates[rid].add(cls)
    for rid, found in candidates.items():
        if not found:
            found.add("(no class)")
    return held_out(candidates, float(cfg.test_fraction), int(cfg.seed))


def report_skips(skipped: list, report: dict) -> None:
    """Rows a reader could not use, counted and listed like the table checks' problems."""
    for key in dict.fromkeys(s["key"] for s in skipped):
        hit = [s for s in skipped if s["key"] == key]
        report["annotations_dropped"][key] = len(hit)
        report["annotation_problems"] += [
            {"file": s["file"], "row": s["row"], "value": s["value"], "problem": s["problem"],
             "action": "dropped"} for s in hit[:MAX_LISTED]]
        print(f"WARNING: {len(hit)} annotation rows dropped: {hit[0]['problem']} (first: "
              f"{hit[0]['file']} row {hit[0]['row']}: {hit[0]['value']}); see report.json",
              flush=True)


def annotate_boxes(boxes, recordings, report, classes, cfg, annotated, background, windows,
                   skipped, sample_rate: int) -> tuple:
    """(train annotation table, test clip truth, test events) of the decoded `recordings`."""
    info = recordings.set_index("recording_id")
    nyquist = (info["source_sr"] / 2).to_dict()
    table = boxes.assign(label=1, f_min=boxes["f_min"].fillna(0.0),
                         f_max=boxes["f_max"].fillna(boxes["recording_id"].map(nyquist)))
    noise_labels = sorted(set(table.loc[table["background"], "class"]))
    checked = tables.check_annotations(  # every split: test boxes are the test truth
        table.drop(columns=["path", "split_mark"]), recordings.assign(split="train"),
        classes + noise_labels, report, sample_rate)
    report_skips(skipped, report)
    test_ids = set(recordings.loc[recordings["split"] == "test", "recording_id"])
    train_ids = set(recordings["recording_id"]) - test_ids
    bg = checked["background"].to_numpy(bool)
    in_train = checked["recording_id"].isin(train_ids).to_numpy()
    pos = checked[~bg & in_train]
    train_windows = None if windows is None else windows[windows["recording_id"].isin(train_ids)]
    regions = known_regions(recordings[recordings["recording_id"].isin(train_ids)],
                            annotated & train_ids, train_windows)
    derived = known_rows(pos, checked[bg & in_train], regions, background & train_ids, classes,
                         nyquist, info["duration"].to_dict(), bool(cfg.fully_annotated))
    cols = ["recording_id", "class", "t_min", "t_max", "f_min", "f_max", "label", "source", "row"]
    train = pd.concat([pos[cols], derived.assign(row=np.nan)], ignore_index=True)
    truth_ids = sorted((annotated | background) & test_ids)
    test_pos = checked[~bg & checked["recording_id"].isin(test_ids)]
    truth = pd.DataFrame(0, index=truth_ids, columns=classes, dtype=int)
    for rid, cls in zip(test_pos["recording_id"], test_pos["class"]):
        truth.loc[rid, cls] = 1
    truth = truth.rename_axis("recording_id").reset_index()
    events = test_pos[["recording_id", "class", "t_min", "t_max", "f_min", "f_max"]]
    if not truth_ids:
        return train, None, None
    return train, truth, events.reset_index(drop=True)

