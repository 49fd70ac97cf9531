"""Issue 19, BirdCLEF end to end: the 2023-2025 layout (common/layouts/birdclef2023.py), the
test soundscapes' 5 s rows (common/layouts/soundscapes.py), the segment submissions
(common/segment_submission.py: 2021 `birds` strings, 2023-2025 probabilities) and bad input;
then 01 -> 02 -> 05 on tiny demos of both layouts, each writing a submission.csv that
passes the shape check against the sample submission."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from common import layouts, segment_submission as subm
from common.cli import ConfigError, parse_cfg
from common.layouts import birdclef2021, soundscapes
from tests.conftest import load_script, run_script

PRE = load_script("01_preprocess")
CLASSES = ["b1", "a2", "c3"]  # submission order, not sorted


def tone(path, seconds, sr=32000, freq=1000.0):
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(round(seconds * sr))) / sr
    sf.write(str(path), (0.1 * np.sin(2 * np.pi * freq * t)).astype(np.float32), sr,
             format="OGG", subtype="VORBIS")


def layout_2023(root, train_name="train.csv", scapes=(("sc_1", 10.0),), labels=None):
    """A tiny BirdCLEF 2023-2025 folder: two clips per class, test soundscapes."""
    rows = []
    for i, cls in enumerate(labels or CLASSES * 2):
        tone(root / "train_audio" / cls / f"XC{i}.ogg", 3.0)
        rows.append({"primary_label": cls, "secondary_labels": "['a2']" if i == 0 else "[]",
                     "filename": f"{cls}/XC{i}.ogg", "rating": [0.0, 2.0, 4.5][i % 3]})
    pd.DataFrame(rows).to_csv(root / train_name, index=False)
    pd.DataFrame({"primary_label": CLASSES + ["zz9"], "common_name": "x"}).to_csv(
        root / "taxonomy.csv", index=False)
    for stem, seconds in scapes:
        tone(root / "test_soundscapes" / f"{stem}.ogg", seconds)
    ids = [f"{stem}_{end}" for stem, s in scapes for end in soundscapes.segment_ends(s)]
    pd.DataFrame({"row_id": ids, **{c: 0.0 for c in CLASSES}}).to_csv(
        root / "sample_submission.csv", index=False)


def cfg_of(root, *args):
    return parse_cfg(PRE.CFG, "preprocess", [f"--input_dir={root}", *args])


# ----------------------------------------------------------------------------- row naming
def test_segment_ends_count_a_last_partial_segment_of_half_or_more():
    assert soundscapes.segment_ends(60.0) == list(range(5, 61, 5))
    assert soundscapes.segment_ends(62.4)[-1] == 60    # 2.4 s left over: no row
    assert soundscapes.segment_ends(62.5)[-1] == 65    # 2.5 s: a row, named by the next 5
    assert soundscapes.segment_ends(5.0) == [5]
    rec = pd.DataFrame({"recording_id": ["2782_SSW_20170701", "tr"], "split": ["test", "train"],
                        "duration": [12.5, 30.0]})
    table = soundscapes.segment_table(rec, birdclef2021.site_prefix)
    assert table["row_id"].tolist() == ["2782_SSW_5", "2782_SSW_10", "2782_SSW_15"]
    assert table[["t_min", "t_max"]].values.tolist() == [[0, 5], [5, 10], [10, 15]]
    assert soundscapes.segment_table(rec, str)["row_id"].tolist()[0] == "2782_SSW_20170701_5"


def test_birds_strings_and_the_threshold_source():
    probs = np.array([[0.9, 0.1, 0.6], [0.2, 0.3, 0.1], [0.5, 0.5, 0.49]])
    assert subm.birds_strings(probs, CLASSES, 0.5) == ["b1 c3", "nocall", "b1 a2"]
    assert subm.birds_strings(probs, CLASSES, 0.95) == ["nocall"] * 3
    thr, why = subm.threshold_of({"soundscape_threshold": 0.3, "soundscape_f1_best": 0.7,
                                  "local_threshold": 0.6, "local_f1_best": 0.8})
    assert thr == 0.3 and "labelled soundscapes" in why  # soundscapes first, never test
    assert subm.threshold_of({"local_threshold": 0.6, "local_f1_best": 0.8})[0] == 0.6
    assert subm.threshold_of({})[0] == 0.5


def test_shape_check_names_what_differs():
    ids = ["s_5", "s_10"]
    good = pd.DataFrame({"row_id": ids, "birds": ["b1 c3", "nocall"]})
    subm.check(good, "birds", ["row_id", "birds"], ids, CLASSES)
    with pytest.raises(ValueError, match="row 0 is 's_5', expected 's_10'"):
        subm.check(good, "birds", ["row_id", "birds"], ids[::-1], CLASSES)
    with pytest.raises(ValueError, match="row_id='s_10' is 'xx'"):
        subm.check(good.assign(birds=["b1", "xx"]), "birds", ["row_id", "birds"], ids, CLASSES)
    probs = pd.DataFrame({"row_id": ids, "b1": [0.1, 1.2], "a2": 0.5, "c3": 0.5})
    with pytest.raises(ValueError, match="row_id='s_10', column 'b1' is not a probability"):
        subm.check(probs, "probabilities", ["row_id", *CLASSES], ids, CLASSES)
    with pytest.raises(ValueError, match="columns"):
        subm.check(probs[["row_id", "a2", "b1", "c3"]], "probabilities", ["row_id", *CLASSES],
                   ids, CLASSES)


def test_align_follows_the_sample_and_fills_a_missing_soundscape():
    ours = pd.DataFrame({"row_id": ["a_5", "a_10"], "b1": [0.2, 0.4], "a2": 0.1, "c3": 0.3})
    sample = pd.DataFrame({"row_id": ["a_10", "a_5", "b_5"], **{c: "0" for c in CLASSES}})
    out, facts = subm.align(ours, sample, "probabilities")
    assert out["row_id"].tolist() == ["a_10", "a_5", "b_5"] and facts["filled"] == ["b_5"]
    assert out["b1"].tolist() == pytest.approx([0.4, 0.2, 0.3])  # filled with the mean
    placeholder = pd.DataFrame({"row_id": ["soundscape_1446779_5"], **{c: "0" for c in CLASSES}})
    out, facts = subm.align(ours, placeholder, "probabilities")
    assert out["row_id"].tolist() == ["a_5", "a_10"] and not facts["aligned_to_sample"]
    birds = pd.DataFrame({"row_id": ["a_5", "a_10"], "birds": ["b1", "nocall"]})
    out, facts = subm.align(birds, pd.DataFrame({"row_id": ["a_5", "b_5"], "birds": "x"}),
                            "birds")
    assert out["birds"].tolist() == ["b1", "nocall"] and facts == {
        "aligned_to_sample": True, "filled": ["b_5"], "dropped": 1}


# ----------------------------------------------------------------------------- the 2023-2025 layout
@pytest.mark.parametrize("train_name", ["train.csv", "train_metadata.csv"])
def test_2023_layout_is_detected_and_read_in_the_sample_order(tmp_path, train_name):
    layout_2023(tmp_path, train_name, scapes=(("sc_1", 10.0), ("sc_2", 12.5)))
    inputs = layouts.read(tmp_path, cfg_of(tmp_path))
    assert inputs.layout == "birdclef2023" and inputs.classes == CLASSES
    assert inputs.submission == "probabilities" and inputs.label_unit == "clips"
    assert sorted(s for _, s, _ in inputs.files) == ["test"] * 2 + ["train"] * 6
    rec = pd.DataFrame([(r, s, 12.5 if r == "sc_2" else 10.0 if s == "test" else 3.0, 32000)
                        for r, s, _ in inputs.files],
                       columns=["recording_id", "split", "duration", "source_sr"])
    ann, truth, events = inputs.annotate(rec, {}, 32000)
    assert truth is None and events is None
    assert (ann["source"] == "primary").sum() == 6 and (ann["source"] == "secondary").sum() == 1
    assert set(ann["recording_id"]) == {f"XC{i}" for i in range(6)}  # never a soundscape
    rows = inputs.test_segments(rec)["row_id"].tolist()
    assert rows == ["sc_1_5", "sc_1_10", "sc_2_5", "sc_2_10", "sc_2_15"]
    assert rows == pd.read_csv(tmp_path / "sample_submission.csv")["row_id"].tolist()
    # min_rating leaves out the clip rated 2.0 below 3 and keeps the unrated (0) ones
    inputs = layouts.read(tmp_path, cfg_of(tmp_path, "--min_rating=3"))
    assert sum(s == "train" for _, s, _ in inputs.files) == 4
    assert inputs.notes["clips_below_min_rating"] == 2


def test_a_2021_folder_is_still_the_2021_layout(tmp_path):
    (tmp_path / "train_metadata.csv").write_text("primary_label,secondary_labels,filename\n"
                                                 "b1,[],XC1.ogg\n")
    tone(tmp_path / "train_short_audio" / "b1" / "XC1.ogg", 3.0)
    tone(tmp_path / "test_soundscapes" / "7_COR_2021.ogg", 10.0)
    inputs = layouts.read(tmp_path, cfg_of(tmp_path))
    assert inputs.layout == "birdclef2021" and inputs.submission == "birds"
    rec = pd.DataFrame({"recording_id": ["7_COR_2021"], "split": ["test"], "duration": [10.0]})
    assert inputs.test_segments(rec)["row_id"].tolist() == ["7_COR_5", "7_COR_10"]


# ----------------------------------------------------------------------------- bad input
def test_a_train_class_missing_from_the_sample_submission_names_row_and_value(tmp_path):
    layout_2023(tmp_path, labels=CLASSES + ["zz9"])
    with pytest.raises(ConfigError, match=r"train.csv row 5: primary_label 'zz9' is not a "
                                          r"column of .*sample_submission.csv"):
        layouts.read(tmp_path, cfg_of(tmp_path))


def test_a_sample_class_missing_from_the_taxonomy_is_named(tmp_path):
    layout_2023(tmp_path)
    pd.DataFrame({"primary_label": ["b1", "c3"]}).to_csv(tmp_path / "taxonomy.csv", index=False)
    with pytest.raises(ConfigError, match=r"class column 'a2' \(column 3\) is not a "
                                          r"primary_label of .*taxonomy.csv"):
        layouts.read(tmp_path, cfg_of(tmp_path))


def test_a_soundscape_shorter_than_5_s_is_named_with_its_length(tmp_path):
    layout_2023(tmp_path, scapes=(("sc_1", 10.0), ("sc_short", 3.2)))
    with pytest.raises(ConfigError, match=r"sc_short.ogg: the test soundscape is 3.20 s long, "
                                          r"shorter than one 5 s segment"):
        layouts.read(tmp_path, cfg_of(tmp_path))


def test_a_2021_test_soundscape_without_site_in_its_name_is_named(tmp_path):
    (tmp_path / "train_metadata.csv").write_text("primary_label,secondary_labels,filename\n"
                                                 "b1,[],XC1.ogg\n")
    tone(tmp_path / "test_soundscapes" / "recording.ogg", 10.0)
    with pytest.raises(ConfigError, match=r"recording.ogg: a BirdCLEF 2021 test soundscape is "
                                          r"named <audio_id>_<site>_<date>.ogg"):
        layouts.read(tmp_path, cfg_of(tmp_path))


def test_unreadable_oggs_are_skipped_and_named(tmp_path, capsys):
    """A broken clip is skipped with its annotation rows counted; a broken test soundscape
    has no segment rows (05 then fills the sample's rows of it, named in the report)."""
    layout_2023(tmp_path, scapes=(("sc_1", 10.0), ("sc_bad", 10.0)))
    (tmp_path / "train_audio" / "b1" / "XC0.ogg").write_bytes(b"OggS not really")
    (tmp_path / "test_soundscapes" / "sc_bad.ogg").write_bytes(b"\x00" * 64)
    run = PRE.main(cfg_of(tmp_path, f"--work_dir={tmp_path / 'work'}", "--workers=1",
                          "--n_folds=2", "--sample_rate=32000"))
    said = capsys.readouterr().out
    assert "WARNING: skipped" in said and "XC0.ogg" in said and "sc_bad.ogg" in said
    assert "(2 annotation rows lost with it)" in said  # primary + secondary label of XC0
    report = json.loads((run / "report.json").read_text())
    assert {b["file"].split("/")[-1] for b in report["unreadable"]} == {"XC0.ogg", "sc_bad.ogg"}
    table = pd.read_csv(run / "test_segments.csv")
    assert table["row_id"].tolist() == ["sc_1_5", "sc_1_10"]
    meta = json.loads((run / "classes.json").read_text())
    assert meta["classes"] == CLASSES and meta["submission"] == "probabilities"


# ----------------------------------------------------------------------------- end to end
TINY = dict(seed=1, n_classes=3, clips_per_class=6, clip_seconds=(5.0,), n_soundscapes=2,
            soundscape_seconds=10.0)


def end_to_end(tmp_path, data, profile) -> tuple:
    """01 -> 02 (1 fold, 1 epoch) -> 05; returns (05's stdout, the ensemble run folder)."""
    io = [f"--cfg_file={profile}", f"--input_dir={data}", f"--work_dir={tmp_path / 'work'}"]
    run_script("01_preprocess", *io, "--workers=2", "--n_folds=2")
    run_script("02_train_stage1", *io, "--folds=0", "--epochs=1", "--batch_size=8",
               "--min_epoch_steps=0")
    proc = run_script("05_ensemble", *io, "--n_pictures=1")
    assert "Traceback" not in proc.stderr
    return proc.stdout, next((tmp_path / "work" / "ensemble").iterdir())


def test_2023_demo_end_to_end_writes_a_checked_probability_submission(tmp_path):
    from common.demos.birdclef2023 import Bird2023DemoSpec, write_birdclef2023_demo
    data = tmp_path / "data"
    write_birdclef2023_demo(data, Bird2023DemoSpec(**TINY), workers=2)
    out, run = end_to_end(tmp_path, data, "profiles/birdclef2023_demo.json")
    sample = pd.read_csv(data / "sample_submission.csv")
    sub = pd.read_csv(run / "submission.csv")
    assert list(sub.columns) == list(sample.columns) and sub["row_id"].equals(sample["row_id"])
    assert sub["row_id"].tolist()[-3:] == ["soundscape_100037_5", "soundscape_100037_10",
                                           "soundscape_100037_15"]  # 12.5 s: a partial last row
    values = sub[sample.columns[1:]].to_numpy()
    assert np.isfinite(values).all() and ((values >= 0) & (values <= 1)).all()
    said = "5 rows (probabilities) for 2 test soundscapes, in the sample's order; shape checked"
    assert said in out
    summary = json.loads((tmp_path / "work" / "summary.json").read_text())
    assert summary["ensemble"]["submission_kind"] == "probabilities"
    stage1 = json.loads(next((tmp_path / "work" / "stage1").iterdir()).joinpath(
        "metrics.json").read_text())
    assert 0 <= stage1["local_roc_auc"] <= 1 and 0 <= stage1["local_cmap"] <= 1
    assert "local_roc_auc" in (run / "report.md").read_text()
    # the same segments through onnxruntime (issue 19): the same probabilities, timed
    assert summary["ensemble"]["infer_speed"]["runtime"] == "torch"
    proc = run_script("05_ensemble", "--cfg_file=profiles/birdclef2023_demo.json",
                      f"--input_dir={data}", f"--work_dir={tmp_path / 'work'}", "--n_pictures=0",
                      "--runtime=onnx", "--tag=onnx")
    onnx = pd.read_csv(tmp_path / "work" / "ensemble" / "onnx" / "submission.csv")
    assert onnx["row_id"].equals(sub["row_id"])
    np.testing.assert_allclose(onnx[sample.columns[1:]].to_numpy(), values, rtol=1e-4, atol=1e-6)
    speed = json.loads((tmp_path / "work" / "summary.json").read_text())["ensemble"]["infer_speed"]
    assert speed["runtime"] == "onnx" and speed["wall_s_per_audio_hour"] > 0
    assert "test inference (onnx" in proc.stdout and "per hour of audio" in proc.stdout


def test_2021_demo_with_test_soundscapes_writes_birds(tmp_path):
    from common.demos.birdclef import BirdDemoSpec, write_birdclef_demo
    data = tmp_path / "data"
    spec = {**TINY, "n_soundscapes": 1, "soundscape_seconds": 20.0, "n_test_soundscapes": 1}
    write_birdclef_demo(data, BirdDemoSpec(**spec), workers=2)
    out, run = end_to_end(tmp_path, data, "profiles/birdclef_demo.json")
    sample = pd.read_csv(data / "sample_submission.csv")
    sub = pd.read_csv(run / "submission.csv")
    assert list(sub.columns) == ["row_id", "birds"] and sub["row_id"].equals(sample["row_id"])
    assert sub["row_id"].tolist()[0] == "19500_SNE_5" and len(sub) == 4
    classes = json.loads(next((tmp_path / "work" / "preprocess").iterdir()).joinpath(
        "classes.json").read_text())["classes"]
    for cell in sub["birds"]:
        assert cell == "nocall" or set(cell.split()) <= set(classes)
    # the threshold came from the labelled soundscapes' F1 sweep, and gives these strings
    summary = json.loads((tmp_path / "work" / "summary.json").read_text())["ensemble"]
    assert summary["threshold"] == summary["soundscape_threshold"]
    probs = pd.read_csv(run / "test_segments_pred.csv")
    assert subm.birds_strings(probs[classes].to_numpy(), classes,
                              summary["threshold"]) == sub["birds"].tolist()
    assert "labelled soundscapes" in (run / "report.md").read_text()


def test_test_truth_of_the_demos_is_scored_in_both_formats(tmp_path):
    table = pd.DataFrame({"row_id": ["s_5", "s_10", "s_15"], "recording_id": "s"})
    probs = np.array([[0.9, 0.1, 0.2], [0.2, 0.8, 0.1], [0.1, 0.3, 0.4]])
    assert subm.score_truth(tmp_path, table, probs, CLASSES, None) == {}
    pd.DataFrame({"row_id": ["s_5", "s_10", "s_15"], "b1": [1, 0, 0], "a2": [0, 1, 0],
                  "c3": [0, 0, 1]}).to_csv(tmp_path / "test_soundscape_labels.csv", index=False)
    out = subm.score_truth(tmp_path, table, probs, CLASSES, None)
    assert out["test_roc_auc"] == 1.0 and out["test_segments"] == 3
    assert out["test_row_f1"] == pytest.approx(2 / 3)  # row 3: 0.4 < 0.5 -> nocall
    pd.DataFrame({"row_id": ["s_10", "s_5"], "birds": ["a2", "b1 c3"]}).to_csv(
        tmp_path / "test_soundscape_labels.csv", index=False)
    out = subm.score_truth(tmp_path, table, probs, CLASSES, 0.15)
    assert out["test_segments"] == 2  # s_15 has no truth: not scored
    # s_5: {b1, c3} vs truth {b1, c3} -> 1; s_10: {b1, a2} vs {a2} -> 2 / 3
    assert out["test_row_f1"] == pytest.approx((1 + 2 / 3) / 2)
