"""Researcher data through the kit: a ketos-style box table (2 kHz recordings of minutes, a
background folder, noise boxes) from 01 to 05, and what a user's mistakes in box tables and
Raven tables look like (a message naming file, row and value, or a counted skip in
report.json; never a traceback)."""
from __future__ import annotations

import io
import json
from contextlib import redirect_stdout

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from common.cli import ConfigError, parse_cfg
from common.prepared import load_prepared
from tests.conftest import load_script

SR = 2000
CALLS = {"upcall": (150.0, 350.0, 1.0), "tone": (700.0, 700.0, 0.6)}  # Hz from, Hz to, s


def call(kind: str, sr: int = SR) -> np.ndarray:
    f0, f1, dur = CALLS[kind]
    t = np.arange(int(dur * sr)) / sr
    phase = 2 * np.pi * (f0 * t + 0.5 * (f1 - f0) / dur * t ** 2)
    return (0.5 * np.sin(phase) * np.hanning(len(t))).astype(np.float32)


def write_ketos(root, seed: int = 0, seconds: float = 150.0) -> pd.DataFrame:
    """audio/rec*.wav (2 kHz, `seconds` long), background/bg*.wav (noise only), boxes.csv
    with ketos' columns (filename,start,end,freq_min,freq_max,label), some 'noise' boxes."""
    rng = np.random.default_rng(seed)
    (root / "audio").mkdir(parents=True)
    (root / "background").mkdir()
    rows = []
    for i in range(6):
        wave = 0.02 * rng.normal(size=int(seconds * SR)).astype(np.float32)
        kinds = ["upcall", "tone"] if i < 4 else [["upcall", "tone"][i % 2]]
        for kind in kinds:
            for start in rng.choice(np.arange(2, seconds - 4, 6.0), 6, replace=False):
                piece = call(kind)
                a = int(start * SR)
                wave[a:a + len(piece)] += piece
                f0, f1, dur = CALLS[kind]
                rows.append((f"audio/rec{i}.wav", start, start + dur, min(f0, f1) - 30,
                             max(f0, f1) + 30, kind))
        burst = int(rng.uniform(1, seconds - 2) * SR)
        wave[burst:burst + SR // 2] += 0.3 * rng.normal(size=SR // 2).astype(np.float32)
        rows.append((f"audio/rec{i}.wav", burst / SR, burst / SR + 0.5, 0.0, 1000.0, "Noise"))
        sf.write(root / "audio" / f"rec{i}.wav", wave, SR)
    for i in range(2):
        sf.write(root / "background" / f"bg{i}.wav",
                 (0.02 * rng.normal(size=60 * SR)).astype(np.float32), SR)
    table = pd.DataFrame(rows, columns=["filename", "start", "end", "freq_min", "freq_max", "label"])
    table.to_csv(root / "boxes.csv", index=False)
    return table


def main_of(name: str, stage: str, args: list, defaults: dict | None = None):
    module = load_script(name)
    log = io.StringIO()
    with redirect_stdout(log):
        out = module.main(parse_cfg(module.CFG, stage, args, defaults=defaults))
    return out, log.getvalue()


MODEL = ["--backbone=resnet10t", "--in_chans=1", "--crop_seconds=0", "--n_fft=0", "--hop_length=0",
         "--fmin=-1", "--fmax=0", "--n_mels=32", "--image_size=", "--device=cpu", "--epochs=1",
         "--batch_size=16"]


@pytest.fixture(scope="module")
def ketos(tmp_path_factory):
    root = tmp_path_factory.mktemp("ketos")
    table = write_ketos(root / "data")
    io_ = [f"--input_dir={root / 'data'}", f"--work_dir={root / 'work'}"]
    logs = {}
    _, logs["01"] = main_of("01_preprocess", "preprocess", [*io_, "--n_folds=2", "--workers=1",
                                                             "--fully_annotated=true",
                                                             "--test_fraction=0.25"])
    _, logs["02"] = main_of("02_train_stage1", "stage1", [*io_, *MODEL])
    stage3 = load_script("04_train_stage3")
    _, logs["04s2"] = main_of("04_train_stage3", "stage2", [*io_, "--stage=stage2", "--epochs=1",
                                                            "--device=cpu"], stage3.STAGE2_DEFAULTS)
    _, logs["03"] = main_of("03_pseudo_label", "pseudo", [*io_, "--source=stage2", "--device=cpu",
                                                          "--threshold=0.3", "--min_votes=1"])
    _, logs["04s3"] = main_of("04_train_stage3", "stage3", [*io_, "--epochs=1", "--device=cpu"])
    out, logs["05"] = main_of("05_ensemble", "ensemble", [*io_, "--runs=stage3/latest,stage1/latest",
                                                          "--n_pictures=1", "--device=cpu",
                                                          "--min_event_seconds=0.1",
                                                          "--event_threshold=0.3"])
    return root, table, logs, out


def test_ketos_table_preprocessing(ketos):
    root, table, logs, _ = ketos
    prep = load_prepared(root / "work")
    report = json.loads((prep.run_dir / "report.json").read_text())
    assert report["input"]["layout"] == "boxes" and "(boxes layout)" in logs["01"]
    assert report["input"]["background_recordings"] == 2 and report["input"]["test_recordings"] == 2
    assert prep.sample_rate == SR and prep.classes == ["tone", "upcall"]  # Noise is no class
    ann = prep.annotations
    for bg in ("bg0", "bg1"):  # background recordings: -1 for every class, all their length
        rows = ann[ann["recording_id"] == bg]
        assert sorted(rows["class"]) == ["tone", "upcall"] and (rows["label"] == -1).all()
        assert np.allclose(rows["t_max"] - rows["t_min"], 60.0)
    test_ids = set(prep.ids("test"))
    assert not test_ids & set(ann["recording_id"])  # test boxes are truth, never training rows
    ids, truth = prep.test_truth(root / "nowhere")  # found in the run, not in INPUT_DIR
    assert set(ids) == test_ids and truth.shape == (2, 2)
    events = prep.test_events()
    named = table[table["label"] != "Noise"].assign(rid=lambda t: t["filename"].str[6:-4])
    assert len(events) == named["rid"].isin(test_ids).sum()


def test_ketos_table_end_to_end(ketos):
    root, _, logs, out = ketos
    assert "front end from the data (2000 Hz" in logs["02"] and "hop_length=50" in logs["02"]
    run_dir = out["run_dir"]
    per_class = pd.read_csv(run_dir / "per_class.csv")
    assert {"recording", "event (IoU >= 0.5)"} <= set(per_class["level"])
    assert any(level.startswith("segment") for level in per_class["level"])
    assert set(per_class["class"]) == {"tone", "upcall"}
    seg = per_class[per_class["level"].str.startswith("segment")]
    assert seg["roc_auc"].between(0, 1).all()
    grid = pd.read_csv(run_dir / "per_class_thresholds.csv")
    assert len(grid) == 19 * 2 * 2  # thresholds x classes x (recording, segment) levels
    assert "Per-class figures" in logs["05"] and "Per-class figures" in (run_dir / "report.md").read_text()
    prep = load_prepared(root / "work")
    assert sorted(p.name for p in (run_dir / "raven").iterdir()) == \
        sorted(f"{r}.Table.1.selections.txt" for r in prep.ids("test"))
    combined = pd.read_csv(run_dir / "detections_all.csv")
    assert "source_file" in combined.columns
    assert all(str(f).endswith(".wav") for f in combined["source_file"])


# ----------------------------------------------------------------------------- bad input
def noise(seconds: float, sr: int, rng) -> np.ndarray:
    return (0.05 * rng.normal(size=int(seconds * sr))).astype(np.float32)


BAD_ROWS = [  # filename, start, end, freq_min, freq_max, label; the CSV line in the comment
    ("good0.wav", 0.5, 1.0, 100, 1500, "A"),      # 2
    ("good1.wav", 0.5, 1.0, 100, 1500, "B"),      # 3
    ("good2.wav", 1.0, 2.0, 100, 1500, "A"),      # 4
    ("good3.wav", 1.0, 2.0, 100, 1500, "B"),      # 5
    ("good0.wav", 0.5, 1.0, 100, 1500, "A"),      # 6 duplicate of line 2
    ("good1.wav", 2.0, 1.5, 100, 1500, "A"),      # 7 end before start
    ("good2.wav", 7.0, 8.0, 100, 1500, "B"),      # 8 after the end of a 5 s recording
    ("good3.wav", 4.5, 6.0, 100, 1500, "A"),      # 9 sticks out: clipped
    ("good0.wav", 2.0, 3.0, 100, 3000, "B"),      # 10 above sr/2 of a 4 kHz file: clipped
    ("missing.wav", 0.5, 1.0, 100, 1500, "A"),    # 11 no such file
    ("broken.wav", 0.5, 1.0, 100, 1500, "A"),     # 12 unreadable file
    ("same.wav", 0.5, 1.0, 100, 1500, "A"),       # 13 two files of that name
    ("hour.wav", 3500.0, 3501.0, 100, 1500, "B"),  # 14 an hour-long recording: fine
    ("bat.wav", 0.1, 0.2, 20000, 60000, "A"),     # 15 500 kHz file, band above the cache's
    ("good1.wav", 3.0, 3.5, 100, 1500, None),     # 16 empty label
]


def write_bad_boxes(root):
    rng = np.random.default_rng(1)
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    for i in range(4):
        sf.write(root / f"good{i}.wav", noise(5, 4000, rng), 4000)
    sf.write(root / "rate8k.wav", noise(5, 8000, rng), 8000)
    sf.write(root / "bat.wav", noise(0.5, 500000, rng), 500000)
    sf.write(root / "hour.wav", noise(3600, 4000, rng), 4000, subtype="PCM_16")
    (root / "broken.wav").write_bytes(b"RIFF not really a wave file" * 20)
    sf.write(root / "a" / "same.wav", noise(2, 4000, rng), 4000)
    sf.write(root / "b" / "same.wav", noise(2, 4000, rng), 4000)
    pd.DataFrame(BAD_ROWS, columns=["filename", "start", "end", "freq_min", "freq_max", "label"]
                 ).to_csv(root / "boxes.csv", index=False)


def run_01(data, work, *args):
    return main_of("01_preprocess", "preprocess", [f"--input_dir={data}", f"--work_dir={work}",
                                                   "--workers=1", "--n_folds=2", *args])


@pytest.fixture(scope="module")
def bad_boxes(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_boxes")
    write_bad_boxes(root / "data")
    run_dir, log = run_01(root / "data", root / "w", "--sample_rate=4000", "--test_fraction=0")
    return json.loads((run_dir / "report.json").read_text()), log, run_dir


def lines_of(report, key):
    return [(p["file"], p["row"]) for p in report["annotation_problems"] if p["problem"].startswith(key)]


@pytest.mark.parametrize("case, check", [
    ("duplicate box", lambda r, log: lines_of(r, "the same as an earlier row") == [("boxes.csv", 6)]),
    ("end before start", lambda r, log: lines_of(r, "t_min >= t_max") == [("boxes.csv", 7)]),
    ("box outside the recording", lambda r, log: lines_of(r, "the box lies outside") == [("boxes.csv", 8)]),
    ("box sticking out: clipped", lambda r, log: lines_of(r, "the box sticks out") == [("boxes.csv", 9)]),
    ("box above sr/2: clipped", lambda r, log: ("boxes.csv", 10) in lines_of(r, "f_min/f_max outside")),
    ("file named in the table but missing", lambda r, log: lines_of(r, "the audio file is missing")[0]
     == ("boxes.csv", 11) and r["annotations_dropped"]["audio_file_missing"] == 2
     and "no audio file 'missing.wav'" in log),
    ("name of two files", lambda r, log: ("boxes.csv", 13) in lines_of(r, "the audio file is missing")
     and "2 audio files match 'same.wav'" in json.dumps(r)),
    ("unreadable file, its rows counted", lambda r, log: [u["annotations_lost"] for u in r["unreadable"]
                                                          if u["file"].endswith("broken.wav")] == [1]
     and r["annotations_dropped"]["recording_missing_or_unreadable"] == 1),
    ("empty label", lambda r, log: lines_of(r, "the label cell is empty") == [("boxes.csv", 16)]),
    ("band above the cache's sr/2", lambda r, log: lines_of(r, "the box lies above 2000 Hz")
     == [("boxes.csv", 15)]),
    ("mixed sample rates", lambda r, log: set(r["source_sample_rates"]) == {"4000", "8000", "500000"}
     and "3 sample rates" in log),
    ("an hour-long file", lambda r, log: any(w["file"].endswith("hour.wav") and "over 4x the median"
                                             in w["warning"] for w in r["warnings"])),
])
def test_bad_box_table_is_reported_and_the_run_goes_on(bad_boxes, case, check):
    report, log, _ = bad_boxes
    assert check(report, log), case


def test_bad_box_table_keeps_the_good_rows(bad_boxes):
    _, _, run_dir = bad_boxes
    rec = pd.read_csv(run_dir / "recordings.csv").set_index("recording_id")
    assert rec.loc["hour", "n_samples"] == 3600 * 4000 and rec.loc["bat", "source_sr"] == 500000
    assert rec.loc["bat", "n_samples"] == 2000  # 0.5 s of 500 kHz audio, cached at 4 kHz
    ann = pd.read_csv(run_dir / "annotations.csv")
    assert sorted(ann.loc[ann["label"] > 0, "row"].astype(int)) == [2, 3, 4, 5, 9, 10, 14]
    row = ann.set_index("row")
    assert row.loc[9, "t_max"] == pytest.approx(5.0) and row.loc[10, "f_max"] == 2000.0


def test_raven_tables_with_problems(tmp_path):
    rng = np.random.default_rng(2)
    data = tmp_path / "data"
    (data / "audio").mkdir(parents=True)
    for name in ("r1", "r2", "r4", "r5"):
        sf.write(data / "audio" / f"{name}.flac", noise(4, 8000, rng), 8000)
    cols = ["Selection", "View", "Channel", "Begin Time (s)", "End Time (s)", "Low Freq (Hz)",
            "High Freq (Hz)", "Annotation"]
    pd.DataFrame([(1, "Waveform 1", 1, 0.5, 1.0, 0, 0, "x"), (1, "Spectrogram 1", 1, 0.5, 1.0, 200, 900, "x"),
                  (2, "Spectrogram 1", 1, 2.0, 2.5, 200, 900, "y"), (3, "Spectrogram 1", 1, 2.0, 2.5, 200, 900, "y")],
                 columns=cols).to_csv(data / "r1.Table.1.selections.txt", sep="\t", index=False)
    (data / "r2.Table.1.selections.txt").write_bytes(b"")  # 0 bytes: a counted skip
    pd.DataFrame([(1, "Spectrogram 1", 1, 0.5, 1.0, 200, 900, "x")], columns=cols).to_csv(
        data / "r3.Table.1.selections.txt", sep="\t", index=False)  # no audio r3
    pd.DataFrame(columns=cols).to_csv(data / "r4.Table.1.selections.txt", sep="\t", index=False)
    pd.DataFrame([(1, "Spectrogram 1", 1, 1.0, 1.5, 200, 900, "y")], columns=cols).to_csv(
        data / "r5.Table.1.selections.txt", sep="\t", index=False)
    run_dir, log = run_01(data, tmp_path / "w", "--fully_annotated=true", "--test_fraction=0")
    report = json.loads((run_dir / "report.json").read_text())
    assert report["annotations_dropped"]["empty_table"] == 1
    assert report["annotations_dropped"]["audio_file_missing"] == 1 and "no audio file for the table" in log
    assert report["annotations_dropped"]["duplicate_row"] == 1  # selection 3 repeats selection 2
    ann = pd.read_csv(run_dir / "annotations.csv")
    assert (ann["label"] > 0).sum() == 3  # the Waveform copy of selection 1 counts once
    r4 = ann[ann["recording_id"] == "r4"]  # header only, fully annotated: every class absent
    assert sorted(r4["class"]) == ["x", "y"] and (r4["label"] == -1).all()
    assert "r2" not in set(ann["recording_id"])  # unannotated: nothing known


def box_folder(root, header="filename,start,end,label", rows=("a.wav,0.5,1.0,A",), marks=None):
    root.mkdir(parents=True, exist_ok=True)
    sf.write(root / "a.wav", np.zeros(8000, np.float32), 8000)
    (root / "boxes.csv").write_text(header + "\n" + "\n".join(rows) + "\n")


@pytest.mark.parametrize("setup, args, message", [
    (lambda d: (box_folder(d), (d / "t.Table.1.selections.txt").write_text(
        "Selection\tBegin Time (s)\tAnnotation\n1\t0.5\tx\n")), [],
     r"t.Table.1.selections.txt: missing Raven column\(s\) \['End Time \(s\)'\]"),
    (lambda d: box_folder(d, "filename,start,end,species", ["a.wav,0.5,1.0,A"]),
     ["--layout=boxes", "--boxes_file=boxes.csv"],
     r"boxes.csv: no column 'annotation' or 'label'.*--label_column="),
    (lambda d: box_folder(d, rows=["a.wav,0.5,1.0,A", "a.wav,abc,1.0,A"]), [],
     r"boxes.csv row 3: start='abc' is not a number"),
    (lambda d: (box_folder(d), (d / "boxes.csv").write_text("")), ["--layout=boxes", "--boxes_file=boxes.csv"],
     "boxes.csv is empty"),
    (lambda d: box_folder(d, rows=[]), [], "boxes.csv holds no boxes"),
    (lambda d: box_folder(d, "filename,start,end,label,split", ["a.wav,0.1,0.2,A,test", "a.wav,0.3,0.4,A,train"]),
     [], r"a.wav are marked \['test', 'train'\] in the split column"),
    (lambda d: box_folder(d, rows=["zz.wav,0.5,1.0,A", "yy.wav,0.5,1.0,A"]), [],
     "none of its 2 boxes can be used"),
    (lambda d: box_folder(d), ["--background=nowhere"], "background='nowhere'.*neither a folder"),
])
def test_box_mistakes_that_stop_name_the_file_row_and_value(tmp_path, setup, args, message):
    setup(tmp_path / "data")
    with pytest.raises(ConfigError, match=message):
        run_01(tmp_path / "data", tmp_path / "w", *args)
    assert not (tmp_path / "w").exists()  # stopped before any decoding
