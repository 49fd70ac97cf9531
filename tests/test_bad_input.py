"""What a user's mistake looks like: bad configuration (part 3 of the reliability issue),
bad tables (part 2) and bad audio (part 1). Each case asserts the message a user reads, or
the report.json entry, and that no heavy work (a run folder) started before the error."""
from __future__ import annotations

import pytest

from common import runs
from common.cli import ConfigError, parse_cfg
from tests.test_ensemble import fake_work_dir

STAGE1 = ["--backbone=resnet10t", "--in_chans=1", "--crop_seconds=1", "--n_fft=256",
          "--hop_length=128", "--n_mels=32", "--fmin=50", "--fmax=4000", "--image_size=",
          "--epochs=1", "--device=cpu"]


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    """The shared fake work dir (preprocess run p0 with 2 s recordings, finished stage-1 run
    r0), plus an unfinished (crashed) preprocessing and stage-1 run."""
    work, data = fake_work_dir(tmp_path_factory.mktemp("bad_config"))
    runs.write_manifest(work / "preprocess" / "crashed", "preprocess", {}, {}, [], {}, finished=False)
    runs.write_manifest(work / "stage1" / "crashed", "stage1", {}, {}, [], {}, finished=False)
    runs.write_manifest(work / "stage1" / "r0", "stage1", {}, {"preprocess": "p0"}, [],
                        {"folds": [0, 1]}, finished=True)
    return work, data


@pytest.mark.parametrize("script, override, message", [
    ("02_train_stage1", "--n_mels=200", "n_mels=200 exceeds the 129 STFT bins of n_fft=256"),
    ("02_train_stage1", "--crop_seconds=30", "crop_seconds=30.0 is longer than every training "
                                             r"recording \(the longest is 2.00 s\)"),
    ("02_train_stage1", "--backbone=resnet10x", "unknown backbone 'resnet10x'.*resnet10t"),
    ("02_train_stage1", "--pretrained_path=/nowhere/w.pth", "pretrained_path /nowhere/w.pth does not exist"),
    ("02_train_stage1", "--preprocess=nosuch", "no preprocess run 'nosuch'"),
    ("02_train_stage1", "--preprocess=crashed", "preprocess run .*crashed is unfinished"),
    ("02_train_stage1", "--folds=0,5", r"folds \[5\] do not exist"),
    ("04_train_stage3", "--init=crashed", "stage1 run .*crashed is unfinished"),
    ("04_train_stage3", "--init=nosuch", "no stage1 run 'nosuch'"),
    ("04_train_stage3", "--crop_seconds=9", "crop_seconds=9.0 is longer than every training"),
    ("03_pseudo_label", "--source_tag=crashed", "stage1 run .*crashed is unfinished"),
])
def test_bad_configuration_stops_before_any_run_starts(fake, scripts, script, override, message):
    work, data = fake
    module = scripts(script)
    stage_name = {"02_train_stage1": "stage1", "04_train_stage3": "stage3",
                  "03_pseudo_label": "pseudo"}[script]
    before = sorted(p.name for p in work.glob("*/*"))
    args = [*STAGE1, "--preprocess=p0"] if script == "02_train_stage1" else \
        ["--stage=stage3", "--init_from=stage1", "--pseudo=", "--device=cpu"] if script == "04_train_stage3" \
        else ["--source=stage1", "--device=cpu"]
    cfg = parse_cfg(module.CFG, stage_name, [*args, f"--work_dir={work}", f"--input_dir={data}",
                                             override])
    with pytest.raises(ConfigError, match=message):
        module.main(cfg)
    assert sorted(p.name for p in work.glob("*/*")) == before  # no run folder was started


# ----------------------------------------------------------------------------- bad audio and tables
SR = 8000
TP_ROWS = [  # recording_id, species_id, t_min, f_min, t_max, f_max; problem rows after the good ones
    *[(f"good{i}", i % 3, 0.5, 500, 1.5, 2000) for i in range(6)],
    ("stereo", 0, 0.5, 500, 1.5, 2000), ("multi", 1, 0.5, 500, 1.5, 2000),
    ("rate16k", 2, 0.5, 500, 1.5, 2000), ("zeros", 0, 0.5, 500, 1.5, 2000),
    ("good0", 0, 0.5, 500, 1.5, 2000),          # line 12: duplicate of line 2
    ("nosuch", 1, 0.5, 500, 1.5, 2000),         # line 13: unknown recording
    ("good1", 7, 0.5, 500, 1.5, 2000),          # line 14: species outside s0..s2
    ("good2", 2, 2.0, 500, 1.0, 2000),          # line 15: t_min >= t_max
    ("good3", 0, 10.0, 500, 12.0, 2000),        # line 16: after the end of a 3 s recording
    ("good4", 1, 2.0, 500, 5.0, 2000),          # line 17: sticks out of the recording
    ("good5", 2, 0.5, 500, 1.5, 9000),          # line 18: above 4 kHz, half the sample rate
    ("empty", 0, 0.5, 500, 1.5, 2000), ("empty", 1, 1.0, 500, 2.0, 2000),  # lost with the file
]


def write_bad_dataset(root):
    """An RFCx-layout folder with one file or row per failure mode of parts 1 and 2."""
    import numpy as np
    import pandas as pd
    import soundfile as sf
    rng = np.random.default_rng(0)
    train, test = root / "train", root / "test"
    train.mkdir(parents=True)
    test.mkdir()
    noise = lambda seconds, sr=SR, ch=1: (0.1 * rng.normal(size=(int(seconds * sr), ch))).astype(np.float32)  # noqa: E731
    for i in range(6):
        sf.write(train / f"good{i}.flac", noise(3), SR)
    sf.write(train / "stereo.flac", noise(3, ch=2), SR)
    sf.write(train / "multi.wav", noise(3, ch=4), SR)
    sf.write(train / "rate16k.flac", noise(3, 16000), 16000)
    sf.write(train / "short.flac", noise(0.5), SR)
    sf.write(train / "long.flac", noise(30), SR)
    sf.write(train / "zeros.flac", np.zeros((3 * SR, 1), np.float32), SR)
    nan = noise(3)
    nan[[5, 50]] = np.nan
    sf.write(train / "nan.wav", nan, SR, subtype="FLOAT")
    (train / "empty.flac").write_bytes(b"")
    whole = (train / "good0.flac").read_bytes()
    (train / "trunc.flac").write_bytes(whole[:len(whole) // 2])
    (train / "fake.flac").write_bytes(b"<html>not audio</html>" * 50)
    sf.write(test / "t0.flac", noise(3), SR)
    cols = ["recording_id", "species_id", "songtype_id", "t_min", "f_min", "t_max", "f_max"]
    pd.DataFrame([(r, s, 1, a, b, c, d) for r, s, a, b, c, d in TP_ROWS], columns=cols).to_csv(
        root / "train_tp.csv", index=False)
    pd.DataFrame([("good0", 1, 1, 2.0, 500, 2.5, 2000)], columns=cols).to_csv(
        root / "train_fp.csv", index=False)
    pd.DataFrame({"recording_id": ["t0"], "s0": 0, "s1": 0, "s2": 0}).to_csv(
        root / "sample_submission.csv", index=False)


@pytest.fixture(scope="module")
def bad_run(tmp_path_factory, scripts):
    import json
    import io
    from contextlib import redirect_stdout
    root = tmp_path_factory.mktemp("bad_data")
    write_bad_dataset(root / "data")
    module = scripts("01_preprocess")
    cfg = parse_cfg(module.CFG, "preprocess", [f"--input_dir={root / 'data'}", f"--work_dir={root / 'w'}",
                                               f"--sample_rate={SR}", "--n_folds=2", "--workers=1"])
    log = io.StringIO()
    with redirect_stdout(log):
        run_dir = module.main(cfg)
    return json.loads((run_dir / "report.json").read_text()), log.getvalue(), run_dir


def warning_of(report, name):
    return " | ".join(w["warning"] for w in report["warnings"] if w["file"].endswith(name))


def unreadable(report, name):
    return [u for u in report["unreadable"] if u["file"].endswith(name)]


def problem_rows(report, key):
    return [(p["file"], p["row"]) for p in report["annotation_problems"] if p["problem"] == key]


@pytest.mark.parametrize("case, check", [
    ("empty file, with its annotations counted", lambda r, log: unreadable(r, "empty.flac")[0]["reason"]
     == "empty file (0 bytes)" and unreadable(r, "empty.flac")[0]["annotations_lost"] == 2
     and "skipped" in log and "(2 annotation rows lost with it)" in log),
    ("truncated FLAC", lambda r, log: "cannot decode" in unreadable(r, "trunc.flac")[0]["reason"]),
    ("not audio", lambda r, log: "cannot decode" in unreadable(r, "fake.flac")[0]["reason"]),
    ("skipped count", lambda r, log: r["failed"] == 3 and "3 skipped (listed in" in log),
    ("stereo", lambda r, log: "downmixed 2 channels" in warning_of(r, "stereo.flac")),
    ("multi-channel", lambda r, log: "downmixed 4 channels" in warning_of(r, "multi.wav")),
    ("mixed sample rates", lambda r, log: set(r["source_sample_rates"]) == {str(SR), "16000"}
     and "2 sample rates" in log),
    ("NaN samples", lambda r, log: "2 non-finite samples set to 0" in warning_of(r, "nan.wav")),
    ("all-zero audio", lambda r, log: "every sample is 0" in warning_of(r, "zeros.flac")),
    ("much longer than the others", lambda r, log: "over 4x the median" in warning_of(r, "long.flac")),
    ("shorter than a crop: cached at its length", lambda r, log: r["duration_s"]["min"] == 0.5),
    ("duplicate row", lambda r, log: problem_rows(r, "the same as an earlier row") == [("train_tp.csv", 12)]),
    ("unknown recording id", lambda r, log: ("train_tp.csv", 13) in problem_rows(
        r, "recording_id is not a readable train recording (see 'unreadable')")),
    ("species outside the class list", lambda r, log: problem_rows(
        r, "class is not in the class list") == [("train_tp.csv", 14)]),
    ("t_min >= t_max", lambda r, log: problem_rows(r, "t_min >= t_max") == [("train_tp.csv", 15)]
     and "1 annotation rows dropped: t_min >= t_max (first: train_tp.csv row 15" in log),
    ("box after the end of the recording", lambda r, log: problem_rows(
        r, "the box lies outside the recording") == [("train_tp.csv", 16)]),
    ("box sticking out: clipped", lambda r, log: problem_rows(
        r, "the box sticks out of the recording") == [("train_tp.csv", 17)]),
    ("frequency above sr/2: clipped", lambda r, log: problem_rows(
        r, "f_min/f_max outside 0..sr/2 of the recording") == [("train_tp.csv", 18)]),
    ("counts", lambda r, log: r["annotations_dropped"]["recording_missing_or_unreadable"] == 3
     and r["annotations_clipped"] == {"time_clipped": 1, "frequency_clipped": 1}),
])
def test_bad_audio_and_rows_are_reported_and_the_run_goes_on(bad_run, case, check):
    report, log, _ = bad_run
    assert check(report, log), case


def test_clipped_rows_are_kept_clipped_and_dropped_rows_are_gone(bad_run):
    import pandas as pd
    _, _, run_dir = bad_run
    ann = pd.read_csv(run_dir / "annotations.csv")
    by_row = ann.set_index("row")
    assert by_row.loc[17, "t_max"] == pytest.approx(3.0) and by_row.loc[18, "f_max"] == SR / 2
    assert not set(ann["row"]) & {12, 13, 14, 15, 16, 19, 20}
    assert len(pd.read_csv(run_dir / "recordings.csv")) == 16 - 3 + 1  # train files, unreadable ones, one test file


@pytest.mark.parametrize("change, message", [
    (lambda t: t.rename(columns={"t_min": "t_mn"}), r"missing column\(s\) \['t_min'\].*'t_mn' looks like 't_min'"),
    (lambda t: t.assign(t_min=t["t_min"].astype(object).where(t.index != 1, "abc")),
     "train_tp.csv row 3: t_min='abc' is not a number"),
    (lambda t: t.assign(species_id=t["species_id"].astype(object).where(t.index != 0, "s3")),
     "train_tp.csv row 2: species_id='s3' is not an integer"),
    (lambda t: t.assign(t_max=t["t_max"].where(t.index != 4)), "train_tp.csv row 6: t_max is empty"),
    (None, "train_tp.csv is empty"),
])
def test_table_mistakes_that_stop_name_the_file_row_and_value(tmp_path, scripts, change, message):
    import pandas as pd
    write_bad_dataset(tmp_path / "data")
    tp = tmp_path / "data" / "train_tp.csv"
    if change is None:
        tp.write_text("")
    else:
        change(pd.read_csv(tp)).to_csv(tp, index=False)
    module = scripts("01_preprocess")
    cfg = parse_cfg(module.CFG, "preprocess", [f"--input_dir={tmp_path / 'data'}",
                                               f"--work_dir={tmp_path / 'w'}", "--workers=1"])
    with pytest.raises(ConfigError, match=message):
        module.main(cfg)
    assert not (tmp_path / "w").exists()  # stopped before any decoding


def test_birdclef_secondary_labels_that_are_not_a_list():
    from common.layouts.birdclef2021 import parse_secondary
    with pytest.raises(ConfigError, match=r"train_metadata.csv row 7: secondary_labels 'amerob' "
                                          "is not a list"):
        parse_secondary("amerob", "train_metadata.csv row 7")
