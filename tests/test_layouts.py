"""The input layouts (common/layouts/): detection, the box-table and Raven readers, what is
known where (fully annotated, annotated windows, background), the test split, the front end
that follows the data, and the per-class figures of 05 (common/class_figures.py)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from common import audio, auto_frontend, class_figures, layouts
from common.cli import ConfigError, parse_cfg
from common.layouts import known
from tests.conftest import load_script

PRE = load_script("01_preprocess")


def cfg_of(root, *args):
    return parse_cfg(PRE.CFG, "preprocess", [f"--input_dir={root}", *args])


def tone(path, seconds, sr, freq=300.0):
    t = np.arange(int(seconds * sr)) / sr
    sf.write(path, (0.1 * np.sin(2 * np.pi * freq * t)).astype(np.float32), sr)


def raven_table(path, rows, columns=None):
    columns = columns or ["Selection", "View", "Channel", "Begin Time (s)", "End Time (s)",
                          "Low Freq (Hz)", "High Freq (Hz)", "Annotation"]
    pd.DataFrame(rows, columns=columns).to_csv(path, sep="\t", index=False)


# ----------------------------------------------------------------------------- detection and readers
def test_layout_is_detected_by_what_input_dir_holds(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "train_tp.csv").write_text("x\n")
    assert layouts.detect(tmp_path / "a", cfg_of(tmp_path)) == "rfcx"
    (tmp_path / "b").mkdir()
    raven_table(tmp_path / "b" / "r1.Table.1.selections.txt", [])
    assert layouts.detect(tmp_path / "b", cfg_of(tmp_path)) == "raven"
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "boxes.csv").write_text("filename,start,end,freq_min,freq_max,label\n")
    assert layouts.detect(tmp_path / "c", cfg_of(tmp_path)) == "boxes"
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "notes.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ConfigError, match="no known input layout"):
        layouts.detect(tmp_path / "d", cfg_of(tmp_path))


@pytest.mark.parametrize("header", ["audio_file,start_time,end_time,low_f,high_f,annotation",
                                    "filename,start,end,freq_min,freq_max,label"])
def test_opensoundscape_and_ketos_columns_read_unchanged(tmp_path, header):
    (tmp_path / "audio" / "deep").mkdir(parents=True)
    tone(tmp_path / "audio" / "deep" / "r1.wav", 3, 8000)
    tone(tmp_path / "audio" / "r2.flac", 3, 8000)
    tone(tmp_path / "audio" / "r3.mp3", 3, 8000)  # unannotated: a train recording, no rows
    tone(tmp_path / "audio" / "r4.ogg", 3, 8000)
    (tmp_path / "boxes.tsv").write_text(header.replace(",", "\t") + "\n"
                                        "audio/deep/r1.wav\t0.5\t1.0\t100\t900\tA\n"
                                        "r2.flac\t1.0\t2.0\t\t\tB\n")
    inputs = layouts.read(tmp_path, cfg_of(tmp_path, "--test_fraction=0"))
    assert inputs.layout == "boxes" and inputs.classes == ["A", "B"]
    assert sorted((r, s) for r, s, _ in inputs.files) == [(f"r{i}", "train") for i in range(1, 5)]
    assert all(audio.probe(p)["sample_rate"] == 8000 for _, _, p in inputs.files)
    rec = pd.DataFrame({"recording_id": ["r1", "r2"], "split": "train", "duration": 3.0,
                        "source_sr": 8000})
    ann, truth, events = inputs.annotate(rec, {}, 8000)
    assert truth is None and events is None
    assert ann[["recording_id", "class", "t_min", "t_max", "f_min", "f_max", "label"]].values.tolist() == [
        ["r1", "A", 0.5, 1.0, 100.0, 900.0, 1], ["r2", "B", 1.0, 2.0, 0.0, 4000.0, 1]]


def test_raven_tables_per_recording_and_with_begin_file(tmp_path):
    (tmp_path / "wav").mkdir()
    tone(tmp_path / "wav" / "rec_a.flac", 4, 8000)
    tone(tmp_path / "wav" / "rec_b.flac", 4, 8000)
    # one table per recording: each selection twice (Waveform and Spectrogram views)
    raven_table(tmp_path / "rec_a.Table.1.selections.txt", [
        (1, "Waveform 1", 1, 0.5, 1.0, 0, 0, "x"), (1, "Spectrogram 1", 1, 0.5, 1.0, 300, 900, "x"),
        (2, "Spectrogram 1", 1, 2.0, 2.5, 300, 900, "y")])
    # a multi-file table: times from File Offset (s), extra columns ignored
    pd.DataFrame({"Selection": [1], "View": ["Spectrogram 1"], "Begin Time (s)": [104.0],
                  "End Time (s)": [104.75], "Begin File": ["rec_b.flac"], "File Offset (s)": [1.0],
                  "Delta Time (s)": [0.75], "annotation": ["y"]}).to_csv(
        tmp_path / "more.selections.txt", sep="\t", index=False)
    inputs = layouts.read(tmp_path, cfg_of(tmp_path, "--test_fraction=0"))
    rec = pd.DataFrame({"recording_id": ["rec_a", "rec_b"], "split": "train", "duration": 4.0,
                        "source_sr": 8000})
    ann, _, _ = inputs.annotate(rec, {}, 8000)
    got = sorted(map(tuple, ann[["recording_id", "class", "t_min", "t_max", "f_min"]].values.tolist()))
    assert got == [("rec_a", "x", 0.5, 1.0, 300.0), ("rec_a", "y", 2.0, 2.5, 300.0),
                   ("rec_b", "y", 1.0, 1.75, 0.0)]


def test_fully_annotated_background_and_windows(tmp_path):
    for name in ("r1", "r2"):
        tone(tmp_path / f"{name}.wav", 10, 8000)
    (tmp_path / "background").mkdir()
    tone(tmp_path / "background" / "quiet.wav", 6, 8000)
    pd.DataFrame({"filename": ["r1.wav", "r1.wav", "r1.wav", "r2.wav"], "start": [1.0, 4.0, 6.0, 2.0],
                  "end": [2.0, 5.0, 7.0, 3.0], "label": ["A", "B", "Noise", "A"]}).to_csv(
        tmp_path / "boxes.csv", index=False)
    rec = pd.DataFrame({"recording_id": ["r1", "r2", "quiet"], "split": "train",
                        "duration": [10.0, 10.0, 6.0], "source_sr": 8000})

    def rows(*args):
        ann, _, _ = layouts.read(tmp_path, cfg_of(tmp_path, "--test_fraction=0", *args)).annotate(rec, {}, 8000)
        neg = ann[ann["label"] < 0]
        return {(r, c): sorted(zip(g["t_min"], g["t_max"])) for (r, c), g in
                neg.groupby(["recording_id", "class"])}

    sparse = rows()  # only the background recording and the Noise box say "absent"
    assert sparse == {("quiet", "A"): [(0.0, 6.0)], ("quiet", "B"): [(0.0, 6.0)],
                      ("r1", "A"): [(6.0, 7.0)], ("r1", "B"): [(6.0, 7.0)]}
    full = rows("--fully_annotated=true")
    assert full[("r1", "A")] == [(0.0, 1.0), (2.0, 10.0), (6.0, 7.0)]  # the last: the Noise box
    assert full[("r1", "B")] == [(0.0, 4.0), (5.0, 10.0), (6.0, 7.0)]
    assert full[("r2", "B")] == [(0.0, 10.0)] and full[("quiet", "A")] == [(0.0, 6.0)]
    pd.DataFrame({"filename": ["r1.wav", "r1.wav"], "start": [0.0, 3.0], "end": [3.0, 4.5]}).to_csv(
        tmp_path / "annotated_windows.csv", index=False)
    windowed = rows("--fully_annotated=true")  # r2 has no window: nothing known there
    assert windowed[("r1", "A")] == [(0.0, 1.0), (2.0, 4.5), (6.0, 7.0)]
    assert windowed[("r1", "B")] == [(0.0, 4.0), (6.0, 7.0)] and ("r2", "B") not in windowed


def test_held_out_split_is_seeded_stratified_and_marks_win(tmp_path):
    candidates = {f"r{i}": {f"c{i % 3}"} for i in range(12)}
    test = known.held_out(candidates, 0.25, seed=1)
    assert len(test) == 3 and {next(iter(candidates[r])) for r in test} == {"c0", "c1", "c2"}
    assert test == known.held_out(candidates, 0.25, seed=1) != known.held_out(candidates, 0.25, seed=2)
    single = known.held_out({f"r{i}": {f"c{i}"} for i in range(10)}, 0.2, seed=0)
    assert len(single) == 2  # classes in one recording each cannot be stratified: a seeded draw
    (tmp_path / "test").mkdir()
    for name in ("a", "b", "c"):
        tone(tmp_path / f"{name}.wav", 2, 8000)
    tone(tmp_path / "test" / "d.wav", 2, 8000)
    pd.DataFrame({"filename": ["a.wav", "b.wav", "c.wav", "d.wav"], "start": 0.5, "end": 1.0,
                  "label": "A", "split": ["train", "test", None, None]}).to_csv(
        tmp_path / "boxes.csv", index=False)
    files = layouts.read(tmp_path, cfg_of(tmp_path)).files
    assert sorted(r for r, s, _ in files if s == "test") == ["b", "d"]
    (tmp_path / "test" / "d.wav").rename(tmp_path / "d.wav")  # marks "train" only: a draw
    table = pd.read_csv(tmp_path / "boxes.csv").assign(split=["train", "train", None, None])
    table.to_csv(tmp_path / "boxes.csv", index=False)
    drawn = {r for r, s, _ in layouts.read(tmp_path, cfg_of(tmp_path, "--test_fraction=0.5")).files
             if s == "test"}
    assert len(drawn) == 1 and drawn <= {"c", "d"}  # never a recording marked train


# ----------------------------------------------------------------------------- front end, figures
def test_front_end_follows_sample_rate_and_box_durations():
    bats = auto_frontend.derive(500000, 32, {"duration_p05": 0.0011, "duration_p95": 0.022,
                                             "f_high_p99": 110000.0, "f_low_p01": 22000.0})
    assert bats["fmax"] == 132000.0 and bats["fmin"] == 17600.0
    assert bats["hop_length"] == 138 and bats["n_fft"] == 512  # 0.28 ms hops, 1 ms window
    assert bats["crop_seconds"] == pytest.approx(0.088)
    finch = auto_frontend.derive(32000, 64, {"duration_p05": 0.051, "duration_p95": 0.127})
    assert finch["fmax"] == 16000 and finch["fmin"] == 0.0
    assert finch["hop_length"] == 408 and finch["n_fft"] == 1024
    assert finch["crop_seconds"] == pytest.approx(1.63)  # 128 frames
    whale = auto_frontend.derive(2000, 32, {"duration_p05": 1.0, "duration_p95": 3.0})
    assert whale["hop_length"] == 50 and whale["crop_seconds"] == 12.0 / 1.2  # capped at 10 s


def test_class_figures_by_hand():
    grid = class_figures.sweep(np.array([1, 1, 0, 0]), np.array([0.9, 0.4, 0.6, 0.1]), [0.5])
    assert grid[["precision", "recall", "f1", "tp", "fp", "fn"]].values.tolist() == [[0.5, 0.5, 0.5, 1, 1, 1]]
    summary, _ = class_figures.class_rows("recording", np.array([[1], [1], [0], [0]]),
                                          np.array([[0.9], [0.4], [0.6], [0.1]]), ["A"])
    assert summary[0]["roc_auc"] == pytest.approx(0.75)
    assert summary[0]["ap"] == pytest.approx((1 + 2 / 3) / 2)
    events = pd.DataFrame({"recording_id": "r", "class": ["A", "A", "B"], "t_min": [0.0, 2.0, 5.0],
                           "t_max": [1.0, 3.0, 6.0]})
    det = pd.DataFrame({"recording_id": "r", "species": ["A", "A", "A", "B"],
                        "t_start": [0.1, 0.2, 2.6, 8.0], "t_end": [1.0, 0.9, 3.0, 9.0]})
    table = class_figures.event_matches(events, det).set_index("class")
    assert table.loc["A", ["positives", "detections", "matched"]].tolist() == [2, 3, 1]
    assert table.loc["B", "matched"] == 0 and table.loc["A", "f1"] == pytest.approx(2 / 5)
