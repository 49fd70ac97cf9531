"""The BirdCLEF 2021 layout -> the annotation table, plus the labelled soundscape segments.

    train_metadata.csv            primary_label, secondary_labels ("['a', 'b']"), filename, ...
    train_short_audio/<label>/    the clips (ogg), one focal species each
    train_soundscape_labels.csv   row_id, site, audio_id, seconds, birds ("a b" or "nocall")
    train_soundscapes/            <audio_id>_<site>_<date>.ogg, labelled per 5 s segment
    test_soundscapes/             (optional) <audio_id>_<site>_<date>.ogg to submit: a row
                                  `<audio_id>_<site>_<end second>` per 5 s segment, `birds`
                                  = space-separated codes or nocall (05, common/submission.py)

Clips become whole-clip +1 rows (primary label, and secondary labels when asked); each
soundscape segment becomes 5 s rows: +1 per bird, or a -1 row for every class when the
segment is `nocall`. Soundscapes never get a fold: they are held out of training and score
"soundscape F1" (common.segments).
"""
from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pandas as pd

from common import tables
from common.audio import AUDIO_EXTENSIONS
from common.cli import ConfigError
from common.layouts import soundscapes as test_soundscapes
from common.layouts.base import Inputs, read_table
from common.segments import SEGMENT_SECONDS

NAME = "birdclef2021"
METADATA = "train_metadata.csv"
SOUNDSCAPE_LABELS = "train_soundscape_labels.csv"
METADATA_COLUMNS = ["primary_label", "secondary_labels", "filename"]
SOUNDSCAPE_COLUMNS = ["row_id", "site", "audio_id", "seconds", "birds"]


def detect(input_dir, cfg=None) -> bool:
    return (Path(input_dir) / METADATA).is_file()


def parse_secondary(text, where: str = "secondary_labels") -> list[str]:
    """"['amerob', 'norcar']" -> ['amerob', 'norcar'] (ast.literal_eval, never eval);
    empty cells and "[]" -> []. A cell that is not a list of strings stops with `where`."""
    if text is None or (isinstance(text, float) and np.isnan(text)) or not str(text).strip():
        return []
    try:
        value = ast.literal_eval(str(text).strip())
    except (ValueError, SyntaxError):
        value = None
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}: secondary_labels {text!r} is not a list of label strings "
                          "such as \"['amerob', 'norcar']\"; fix the cell or write []")
    return [v.strip() for v in value if v.strip()]


def read_metadata(input_dir) -> pd.DataFrame:
    """recording_id (file stem), path, primary_label, secondary (list) of every clip."""
    path = Path(input_dir) / METADATA
    meta = read_table(path, METADATA_COLUMNS)
    meta["primary_label"] = meta["primary_label"].astype(str).str.strip()
    meta["secondary"] = [parse_secondary(t, f"{path} row {i + 2}")
                         for i, t in enumerate(meta["secondary_labels"])]
    meta["recording_id"] = [Path(str(f)).stem for f in meta["filename"]]
    meta["path"] = [str(Path(input_dir) / "train_short_audio" / lab / str(f))
                    for lab, f in zip(meta["primary_label"], meta["filename"])]
    dup = meta["recording_id"].duplicated(keep=False)
    if dup.any():
        rows = (np.flatnonzero(dup) + 2).tolist()[:6]
        raise ConfigError(f"{path}: filenames {sorted(set(meta.loc[dup, 'filename']))[:3]} occur "
                          f"more than once (rows {rows}); each clip needs its own file name")
    return meta[["recording_id", "path", "primary_label", "secondary"]]


def read_soundscapes(input_dir) -> tuple[pd.DataFrame, list]:
    """(segments: row_id, recording_id, t_min, t_max, birds; [(recording_id, path)]).
    Empty when the layout has no train_soundscape_labels.csv."""
    path = Path(input_dir) / SOUNDSCAPE_LABELS
    if not path.is_file():
        return pd.DataFrame(columns=["row_id", "recording_id", "t_min", "t_max", "birds"]), []
    labels = read_table(path, SOUNDSCAPE_COLUMNS)
    folder = Path(input_dir) / "train_soundscapes"
    found = {p.stem.split("_")[0]: p for p in sorted(folder.glob("*"))
             if p.suffix.lower() in AUDIO_EXTENSIONS} if folder.is_dir() else {}
    missing = sorted({str(a) for a in labels["audio_id"]} - set(found))
    if missing:
        raise ConfigError(f"{path}: no file <audio_id>_<site>_<date>.ogg in {folder} for "
                          f"audio_id {missing[:5]}; add the recordings or drop their rows")
    rid = [found[str(a)].stem for a in labels["audio_id"]]
    seconds = labels["seconds"].astype(float)
    segments = pd.DataFrame({"row_id": labels["row_id"].astype(str), "recording_id": rid,
                             "t_min": seconds - SEGMENT_SECONDS, "t_max": seconds,
                             "birds": labels["birds"].fillna("nocall").astype(str)})
    files = sorted({(found[str(a)].stem, str(found[str(a)])) for a in labels["audio_id"]})
    return segments, files


def _rows(rid, classes, t_max, label, source, f_max) -> pd.DataFrame:
    return pd.DataFrame({"recording_id": rid, "class": classes, "t_min": 0.0, "t_max": t_max,
                         "f_min": 0.0, "f_max": f_max, "label": label, "source": source})


def annotations(meta: pd.DataFrame, segments: pd.DataFrame, durations: dict, classes: list,
                sample_rate: int, secondary: bool = True) -> pd.DataFrame:
    """The annotation table of the decoded recordings (`durations`: recording_id -> s)."""
    nyquist = sample_rate / 2
    meta = meta[meta["recording_id"].isin(durations)]
    dur = meta["recording_id"].map(durations).to_numpy(float)
    parts = [_rows(meta["recording_id"].to_numpy(), meta["primary_label"].to_numpy(), dur, 1,
                   "primary", nyquist)]
    if secondary:
        sec = [(rid, lab, d) for rid, labs, d in zip(meta["recording_id"], meta["secondary"], dur)
               for lab in labs]
        if sec:
            rid, lab, d = map(list, zip(*sec))
            parts.append(_rows(rid, lab, d, 1, "secondary", nyquist))
    for seg in segments[segments["recording_id"].isin(durations)].itertuples(index=False):
        birds = seg.birds.split()
        nocall = birds == ["nocall"]
        part = _rows(seg.recording_id, classes if nocall else birds, seg.t_max, -1 if nocall else 1,
                     "soundscape", nyquist)
        part["t_min"] = seg.t_min
        parts.append(part)
    return pd.concat(parts, ignore_index=True)


def classes_of(meta: pd.DataFrame) -> list[str]:
    """The primary labels, sorted (BirdCLEF's submission order)."""
    return sorted(meta["primary_label"].unique())


def read(input_dir, cfg) -> Inputs:
    """The clips (train) and labelled soundscapes (held out); `cfg.secondary_labels` adds
    +1 rows for the clips' secondary labels."""
    meta = read_metadata(input_dir)
    segments, scapes = read_soundscapes(input_dir)
    classes = classes_of(meta)
    files = [(rid, "train", path) for rid, path in zip(meta["recording_id"], meta["path"])]
    files += [(rid, "soundscape", path) for rid, path in scapes]
    tests = test_files(input_dir)
    files += [(p.stem, "test", str(p)) for p in tests]
    counts = {rid: 1 + len(sec) for rid, sec in zip(meta["recording_id"], meta["secondary"])}
    for rid, n in segments["recording_id"].value_counts().items():
        counts[rid] = counts.get(rid, 0) + int(n)

    def annotate(recordings: pd.DataFrame, report: dict, sample_rate: int) -> tuple:
        ok = recordings[recordings["split"] != "test"]
        durations = dict(zip(ok["recording_id"], ok["duration"]))
        ann = annotations(meta, segments, durations, classes, sample_rate, cfg.secondary_labels)
        return tables.check_annotations(ann, recordings, classes, report), None, None

    return Inputs(layout=NAME, files=files, classes=classes, annotate=annotate,
                  rows_per_recording=counts, label_unit="clips", segments=segments,
                  submission="birds", test_segments=(lambda recordings: test_soundscapes.
                                                     segment_table(recordings, site_prefix))
                  if tests else None, notes={"test_soundscapes": len(tests)})


def site_prefix(recording_id: str) -> str:
    """'2782_SSW_20170701' -> '2782_SSW': the row_id prefix of a 2021 soundscape."""
    return "_".join(str(recording_id).split("_")[:2])


def test_files(input_dir) -> list[Path]:
    """test_soundscapes/<audio_id>_<site>_<date>.ogg, each checked for its name and length."""
    paths = test_soundscapes.files(input_dir)
    for path in paths:
        parts = path.stem.split("_")
        if len(parts) < 3 or not all(parts[:2]):
            raise ConfigError(f"{path}: a BirdCLEF 2021 test soundscape is named "
                              "<audio_id>_<site>_<date>.ogg (its rows are <audio_id>_<site>_"
                              "<end second>); rename the file")
    test_soundscapes.check_lengths(paths)
    return paths
