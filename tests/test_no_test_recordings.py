"""Issue 21: a run whose data has no test recordings ends cleanly. The tiny BirdCLEF-2021
demo (no test soundscapes) and an RFCx-layout folder whose test/ is empty or missing go
through 01 -> 02 -> 05: 05 blends on the OOF predictions, writes report.md/report.json,
pictures of held-out recordings and summary.json, prints one line saying there is nothing
to submit, writes no submission.csv and exits 0."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from common import blend, metrics
from common.demos.rfcx import DemoSpec, write_rfcx_demo
from common.demos.birdclef import BirdDemoSpec, write_birdclef_demo
from common.segments import SegmentSet
from tests.conftest import run_script

BIRD = ["--cfg_file=profiles/birdclef_demo.json"]
RFCX = ["--cfg_file=profiles/demo.json"]


def only_run(work, stage):
    found = [p for p in (work / stage).iterdir() if (p / "manifest.json").exists()]
    assert len(found) == 1, found
    return found[0]


def check_clean_end(proc, work) -> tuple:
    """What every layout must show: exit 0, no traceback, one 'nothing to submit' line,
    report and summary written, no submission. Returns (run folder, summary, report)."""
    assert proc.returncode == 0
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    lines = [line for line in proc.stdout.splitlines() if "nothing to submit" in line]
    assert len(lines) == 1 and lines[0].startswith("nothing to submit: ")
    assert "no test recordings" in lines[0] and "OOF" in lines[0]
    run = only_run(work, "ensemble")
    assert not (run / "submission.csv").exists()
    assert not list(run.glob("test_*.csv"))
    rep = json.loads((run / "report.json").read_text())
    assert rep["rows"][-1]["run"].startswith("blend") and "test_lwlrap" not in rep["rows"][-1]
    assert "no test scores" in (run / "report.md").read_text()
    summary = json.loads((work / "summary.json").read_text())["ensemble"]
    assert summary["tag"] == run.name and summary["submission"] is None
    assert "no test recordings" in summary["nothing_to_submit"]
    assert 0 <= summary["cv_lwlrap"] <= 1
    assert json.loads((run / "manifest.json").read_text())["finished"]
    return run, summary, rep


# ----------------------------------------------------------------------------- BirdCLEF 2021
def test_birdclef_without_test_soundscapes_ends_cleanly(tmp_path):
    data, work = tmp_path / "data", tmp_path / "work"
    write_birdclef_demo(data, BirdDemoSpec(seed=2, n_classes=3, clips_per_class=6,
                                           clip_seconds=(5.0,), n_soundscapes=1,
                                           soundscape_seconds=20.0), workers=2)
    assert not (data / "test_soundscapes").exists()
    io = [f"--input_dir={data}", f"--work_dir={work}"]
    run_script("01_preprocess", *BIRD, *io, "--workers=2")
    train = [*BIRD, *io, "--epochs=1", "--batch_size=8"]
    run_script("02_train_stage1", *train, "--tag=a")
    run_script("02_train_stage1", *train, "--tag=b", "--seed=7", "--loss=lsep")
    proc = run_script("05_ensemble", *BIRD, *io, "--runs=stage1/a,stage1/b", "--blend=oof",
                      "--n_pictures=2", check=False)
    run, summary, rep = check_clean_end(proc, work)
    assert "BirdCLEF 2021 layout" in summary["nothing_to_submit"]
    # the blend's soundscape F1: the run weights applied to the runs' soundscape
    # probabilities, scored by the BirdCLEF 2021 rule at 0.5, as stage 1 reports it
    weights = [rep["weights"][f"stage1/{t}"] for t in ("a", "b")]
    preds = [pd.read_csv(work / "stage1" / t / "soundscape_pred.csv", dtype={"recording_id": str})
             for t in ("a", "b")]
    prep = only_run(work, "preprocess")
    classes = json.loads((prep / "classes.json").read_text())["classes"]
    ann = pd.read_csv(prep / "annotations.csv", dtype={"recording_id": str})
    truth = SegmentSet(preds[0][["recording_id", "t_min", "t_max"]], ann, classes, 32000, 5.0).truth
    probs = blend.weighted_mean([p[classes].to_numpy() for p in preds], weights)
    assert summary["soundscape_f1"] == pytest.approx(metrics.row_f1(truth, probs, 0.5)["f1"])
    assert rep["rows"][-1]["soundscape_f1"] == pytest.approx(summary["soundscape_f1"])
    assert {"local_f1", "soundscape_f1"} <= set(rep["rows"][0])  # each run's own figures too
    said = next(line for line in proc.stdout.splitlines() if line.startswith("nothing to submit"))
    assert f"soundscape F1 {summary['soundscape_f1']:.4f}" in said
    pictured = {p.stem for p in (run / "pictures").glob("*.png")} - {"species_ap", "blend_weights"}
    oof = set(pd.read_csv(work / "stage1" / "a" / "oof.csv", dtype={"recording_id": str})
              ["recording_id"])
    assert len(pictured) == 2 and pictured <= oof  # held-out clips of fold 0, not test ones


# ----------------------------------------------------------------------------- RFCx layout
@pytest.mark.parametrize("test_dir", ["empty", "missing"])
def test_rfcx_without_test_recordings_ends_cleanly(tmp_path, test_dir):
    data, work = tmp_path / "data", tmp_path / "work"
    write_rfcx_demo(data, DemoSpec(seed=4, n_train=24, n_test=1, duration=6.0,
                                   sample_rate=32000), workers=2)
    if test_dir == "empty":  # test_truth.csv stays: it must not be read against no recording
        for path in (data / "test").iterdir():
            path.unlink()
    else:
        shutil.rmtree(data / "test")
        (data / "test_truth.csv").unlink()
    io = [f"--input_dir={data}", f"--work_dir={work}"]
    log = run_script("01_preprocess", *RFCX, *io, "--n_folds=2", "--workers=2").stdout
    said = [line for line in log.splitlines() if line.startswith("no test recordings")]
    assert len(said) == 1 and str(data / "test") in said[0]
    assert ("holds no audio file" if test_dir == "empty" else "is missing") in said[0]
    rec = pd.read_csv(only_run(work, "preprocess") / "recordings.csv")
    assert len(rec) == 24 and set(rec["split"]) == {"train"}
    run_script("02_train_stage1", *RFCX, *io, "--epochs=1", "--min_epoch_steps=0")
    stage1 = json.loads((work / "summary.json").read_text())["stage1"]
    assert 0 <= stage1["cv_lwlrap"] <= 1 and "test_lwlrap" not in stage1
    runs = "--runs=stage1/latest"
    if test_dir == "empty":  # the rest of `make demo`: stage 2, pseudo labels, stage 3
        small = ["--epochs=1", "--tp_per_batch=4", "--fp_per_batch=4"]  # 11 TP rows per fold
        run_script("04_train_stage3", "--stage=stage2", *RFCX, *io, *small)
        run_script("03_pseudo_label", *RFCX, *io, "--min_votes=2", "--threshold=0.5")
        run_script("04_train_stage3", *RFCX, *io, *small)
        runs = "--runs=stage3/latest,stage1/latest"
    raw = ["--calibrate=false", "--prior_scaling=none"] if test_dir == "missing" else []
    proc = run_script("05_ensemble", *RFCX, *io, runs, "--n_pictures=1", *raw, check=False)
    run, summary, rep = check_clean_end(proc, work)
    assert str(data / "test") in summary["nothing_to_submit"]
    assert "soundscape_f1" not in summary  # the RFCx layout has no labelled soundscapes
    oof = pd.read_csv(only_run(work, "stage1") / "oof.csv", dtype={"recording_id": str})
    if test_dir == "missing":  # one run, uncalibrated: the blend's CV is the run's own
        assert summary["cv_lwlrap"] == pytest.approx(
            json.loads((only_run(work, "stage1") / "metrics.json").read_text())["cv_lwlrap"])
    else:
        assert [r["run"].split("/")[0] for r in rep["rows"][:-1]] == ["stage3", "stage1"]
    pictured = {p.stem for p in (run / "pictures").glob("*.png")} - {"species_ap", "blend_weights"}
    assert pictured == {sorted(oof["recording_id"])[0]}
    assert np.isfinite(rep["rows"][-1]["cv_lwlrap"])
