"""Raven selection tables (Cornell's Raven Pro / Lite), audio anywhere below INPUT_DIR:

    <stem>.Table.1.selections.txt   one tab-separated table per recording (the audio file
                                    with that stem), or tables with a `Begin File` column
                                    naming each selection's file (times then from
                                    `File Offset (s)` when present)
    Begin Time (s), End Time (s)    required; Low Freq (Hz), High Freq (Hz) optional
    label column                    `label_column` (default: Annotation, any case)

Extra Raven columns are ignored; the Waveform copies of a selection (a table saved with
several views lists each selection once per view) count once. A table with a header only
says its recording holds no selection (with fully_annotated: every class absent); a 0-byte
table is a counted skip. What the boxes mean and the test split: common/layouts/known.py.
"""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from common.cli import ConfigError
from common.layouts import known
from common.layouts.audio_index import AudioIndex
from common.layouts.base import Inputs, find_column, numbers

NAME = "raven"
BEGIN, END = "Begin Time (s)", "End Time (s)"
LOW, HIGH = "Low Freq (Hz)", "High Freq (Hz)"
FILE, OFFSET = "Begin File", "File Offset (s)"
TABLE_NAME = re.compile(r"(\.Table\.\d+)?(\.selections)?\.txt$", re.IGNORECASE)


def is_table(path) -> bool:
    """A text file whose header names Begin Time (s) (0-byte .selections.txt files too, so
    they are reported instead of silently ignored)."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            return path.name.lower().endswith(".selections.txt")
        with open(path, encoding="utf-8", errors="replace") as handle:
            return BEGIN in handle.readline()
    except OSError:
        return False


def find_tables(input_dir) -> list[Path]:
    root = Path(input_dir)
    return sorted(p for p in root.rglob("*.txt") if p.is_file() and is_table(p)
                  and not any(part.startswith(".") for part in p.relative_to(root).parts))


def detect(input_dir, cfg=None) -> bool:
    return bool(find_tables(input_dir))


def stem_of(path) -> str:
    """'bird0_3.Table.1.selections.txt' -> 'bird0_3' (the recording the table belongs to)."""
    return TABLE_NAME.sub("", Path(path).name)


def read_table_file(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path, sep="\t")
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path} is not a tab-separated Raven table ({err}); export it from "
                          "Raven with File > Save Selection Table") from None


def view_copies(frame: pd.DataFrame):
    """Rows that repeat a selection in another view (Waveform next to Spectrogram)."""
    if "Selection" not in frame.columns or "View" not in frame.columns:
        return pd.Series(False, index=frame.index)
    spectrogram = frame["View"].astype(str).str.lower().str.startswith("spectrogram")
    ordered = frame.assign(_s=~spectrogram).sort_values("_s", kind="stable")
    return ordered.duplicated(subset=["Selection"]).reindex(frame.index)


def read_one(path: Path, index: AudioIndex, cfg, skipped: list) -> tuple[list, set]:
    """(box rows, annotated audio paths) of one selection table."""
    if path.stat().st_size == 0:
        known.skip(skipped, "empty_table", "the selection table is empty (0 bytes); its "
                   "recording counts as unannotated", path.name, None, str(path))
        return [], set()
    frame = read_table_file(path)
    missing = [c for c in (BEGIN, END) if c not in frame.columns]
    if missing:
        raise ConfigError(f"{path}: missing Raven column(s) {missing}; found {list(frame.columns)}. "
                          "Save the selection table from Raven with its standard columns")
    label = find_column(frame.columns, cfg.label_column, path, "label_column")
    split = find_column(frame.columns, cfg.test_column, path, "test_column", required=False) \
        if cfg.test_column else None
    lines = pd.Series(range(2, len(frame) + 2), index=frame.index)
    frame = frame[~view_copies(frame)]
    times = numbers(frame, path, [BEGIN, END])
    freqs = numbers(frame, path, [c for c in (LOW, HIGH) if c in frame.columns], allow_empty=True)
    by_file = FILE in frame.columns
    if by_file and OFFSET in frame.columns:
        offset = numbers(frame, path, [OFFSET])[OFFSET]
        times = pd.DataFrame({BEGIN: offset, END: offset + times[END] - times[BEGIN]})
    own, why_not = (None, "") if by_file else index.resolve(stem_of(path), path.parent)
    if not by_file and own is None:
        known.skip(skipped, "audio_file_missing", f"no audio file for the table ({why_not})",
                   path.name, None, stem_of(path))
        return [], set()
    rows, annotated = [], set() if by_file else {own}
    for i in frame.index:
        hit, why = (own, "") if not by_file else index.resolve(frame.at[i, FILE], path.parent)
        value = frame.at[i, label]
        if hit is None:
            known.skip(skipped, "audio_file_missing", f"the audio file is missing ({why})",
                       path.name, lines[i], str(frame.at[i, FILE]))
        elif pd.isna(value) or not str(value).strip():
            known.skip(skipped, "label_empty", "the label cell is empty", path.name, lines[i],
                       f"{times.at[i, BEGIN]}..{times.at[i, END]}")
        else:
            annotated.add(hit)
            rows.append({"path": hit, "class": str(value).strip(), "t_min": times.at[i, BEGIN],
                         "t_max": times.at[i, END],
                         "f_min": freqs.at[i, LOW] if LOW in freqs else float("nan"),
                         "f_max": freqs.at[i, HIGH] if HIGH in freqs else float("nan"),
                         "source": path.name, "row": lines[i],
                         "split_mark": None if split is None or pd.isna(frame.at[i, split])
                         else str(frame.at[i, split])})
    return rows, annotated


def read(input_dir, cfg) -> Inputs:
    tables = find_tables(input_dir)
    if not tables:
        raise ConfigError(f"{input_dir}: no Raven selection table (*.selections.txt, or a .txt "
                          f"whose header names '{BEGIN}')")
    index = AudioIndex(input_dir)
    rows, annotated, skipped = [], set(), []
    for path in tables:
        got, files = read_one(path, index, cfg, skipped)
        rows += got
        annotated |= files
    columns = ["path", "class", "t_min", "t_max", "f_min", "f_max", "source", "row", "split_mark"]
    data = known.BoxData(boxes=pd.DataFrame(rows, columns=columns), annotated=annotated,
                         index=index, skipped=skipped)
    return known.build(NAME, input_dir, cfg, data)
