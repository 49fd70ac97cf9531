"""One table of boxes for all recordings (CSV or TSV), audio anywhere below INPUT_DIR:

    file, start, end[, low frequency, high frequency], label[, split]

Column names come from CFG (`file_column`, `start_column`, `end_column`, `low_f_column`,
`high_f_column`, `label_column`, `test_column`), each a `|`-separated list of accepted names;
the defaults read OpenSoundscape's `audio_file,start_time,end_time,low_f,high_f,annotation`
and the ketos-style `filename,start,end,freq_min,freq_max,label` unchanged. Without
frequency columns a box spans 0..sr/2. What the boxes mean (present, absent, unknown) and the
test split: common/layouts/known.py.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from common.cli import ConfigError
from common.layouts import known
from common.layouts.audio_index import AudioIndex
from common.layouts.base import Inputs, find_column, numbers, read_table

NAME = "boxes"
SUFFIXES = (".csv", ".tsv", ".txt")
COLUMN_SETTINGS = ("file_column", "start_column", "end_column", "label_column")


def separator(path) -> str:
    """Tab for .tsv files and for a header line with tabs and no commas, else comma."""
    if Path(path).suffix.lower() == ".tsv":
        return "\t"
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            head = handle.readline()
    except OSError:
        return ","
    return "\t" if "\t" in head and "," not in head else ","


def has_box_columns(path, cfg) -> bool:
    try:
        header = pd.read_csv(path, sep=separator(path), nrows=0).columns
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError):
        return False
    return all(find_column(header, getattr(cfg, s), path, s, required=False) for s in COLUMN_SETTINGS)


def candidates(input_dir, cfg) -> list[Path]:
    """Tables directly in INPUT_DIR whose header has file, start, end and label columns."""
    skip = {str(getattr(cfg, "annotated_windows", "")), str(getattr(cfg, "background", ""))}
    return [p for p in sorted(Path(input_dir).glob("*")) if p.suffix.lower() in SUFFIXES
            and p.is_file() and p.name not in skip and has_box_columns(p, cfg)]


def detect(input_dir, cfg) -> bool:
    return bool(candidates(input_dir, cfg))


def table_path(input_dir, cfg) -> Path:
    name = str(getattr(cfg, "boxes_file", "") or "")
    if name:
        path = Path(name) if Path(name).is_absolute() else Path(input_dir) / name
        if not path.is_file():
            raise ConfigError(f"boxes_file={name!r}: {path} does not exist")
        return path
    found = candidates(input_dir, cfg)
    if len(found) != 1:
        names = ", ".join(p.name for p in found)
        what = f"{len(found)} tables ({names})" if found else "no table"
        raise ConfigError(f"{input_dir}: {what} with file, start, end and label columns; name the "
                          "box table with --boxes_file=<file> (and its columns with --file_column=, "
                          "--start_column=, --end_column=, --label_column=)")
    return found[0]


def band(freqs: pd.DataFrame, column: str | None, i: int) -> float:
    """Row i's frequency (Hz) in `column`; NaN (the whole band) without the column."""
    return float(freqs[column].iloc[i]) if column else float("nan")


def read_boxes(path, cfg, index: AudioIndex) -> known.BoxData:
    """The boxes of one table, their audio files resolved; rows whose file is missing or
    whose label is empty become counted skips."""
    frame = read_table(path, [], sep=separator(path))
    if not len(frame):
        raise ConfigError(f"{path} holds no boxes (a header only); add a row per box: file, "
                          "start, end, label")
    col = {s: find_column(frame.columns, getattr(cfg, s), path, s) for s in COLUMN_SETTINGS}
    freq = {s: find_column(frame.columns, getattr(cfg, s), path, s, required=False)
            for s in ("low_f_column", "high_f_column")}
    split = find_column(frame.columns, cfg.test_column, path, "test_column", required=False) \
        if cfg.test_column else None
    times = numbers(frame, path, [col["start_column"], col["end_column"]])
    freqs = numbers(frame, path, [c for c in freq.values() if c], allow_empty=True)
    skipped, rows, resolved = [], [], {}
    for i, name in enumerate(frame[col["file_column"]]):
        label = frame[col["label_column"]].iloc[i]
        if pd.isna(label) or not str(label).strip():
            known.skip(skipped, "label_empty", "the label cell is empty", path.name, i + 2,
                       str(name))
            continue
        if name not in resolved:
            resolved[name] = index.resolve(name, path.parent)
        hit, why = resolved[name]
        if hit is None:
            known.skip(skipped, "audio_file_missing", f"the audio file is missing ({why})",
                       path.name, i + 2, str(name))
            continue
        rows.append({"path": hit, "class": str(label).strip(),
                     "t_min": times[col["start_column"]].iloc[i],
                     "t_max": times[col["end_column"]].iloc[i],
                     "f_min": band(freqs, freq["low_f_column"], i),
                     "f_max": band(freqs, freq["high_f_column"], i),
                     "source": path.name, "row": i + 2,
                     "split_mark": None if split is None or pd.isna(frame[split].iloc[i])
                     else str(frame[split].iloc[i])})
    if not rows:
        first = skipped[0] if skipped else {"value": "", "problem": ""}
        raise ConfigError(f"{path}: none of its {len(frame)} boxes can be used (first: "
                          f"{first['value']!r}: {first['problem']}); check input_dir and the "
                          "file and label columns")
    boxes = pd.DataFrame(rows)
    return known.BoxData(boxes=boxes, annotated=set(boxes["path"]), index=index, skipped=skipped)


def read(input_dir, cfg) -> Inputs:
    path = table_path(input_dir, cfg)
    return known.build(NAME, input_dir, cfg, read_boxes(path, cfg, AudioIndex(input_dir)))
