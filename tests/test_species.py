"""RFCx song types (01's classes=species_songtype): the class -> species map
(common/species.py), 01 on a hand-made RFCx table (classes, rows, folds, classes.json, the
test truth per species), the mistakes that stop, and a tiny demo run 01 -> 05 on the song-type
classes whose submission has the species columns."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from common import blend, layouts, metrics
from common.cli import ConfigError, parse_cfg
from common.demos.rfcx import DemoSpec, write_rfcx_demo
from common.prepared import load_prepared
from common.species import SpeciesMap
from tests.conftest import load_script, run_script

PRE = load_script("01_preprocess")
SONG = {"s0": "s0", "s1_t1": "s1", "s1_t4": "s1", "s2": "s2"}


# ----------------------------------------------------------------------------- the map
def test_species_score_is_the_max_over_its_song_types_in_sample_order():
    species = SpeciesMap(list(SONG), SONG, ["s0", "s1", "s2"])
    scores = np.array([[0.1, 0.2, 0.9, 0.3],
                       [0.5, 0.7, -1.0, 0.0]])
    np.testing.assert_allclose(species.to_species(scores), [[0.1, 0.9, 0.3], [0.5, 0.7, 0.0]])
    assert species.species("s1_t4") == "s1" and species.species("s1") == "s1"
    assert not species.identity and species.members == [[0], [1, 2], [3]]
    # the submission takes the sample's column order, whatever the species order
    sample = pd.DataFrame({"recording_id": ["b", "a"], "s2": 0, "s0": 0, "s1": 0})
    sub, filled = blend.make_submission(["a", "b"], species.to_species(scores), species.columns,
                                        sample)
    blend.check_submission(sub, sample.astype(str))
    assert list(sub.columns) == ["recording_id", "s2", "s0", "s1"] and not filled
    assert sub.values.tolist() == [["b", 0.0, 0.5, 0.7], ["a", 0.3, 0.1, 0.9]]
    # LWLRAP per species: a call of s1 in song type 4 found by the s1_t1 class still counts
    truth = np.array([[0, 0, 1, 0], [0, 0, 1, 0]])
    assert species.lwlrap(truth, scores) == pytest.approx(1.0)
    assert metrics.lwlrap(truth, scores) < 1.0  # over the classes it is not a hit
    same = SpeciesMap(["s0", "s1"])
    assert same.identity
    np.testing.assert_array_equal(same.to_species(scores[:, :2]), scores[:, :2])
    assert same.to_json() == {"species": ["s0", "s1"], "species_of": {"s0": "s0", "s1": "s1"}}


def test_a_map_whose_species_are_not_the_columns_stops():
    with pytest.raises(ConfigError, match=r"species \['s1'\].*not submission columns"):
        SpeciesMap(list(SONG), SONG, ["s0", "s2"])
    with pytest.raises(ConfigError, match=r"columns \['s9'\] have no class"):
        SpeciesMap(list(SONG), SONG, ["s0", "s1", "s2", "s9"])


# ----------------------------------------------------------------------------- 01
TP = [("a", 0, 1), ("b", 16, 1), ("c", 16, 4), ("d", 23, 4), ("e", 9, 1), ("h", 0, 1),
      ("i", 16, 1)]  # e: species 9 is no submission column
FP = [("f", 5, 1), ("g", 16, 4), ("a", 23, 4)]
SPECIES = ["s0", "s5", "s16", "s23"]


def tiny_rfcx(root, songtype_cell=None):
    """An RFCx-layout folder: 3 s recordings at 16 kHz, song types 1 and 4 of s16, only
    song type 4 of s23, s5 in an FP row only."""
    for split, ids in (("train", "abcdefghi"), ("test", ["t0", "t1"])):
        (root / split).mkdir(parents=True)
        for rid in ids:
            t = np.arange(3 * 16000) / 16000
            sf.write(root / split / f"{rid}.wav", (0.1 * np.sin(2 * np.pi * 900 * t)), 16000)
    for name, rows in (("train_tp.csv", TP), ("train_fp.csv", FP)):
        table = pd.DataFrame([(r, s, t, 0.5, 800.0, 1.5, 3000.0) for r, s, t in rows],
                             columns=["recording_id", "species_id", "songtype_id", "t_min",
                                      "f_min", "t_max", "f_max"])
        if songtype_cell is not None and name == "train_tp.csv":
            table["songtype_id"] = table["songtype_id"].astype(object)
            table.loc[2, "songtype_id"] = songtype_cell
        table.to_csv(root / name, index=False)
    pd.DataFrame({"recording_id": ["t0", "t1"], **{s: 0 for s in SPECIES}}).to_csv(
        root / "sample_submission.csv", index=False)
    pd.DataFrame({"recording_id": ["t0", "t1"], "s0": [1, 0], "s5": 0, "s16": [0, 1],
                  "s23": [1, 1]}).to_csv(root / "test_truth.csv", index=False)


def preprocess(root, work, *args):
    cfg = parse_cfg(PRE.CFG, "preprocess", [f"--input_dir={root}", f"--work_dir={work}",
                                            "--workers=1", "--n_folds=2", *args])
    return PRE.main(cfg)


def test_preprocess_makes_a_class_per_species_and_songtype(tmp_path):
    root = tmp_path / "rfcx"
    tiny_rfcx(root)
    run = preprocess(root, tmp_path / "work", "--classes=species_songtype", "--tag=song")
    meta = json.loads((run / "classes.json").read_text())
    assert meta["classes"] == ["s0", "s5", "s16_t1", "s16_t4", "s23"]
    assert meta["species"] == SPECIES
    assert meta["species_of"] == {"s0": "s0", "s5": "s5", "s16_t1": "s16", "s16_t4": "s16",
                                  "s23": "s23"}
    ann = pd.read_csv(run / "annotations.csv", dtype={"recording_id": str})
    got = sorted(zip(ann["recording_id"], ann["class"], ann["label"]))
    assert got == [("a", "s0", 1), ("a", "s23", -1), ("b", "s16_t1", 1), ("c", "s16_t4", 1),
                   ("d", "s23", 1), ("f", "s5", -1), ("g", "s16_t4", -1), ("h", "s0", 1),
                   ("i", "s16_t1", 1)]  # e (species 9) dropped and counted
    dropped = json.loads((run / "report.json").read_text())["annotations_dropped"]
    assert dropped["class_not_in_class_list"] == 1 and sum(dropped.values()) == 1
    prep = load_prepared(tmp_path / "work", "song")
    assert prep.species.columns == SPECIES and prep.classes == meta["classes"]
    ids, truth = prep.test_truth(root)
    assert ids == ["t0", "t1"] and truth.tolist() == [[1, 0, 0, 1], [0, 0, 1, 1]]
    # the folds follow the species, so the CV of both class modes uses the same recordings
    plain = preprocess(root, tmp_path / "work", "--tag=plain")
    assert json.loads((plain / "classes.json").read_text())["classes"] == SPECIES
    pd.testing.assert_frame_equal(pd.read_csv(plain / "folds.csv"), pd.read_csv(run / "folds.csv"))
    base = pd.read_csv(plain / "annotations.csv")
    assert sorted(base["class"]) == sorted(c.split("_")[0] for c in ann["class"])


@pytest.mark.parametrize("args, message", [
    (["--classes=songtype"], r"classes='songtype': choose species .* or species_songtype"),
    (["--classes=species_songtype", "--layout=boxes"],
     "classes=species_songtype: song types come from the songtype_id column of the RFCx"),
])
def test_bad_classes_setting_stops_before_any_work(tmp_path, args, message):
    root, work = tmp_path / "rfcx", tmp_path / "work"
    tiny_rfcx(root)
    with pytest.raises(ConfigError, match=message):
        preprocess(root, work, *args)
    assert not work.exists()


def test_a_songtype_that_is_not_an_integer_names_the_row(tmp_path):
    root = tmp_path / "rfcx"
    tiny_rfcx(root, songtype_cell="four")
    with pytest.raises(ConfigError, match="train_tp.csv row 4: songtype_id='four' is not an int"):
        layouts.read(root, parse_cfg(PRE.CFG, "preprocess", ["--classes=species_songtype"]))
    layouts.read(root, parse_cfg(PRE.CFG, "preprocess", []))  # classes=species never reads it


# ----------------------------------------------------------------------------- 01 -> 05
def test_demo_on_song_type_classes_submits_species(tmp_path):
    """The demo's s16 and s23 call in song types 1 and 4 (seed 2: 26 classes): every stage
    runs on the classes, every score and the submission are per species."""
    data, work = tmp_path / "data", tmp_path / "work"
    write_rfcx_demo(data, DemoSpec(seed=2, n_train=24, n_test=4, duration=6.0,
                                   sample_rate=32000), workers=2)
    io = ["--cfg_file=profiles/demo.json", f"--input_dir={data}", f"--work_dir={work}"]
    run_script("01_preprocess", *io, "--n_folds=2", "--workers=2", "--classes=species_songtype")
    prep = load_prepared(work)
    assert len(prep.classes) == 26 and len(prep.species.columns) == 24
    assert {"s16_t1", "s16_t4", "s23_t1", "s23_t4"} <= set(prep.classes)
    log = run_script("02_train_stage1", *io, "--epochs=1", "--min_epoch_steps=0").stdout
    assert "over the 26 classes" in log and "over the 24 species" in log
    small = ["--epochs=1", "--tp_per_batch=4", "--fp_per_batch=4"]
    run_script("04_train_stage3", "--stage=stage2", *io, *small)
    run_script("03_pseudo_label", *io, "--min_votes=1", "--threshold=0.5")
    run_script("04_train_stage3", *io, *small)
    run_script("05_ensemble", *io, "--runs=stage3/latest,stage1/latest", "--n_pictures=1")
    summary = json.loads((work / "summary.json").read_text())
    stage1 = next((work / "stage1").iterdir())
    oof = pd.read_csv(stage1 / "oof.csv", dtype={"recording_id": str})
    assert list(oof.columns[1:]) == prep.classes  # the model's classes
    truth = prep.tp_matrix(oof["recording_id"].tolist())
    scores = oof[prep.classes].to_numpy()
    assert summary["stage1"]["cv_lwlrap"] == pytest.approx(prep.species.lwlrap(truth, scores))
    assert summary["stage1"]["cv_lwlrap_classes"] == pytest.approx(metrics.lwlrap(truth, scores))
    thresholds = pd.read_csv(next((work / "pseudo").iterdir()) / "thresholds.csv")
    assert list(thresholds["class"]) == prep.classes
    run = next((work / "ensemble").iterdir())
    sub = pd.read_csv(run / "submission.csv", dtype={"recording_id": str})
    sample = pd.read_csv(data / "sample_submission.csv", dtype=str)
    blend.check_submission(sub, sample)
    assert list(sub.columns[1:]) == [f"s{i}" for i in range(24)]
    assert 0 <= summary["ensemble"]["test_lwlrap"] <= 1
    det = pd.read_csv(run / "detections.csv")
    assert (det["species"] == det["class"].map(prep.species.species)).all()
