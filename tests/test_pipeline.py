"""End to end on a tiny demo: 01 -> 02 -> 04 (stage 2) -> 03 -> 04 (stage 3), as `make demo`
runs them, with real files between the stages. Also the user-facing failure modes of 01:
an unreadable audio file is reported by name and skipped; a CSV with a missing column
stops with a message naming it."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from common import provenance
from common.demos.rfcx import DemoSpec, write_rfcx_demo
from common.sed import load_checkpoint
from tests.conftest import run_script

TINY = ["--cfg_file=profiles/demo.json", "--n_folds=3", "--workers=2"]
TRAIN = ["--cfg_file=profiles/demo.json", "--epochs=2"]


@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    data = root / "data"
    write_rfcx_demo(data, DemoSpec(seed=3, n_train=36, n_test=10, duration=10.0,
                                   sample_rate=32000), workers=2)
    (data / "train" / "zz_corrupt.flac").write_bytes(b"this is not audio" * 10)
    return root, data


@pytest.fixture(scope="module")
def pipeline(tiny_demo):
    root, data = tiny_demo
    work = root / "work"
    io = [f"--input_dir={data}", f"--work_dir={work}"]
    logs = {"01": run_script("01_preprocess", *TINY, *io).stdout}
    logs["02"] = run_script("02_train_stage1", *TRAIN, *io).stdout
    logs["04s2"] = run_script("04_train_stage3", "--stage=stage2", *TRAIN, *io).stdout
    logs["03"] = run_script("03_pseudo_label", "--cfg_file=profiles/demo.json", "--min_votes=2",
                            "--threshold=0.3", "--target_precision=0",
                            *io).stdout
    logs["04s3"] = run_script("04_train_stage3", *TRAIN, *io).stdout
    logs["05"] = run_script("05_ensemble", "--cfg_file=profiles/demo.json",
                            "--runs=stage3/latest,stage1/latest", "--n_pictures=1", *io).stdout
    return work, logs


def only_run(work, stage):
    runs = [p for p in (work / stage).iterdir() if (p / "manifest.json").exists()]
    assert len(runs) == 1
    return runs[0]


def test_preprocess_reports_corrupt_file_and_caches_the_rest(pipeline, tiny_demo):
    work, logs = pipeline
    run = only_run(work, "preprocess")
    report = json.loads((run / "report.json").read_text())
    assert report["failed"] == 1
    assert report["unreadable"][0]["file"].endswith("zz_corrupt.flac")
    assert report["cached"] == 46
    assert "zz_corrupt.flac" in logs["01"]
    rec = pd.read_csv(run / "recordings.csv")
    assert len(list((run / "waves").glob("*.npy"))) == len(rec) == 46
    assert np.allclose(rec["duration"], 10.0, atol=1e-3)
    folds = pd.read_csv(run / "folds.csv")
    assert folds["recording_id"].is_unique
    fp_only = folds[~folds["has_tp"]]
    assert len(fp_only) and fp_only["fold"].between(0, folds["fold"].max()).all()
    assert json.loads((run / "classes.json").read_text())["classes"] == [f"s{i}" for i in range(24)]


def test_stage1_artifacts_and_summary(pipeline):
    work, logs = pipeline
    run = only_run(work, "stage1")
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["finished"] and manifest["config"]["epochs"] == 2
    oof = pd.read_csv(run / "oof.csv")
    folds = pd.read_csv(only_run(work, "preprocess") / "folds.csv")
    assert sorted(oof["recording_id"].astype(str)) == sorted(folds.loc[folds["has_tp"], "recording_id"].astype(str))
    history = pd.read_csv(run / "history.csv")
    assert len(history) == 3 * 2
    # the demo profile validates from epoch val_from (clamped to the last epoch): epoch 0 of
    # each fold is skipped (NaN, never the best), the last one is scored
    assert history.loc[history["epoch"] == 0, "val_lwlrap"].isna().all()
    assert history.loc[history["epoch"] == 1, "val_lwlrap"].between(0, 1).all()
    assert (run / "curves.png").stat().st_size > 1000
    summary = json.loads((work / "summary.json").read_text())
    for key in ("cv_lwlrap", "test_lwlrap", "test_prevalence_baseline", "seconds"):
        assert 0 <= summary["stage1"][key] <= (1 if key != "seconds" else 1e5)
    assert "CV LWLRAP" in logs["02"] and "prevalence baseline" in logs["02"]
    table = (work / "experiments.md").read_text()
    assert "resnet10t" in table and "64x161" in table


def test_checkpoint_is_self_describing(pipeline):
    work, _ = pipeline
    model, ckpt = load_checkpoint(only_run(work, "stage1") / "fold0.pth")
    assert ckpt["fold"] == 0 and ckpt["model_cfg"]["n_classes"] == 24
    out = model(torch.zeros(2, 5 * 32000))
    assert out["clip_logit"].shape == (2, 24) and out["frame_prob"].shape == (2, 161, 24)


def test_stage2_pseudo_stage3_chain(pipeline):
    work, logs = pipeline
    s2, s3 = only_run(work, "stage2"), only_run(work, "stage3")
    pseudo = only_run(work, "pseudo")
    assert json.loads((s3 / "manifest.json").read_text())["inputs"]["pseudo"] == pseudo.name
    assert json.loads((pseudo / "manifest.json").read_text())["inputs"]["source"] == f"stage2/{s2.name}"
    table = pd.read_csv(pseudo / "pseudo_labels.csv", dtype={"recording_id": str, "voters": str})
    assert list(table.columns) == ["recording_id", "window", "t_start", "t_end", "class",
                                   "score", "votes", "n_models", "voters", "fold", "label",
                                   "target"]
    assert table["target"].isna().all()  # soft targets only with --soft on unlabeled recordings
    summary = json.loads((work / "summary.json").read_text())
    for section in ("stage2", "stage3"):
        assert 0 <= summary[section]["cv_lwlrap"] <= 1
    for key in ("positives", "recall_vs_tp", "fp_rate_vs_fp"):
        assert key in summary["pseudo"]
    pseudo_summary = json.loads((pseudo / "summary.json").read_text())
    assert pseudo_summary["recordings_without_model"] == 0  # FP-only recordings too have a voter
    assert sum(pseudo_summary["positives_on"].values()) == pseudo_summary["positives"]
    assert (pseudo / "thresholds.csv").is_file()
    folds = pd.read_csv(only_run(work, "preprocess") / "folds.csv", dtype={"recording_id": str})
    fp_only = folds[~folds["has_tp"]]
    for run in (s2, s3):  # fold k's models never train on fold k's FP-only recordings, others do
        seen = pd.read_csv(run / "trained_on.csv", dtype={"recording_id": str})
        for fold, part in fp_only.groupby("fold"):
            ids = set(part["recording_id"])
            assert ids.isdisjoint(seen.loc[seen["fold"] == fold, "recording_id"])
            assert ids <= set(seen.loc[seen["fold"] != fold, "recording_id"])
    trained = pd.read_csv(s3 / "trained_on.csv", dtype={"recording_id": str})
    test_ids = set(pd.read_csv(only_run(work, "preprocess") / "recordings.csv", dtype={"recording_id": str})
                   .query("split == 'test'")["recording_id"])
    pseudo_test = set(table.loc[table["label"] > 0, "recording_id"]) & test_ids
    # stage 3 trains on the test recordings that got pseudo positives
    assert pseudo_test and pseudo_test <= set(trained["recording_id"])


def test_pseudo_provenance_is_clean_for_every_fold(pipeline):
    """Built from trained_on.csv and the voters alone: no pseudo row that fold k's stage 3
    trained on was voted by a model that trained on a validation recording of fold k."""
    work, _ = pipeline
    s2, s3 = only_run(work, "stage2"), only_run(work, "stage3")
    table = pd.read_csv(only_run(work, "pseudo") / "pseudo_labels.csv",
                        dtype={"recording_id": str, "voters": str})
    folds = pd.read_csv(only_run(work, "preprocess") / "folds.csv", dtype={"recording_id": str})
    seen = pd.read_csv(s2 / "trained_on.csv", dtype={"recording_id": str})
    seen = {f: set(g["recording_id"]) for f, g in seen.groupby("fold")}
    s3_seen = pd.read_csv(s3 / "trained_on.csv", dtype={"recording_id": str})
    assert len(table)
    total = 0
    for k in sorted(folds["fold"].unique()):
        val = set(folds.loc[(folds["fold"] == k) & folds["has_tp"], "recording_id"])
        voters_of = {j for j in seen if seen[j] & val}  # models that carry fold k's labels
        kept, dropped = provenance.clean_rows(table, k, provenance.clean_voters(seen, folds, k),
                                              folds)
        for voters in kept["voters"]:
            assert not (provenance.split_voters(voters) & voters_of)
        assert dropped > 0  # the other folds' rows are not clean for fold k
        fold_ids = set(s3_seen.loc[s3_seen["fold"] == k, "recording_id"])
        total += len(kept)
        assert not (val & fold_ids)
    assert total > 0


def test_second_round_keeps_votes_on_test_recordings(pipeline, tiny_demo):
    """make rounds: stage-3 models trained on test recordings (their own pseudo labels) vote
    on them again; eligibility follows label provenance, not trained_on.csv alone."""
    work, _ = pipeline
    root, data = tiny_demo
    io = [f"--input_dir={data}", f"--work_dir={work}"]
    run_script("03_pseudo_label", "--cfg_file=profiles/demo.json", "--source=stage3",
               "--min_votes=2", "--threshold=0.3", "--target_precision=0", "--tag=round2", *io)
    table = pd.read_csv(work / "pseudo" / "round2" / "pseudo_labels.csv",
                        dtype={"recording_id": str})
    test_ids = set(pd.read_csv(only_run(work, "preprocess") / "recordings.csv",
                               dtype={"recording_id": str}).query("split == 'test'")["recording_id"])
    s3_seen = set(pd.read_csv(only_run(work, "stage3") / "trained_on.csv",
                              dtype={"recording_id": str})["recording_id"])
    summary = json.loads((work / "pseudo" / "round2" / "summary.json").read_text())
    assert test_ids & s3_seen  # round 1 trained on test recordings ...
    assert summary["recordings_without_model"] == 0  # ... and they still get voters
    assert set(table["recording_id"]) & test_ids & s3_seen


def test_ensemble_writes_a_checked_submission(pipeline, tiny_demo):
    work, logs = pipeline
    _, data = tiny_demo
    run = only_run(work, "ensemble")
    sub = pd.read_csv(run / "submission.csv")
    sample = pd.read_csv(data / "sample_submission.csv")
    assert list(sub.columns) == list(sample.columns)
    assert list(sub["recording_id"]) == list(sample["recording_id"])
    assert not sub.isna().any().any()
    summary = json.loads((work / "summary.json").read_text())
    assert 0 <= summary["ensemble"]["test_lwlrap"] <= 1
    assert summary["ensemble"]["submission"].endswith("submission.csv")
    assert (run / "report.md").exists()


def test_missing_column_stops_with_its_name(tiny_demo, tmp_path):
    _, data = tiny_demo
    bad = tmp_path / "bad"
    shutil.copytree(data, bad)
    tp = pd.read_csv(bad / "train_tp.csv").drop(columns=["t_max"])
    tp.to_csv(bad / "train_tp.csv", index=False)
    proc = run_script("01_preprocess", f"--input_dir={bad}", f"--work_dir={tmp_path / 'w'}",
                      check=False)
    assert proc.returncode != 0
    assert "t_max" in proc.stderr and "train_tp.csv" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_unknown_setting_suggests_the_close_name(tmp_path):
    proc = run_script("02_train_stage1", "--epoch=3", f"--work_dir={tmp_path}", check=False)
    assert proc.returncode != 0 and "--epochs" in proc.stderr and "Traceback" not in proc.stderr
