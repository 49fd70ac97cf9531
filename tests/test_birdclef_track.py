"""The bird-call F1 track end to end on a tiny BirdCLEF-layout demo: 01 reads the layout,
one sweep command trains a grid (1 fold, 1 epoch) and writes the table with local F1 and
soundscape F1 for every run; soundscapes never enter training."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from common.demos.birdclef import BirdDemoSpec, write_birdclef_demo
from tests.conftest import run_script

GRID = {"base": {"epochs": 1, "batch_size": 8}, "axes": [{"backbone": ["resnet10t", "wavenet"]}],
        "runs": [{"noise_white": 0, "noise_pink": 0, "noise_brown": 0, "max_per_class": 3,
                  "memo": "no noise"}]}


@pytest.fixture(scope="module")
def track(tmp_path_factory):
    root = tmp_path_factory.mktemp("birdclef")
    data, work = root / "data", root / "work"
    summary = write_birdclef_demo(data, BirdDemoSpec(seed=1, n_classes=3, clips_per_class=6,
                                                     clip_seconds=(5.0,), n_soundscapes=1,
                                                     soundscape_seconds=20.0), workers=2)
    proc = run_script("sweep", "--profile=profiles/birdclef_demo.json", f"--input_dir={data}",
                      f"--work_dir={work}", f"--grid={json.dumps(GRID)}", "--name=t")
    return summary, work, proc.stdout


def test_preprocess_reads_the_birdclef_layout(track):
    summary, work, _ = track
    run = next((work / "preprocess").iterdir())
    ann = pd.read_csv(run / "annotations.csv")
    meta = json.loads((run / "classes.json").read_text())
    assert (meta["layout"], meta["label_unit"]) == ("birdclef2021", "clips")
    assert (ann["source"] == "primary").sum() == summary["clips"] == 18
    scapes = pd.read_csv(run / "soundscapes.csv")
    assert len(scapes) == summary["soundscape_segments"] == 4
    folds = pd.read_csv(run / "folds.csv", dtype={"recording_id": str})
    assert not set(folds["recording_id"]) & set(scapes["recording_id"])  # never in a fold
    nocall = ann[(ann["source"] == "soundscape") & (ann["label"] < 0)]
    assert len(nocall) == 3 * summary["nocall_segments"]


def test_sweep_table_has_both_f1_for_every_run(track):
    _, work, stdout = track
    table = pd.read_csv(work / "sweeps" / "t.csv")
    assert len(table) == 3 and table["local_f1"].between(0, 1).all()
    assert table["soundscape_f1"].between(0, 1).all()
    md = (work / "sweeps" / "t.md").read_text()
    assert "## resnet10t" in md and "## wavenet" in md and "**" in md and "no noise" in md
    assert "best thr local" in md and "64x251" in md  # resolution: 5 s at 32 kHz, hop 640
    for tag in ("t_00", "t_01", "t_02"):
        run = work / "stage1" / tag
        metrics = json.loads((run / "metrics.json").read_text())
        assert {"local_f1", "local_f1_best", "local_threshold", "soundscape_f1",
                "soundscape_threshold"} <= set(metrics)
        trained = set(pd.read_csv(run / "trained_on.csv")["recording_id"].astype(str))
        scapes = set(pd.read_csv(run / "soundscape_pred.csv")["recording_id"].astype(str))
        assert scapes and not trained & scapes
    capped = pd.read_csv(work / "stage1" / "t_02" / "trained_on.csv")
    assert capped["recording_id"].nunique() == 3 * 3  # max_per_class=3, 3 classes


def test_sweep_skips_finished_runs(track):
    _, work, _ = track
    proc = run_script("sweep", "--profile=profiles/birdclef_demo.json", f"--work_dir={work}",
                      f"--grid={json.dumps(GRID)}", "--name=t")
    assert proc.stdout.count("finished before, skipped") == 3
