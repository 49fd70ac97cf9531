"""Test soundscapes of the BirdCLEF layouts: the 5 s segments a submission has one row for.

Every 5 s segment of a test soundscape is a row named `<prefix>_<end second>` with ends
5, 10, 15, ...: `<soundscape stem>` is the prefix in BirdCLEF 2023-2025, `<audio_id>_<site>`
(the first two parts of `<audio_id>_<site>_<date>.ogg`) in BirdCLEF 2021.

A last partial segment (a soundscape whose length is not a multiple of 5 s) becomes a row
when it holds at least half a segment (2.5 s, as the clips' segments in common.segments), and
is then named by the next multiple of 5 (a 62.5 s soundscape ends with `_65`); the model
scores it on the last 5 s of the recording (windows are kept inside the recording). A shorter
remainder is left out. A soundscape shorter than 5 s stops 01 (ConfigError) before decoding:
it holds no whole segment, and the competitions never have one.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from common import audio
from common.cli import ConfigError
from common.segments import SEGMENT_SECONDS, segment_ends  # the rule above

FOLDER = "test_soundscapes"
COLUMNS = ["row_id", "recording_id", "t_min", "t_max"]


def files(input_dir) -> list[Path]:
    """The audio files of INPUT_DIR/test_soundscapes/ (sorted; [] when absent or empty)."""
    folder = Path(input_dir) / FOLDER
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in audio.AUDIO_EXTENSIONS)


def check_lengths(paths: list) -> None:
    """Stop at the first soundscape shorter than one segment (its header's duration); a file
    whose header cannot be read is left to the decoder, which reports it as unreadable."""
    for path in paths:
        try:
            seconds = audio.probe(path)["duration"]
        except audio.AudioError:
            continue
        if seconds < SEGMENT_SECONDS:
            raise ConfigError(f"{path}: the test soundscape is {seconds:.2f} s long, shorter "
                              f"than one {SEGMENT_SECONDS:g} s segment, so it has no row to "
                              "predict; remove it from test_soundscapes/ (or pad it to 5 s)")


def segment_table(recordings: pd.DataFrame, prefix_of) -> pd.DataFrame:
    """row_id, recording_id, t_min, t_max of every segment of the decoded test recordings
    (`recordings`: recording_id, split, duration); `prefix_of(recording_id)` names them."""
    test = recordings[recordings["split"] == "test"]
    rows = [(f"{prefix_of(rid)}_{end}", rid, end - SEGMENT_SECONDS, float(end))
            for rid, dur in zip(test["recording_id"], test["duration"])
            for end in segment_ends(float(dur))]
    return pd.DataFrame(rows, columns=COLUMNS)
