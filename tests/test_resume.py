"""Crash safety and reproducibility: a training run killed with SIGKILL and run again with
the same command ends with the same weights and OOF as an uninterrupted run, pseudo
labelling (03) with the same labels and the ensemble (05) with the same submission; two runs
with the same seed and config give the same OOF on CPU; how a re-run picks the run to
continue; which partial results a re-run keeps."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch

from common import runs
from common.cli import ConfigError, parse_cfg
from tests.conftest import ROOT
from tests.test_ensemble import fake_work_dir

# a tiny stage-1 run on the fake cache: 2 folds x 2 epochs, dropout and SpecAugment on so
# the torch RNG state matters, a few seconds on CPU
TINY_STAGE1 = ["--backbone=resnet10t", "--in_chans=1", "--crop_seconds=1", "--n_fft=256",
               "--hop_length=128", "--n_mels=32", "--fmin=50", "--fmax=4000", "--image_size=",
               "--epochs=2", "--batch_size=2", "--crops_per_row=4", "--spec_masks=1",
               "--infer_batch=8", "--device=cpu", "--seed=7"]


def weights(path):
    return torch.load(path, map_location="cpu", weights_only=False)["state_dict"]


def assert_same_run(a, b):
    for fold in (0, 1):
        wa, wb = weights(a / f"fold{fold}.pth"), weights(b / f"fold{fold}.pth")
        assert wa.keys() == wb.keys()
        assert all(torch.equal(wa[k], wb[k]) for k in wa), f"fold {fold} weights differ"
    pd.testing.assert_frame_equal(pd.read_csv(a / "oof.csv"), pd.read_csv(b / "oof.csv"))
    ha, hb = pd.read_csv(a / "history.csv"), pd.read_csv(b / "history.csv")
    pd.testing.assert_frame_equal(ha.drop(columns="seconds"), hb.drop(columns="seconds"))


def kill_when(args, pattern, base, timeout=900, script="02_train_stage1.py"):
    """Start `python <script> args` (2 threads, as the test process), SIGKILL it as soon as
    a file matching `pattern` exists under `base`; returns its exit status."""
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.Popen([sys.executable, str(ROOT / script), *args], cwd=ROOT,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while not any(base.glob(pattern)) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    return proc.wait()


def args_for(work, data):
    return [*TINY_STAGE1, f"--work_dir={work}", f"--input_dir={data}"]


def train(scripts, args):
    """Run stage 1 in this process, as `python 02_train_stage1.py args` would."""
    module = scripts("02_train_stage1")
    return module.main(parse_cfg(module.CFG, "stage1", args))


@pytest.fixture(scope="module")
def straight(tmp_path_factory, scripts):
    """Two uninterrupted runs of the same command in one work dir."""
    work, data = fake_work_dir(tmp_path_factory.mktemp("straight"))
    train(scripts, [*args_for(work, data), "--tag=first"])
    train(scripts, [*args_for(work, data), "--tag=second"])
    return work


def test_same_seed_and_config_give_the_same_oof_and_weights(straight):
    first, second = straight / "stage1" / "first", straight / "stage1" / "second"
    assert_same_run(first, second)
    manifest = runs.read_manifest(first)
    assert manifest["finished"] and manifest["config"]["seed"] == 7
    assert manifest["packages"]["torch"] == runs.package_versions()["torch"]
    assert {"python", "numpy", "timm"} <= set(manifest["packages"])


def test_killed_run_resumes_to_the_weights_of_an_uninterrupted_run(straight, tmp_path, scripts,
                                                                     capsys):
    work, data = fake_work_dir(tmp_path)  # the same fake data in another work dir
    args = args_for(work, data)
    # kill once fold 1 has a state file: fold 0 is done, fold 1 is mid-training
    assert kill_when(args, "stage1/*/fold1.state.pth", work) == -signal.SIGKILL
    crashed = [p for p in (work / "stage1").iterdir() if p.name != "r0"]
    assert len(crashed) == 1 and not runs.read_manifest(crashed[0])["finished"]
    with pytest.raises(ConfigError, match="unfinished"):
        runs.find_run(work, "stage1", crashed[0].name)  # no later stage reads it
    train(scripts, args)  # the same command again
    log = capsys.readouterr().out
    assert f"stage1 {crashed[0].name} (resumed)" in log
    assert "fold 0: finished before the restart" in log and "fold 1 resumed after epoch 0" in log
    assert runs.read_manifest(crashed[0])["finished"]
    assert_same_run(straight / "stage1" / "first", crashed[0])


# ----------------------------------------------------------------------------- which run a re-run continues
CFG = {"epochs": 3, "seed": 1, "tag": "", "device": "cpu"}
INPUTS = {"preprocess": "p0"}


def crashed_run(work, tag, cfg=CFG, inputs=INPUTS, **manifest):
    runs.write_manifest(work / "stage1" / tag, "stage1", cfg, inputs, [], {}, finished=False)
    if manifest:
        path = work / "stage1" / tag / "manifest.json"
        runs.save_json(path, {**json.loads(path.read_text()), **manifest})


def test_rerun_continues_the_newest_unfinished_run_of_the_same_config(tmp_path):
    crashed_run(tmp_path, "old")
    crashed_run(tmp_path, "other_cfg", cfg={**CFG, "epochs": 5})
    crashed_run(tmp_path, "other_input", inputs={"preprocess": "p1"})
    time.sleep(0.02)
    crashed_run(tmp_path, "new")
    run_dir, resumed = runs.begin_run(tmp_path, "stage1", {**CFG, "device": "cuda"}, INPUTS)
    assert resumed and run_dir.name == "new"  # a device change does not block a resume
    runs.write_manifest(run_dir, "stage1", CFG, INPUTS, [], {}, finished=True)
    assert runs.begin_run(tmp_path, "stage1", CFG, INPUTS)[0].name == "old"


def test_fresh_and_a_different_config_start_a_new_run(tmp_path):
    crashed_run(tmp_path, "old")
    run_dir, resumed = runs.begin_run(tmp_path, "stage1", CFG, INPUTS, fresh=True)
    assert not resumed and run_dir.name != "old"
    run_dir, resumed = runs.begin_run(tmp_path, "stage1", {**CFG, "seed": 2}, INPUTS)
    assert not resumed and run_dir.name not in ("old",)


def test_a_run_another_live_process_writes_is_not_continued(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        crashed_run(tmp_path, "busy", pid=child.pid)
        run_dir, resumed = runs.begin_run(tmp_path, "stage1", CFG, INPUTS)
        assert not resumed and run_dir.name != "busy"
        with pytest.raises(ConfigError, match=f"process {child.pid} is still running it"):
            runs.begin_run(tmp_path, "stage1", CFG, INPUTS, resume="busy")
    finally:
        child.kill()
        child.wait()


@pytest.mark.parametrize("resume, message", [
    ("done", "it is finished"),
    ("nosuch", "manifest.json is missing"),
    ("other_cfg", r"other settings \(epochs\)"),
])
def test_resume_tag_that_cannot_be_continued_says_why(tmp_path, resume, message):
    crashed_run(tmp_path, "other_cfg", cfg={**CFG, "epochs": 5})
    runs.write_manifest(tmp_path / "stage1" / "done", "stage1", CFG, INPUTS, [], {}, finished=True)
    with pytest.raises(ConfigError, match=message) as err:
        runs.begin_run(tmp_path, "stage1", CFG, INPUTS, resume=resume)
    assert f"stage1 run {tmp_path / 'stage1' / resume}" in str(err.value)


def test_explicit_tag_continues_its_crashed_run_or_refuses_another_config(tmp_path):
    crashed_run(tmp_path, "mine")
    assert runs.begin_run(tmp_path, "stage1", CFG, INPUTS, tag="mine") == (tmp_path / "stage1" / "mine", True)
    with pytest.raises(ConfigError, match="other settings"):
        runs.begin_run(tmp_path, "stage1", {**CFG, "seed": 9}, INPUTS, tag="mine")


def test_preprocess_rerun_continues_the_crashed_run_and_keeps_valid_cache_files(tmp_path, scripts,
                                                                                   capsys):
    from tests.test_bad_input import write_bad_dataset
    write_bad_dataset(tmp_path / "data")
    module = scripts("01_preprocess")
    args = [f"--input_dir={tmp_path / 'data'}", f"--work_dir={tmp_path / 'w'}", "--sample_rate=8000",
            "--n_folds=2", "--workers=1"]
    run_dir = module.main(parse_cfg(module.CFG, "preprocess", args))
    # as if killed while decoding: manifest unfinished, one file half-written, one never reached
    manifest = runs.read_manifest(run_dir)
    runs.write_manifest(run_dir, "preprocess", manifest["config"], manifest["inputs"], [], {},
                        finished=False)
    waves = run_dir / "waves"
    (waves / "good1.npy").write_bytes((waves / "good1.npy").read_bytes()[:200])
    (waves / "good2.npy").unlink()
    (waves / "good2.json").unlink()
    kept = {p.name: p.stat().st_mtime_ns for p in waves.glob("*.npy") if p.stem not in ("good1", "good2")}
    capsys.readouterr()
    assert module.main(parse_cfg(module.CFG, "preprocess", args)) == run_dir
    assert f"continuing the crashed run {run_dir}" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in waves.glob("*.npy") if p.name in kept} == kept
    assert np.load(waves / "good1.npy").shape == np.load(waves / "good2.npy").shape == (3 * 8000,)
    assert runs.read_manifest(run_dir)["finished"]
    # a changed source file is decoded again
    os.utime(tmp_path / "data" / "train" / "good3.flac", ns=(1, 1))
    assert module.cached(waves, {"recording_id": "good3", "split": "train",
                                 "path": str(tmp_path / "data" / "train" / "good3.flac"),
                                 "source": module.source_stamp(str(tmp_path / "data" / "train" / "good3.flac"))}) is None


# ----------------------------------------------------------------------------- partial results
def test_a_partial_result_is_kept_only_when_complete_done_and_fitting(tmp_path):
    path = runs.partial_path(tmp_path, "votes_fold0.pth")
    assert runs.load_partial(path) is None  # none yet
    runs.save_partial(path, {"a": np.ones(3)})
    assert runs.load_partial(path, lambda got: list(got) == ["a"])["a"].tolist() == [1, 1, 1]
    assert runs.load_partial(path, lambda got: list(got) == ["b"]) is None  # other work
    path.write_bytes(path.read_bytes()[:60])  # cut short
    assert runs.load_partial(path) is None
    runs.save_torch(path, {"done": False, "result": 1})  # in progress
    assert runs.load_partial(path) is None
    runs.drop_partials(tmp_path)
    assert not path.parent.exists()


# ----------------------------------------------------------------------------- 03 and 05 resume
def pseudo_source(tmp_path):
    """The fake work dir of test_ensemble, its stage-1 run made a pseudo-label source (each
    fold model trained on the other fold's recordings), and a second run stage1/r1."""
    work, data = fake_work_dir(tmp_path)
    r0 = work / "stage1" / "r0"
    folds = pd.read_csv(work / "preprocess" / "p0" / "folds.csv")
    runs.save_csv(r0 / "trained_on.csv", pd.DataFrame(
        [(k, rid) for k in (0, 1) for rid in folds.loc[folds["fold"] != k, "recording_id"]],
        columns=["fold", "recording_id"]))
    runs.write_manifest(r0, "stage1", {}, {"preprocess": "p0"}, [], {"folds": [0, 1]},
                        finished=True)
    shutil.copytree(r0, work / "stage1" / "r1")
    return work, data


def pseudo_args(work, data):
    return ["--source=stage1", "--source_tag=r0", "--min_votes=1", "--target_precision=0",
            "--threshold=0.5", "--infer_batch=8", "--device=cpu", f"--work_dir={work}",
            f"--input_dir={data}"]


def ensemble_args(work, data):
    return ["--runs=stage1/r0,stage1/r1", "--n_pictures=1", "--event_threshold=0.3",
            "--min_event_seconds=0", "--infer_batch=4", "--device=cpu", f"--work_dir={work}",
            f"--input_dir={data}"]


def main_of(scripts, name, stage_name, args):
    module = scripts(name)
    return module.main(parse_cfg(module.CFG, stage_name, args))


def assert_same_tables(a, b, names):
    for name in names:
        pd.testing.assert_frame_equal(pd.read_csv(a / name), pd.read_csv(b / name),
                                      check_exact=False, rtol=1e-6, atol=1e-9)


def crashed_only(work, stage_name, pattern, args, script):
    """Kill `script` once `pattern` exists; the one unfinished run folder it left."""
    assert kill_when(args, pattern, work, script=script) == -signal.SIGKILL
    crashed = list((work / stage_name).iterdir())
    assert len(crashed) == 1 and not runs.read_manifest(crashed[0])["finished"]
    return crashed[0]


def test_killed_pseudo_labelling_resumes_to_the_labels_of_an_uninterrupted_run(tmp_path, scripts,
                                                                                capsys):
    straight, data = pseudo_source(tmp_path / "straight")
    main_of(scripts, "03_pseudo_label", "pseudo", pseudo_args(straight, data))
    done = runs.find_run(straight, "pseudo")
    assert not (done / "partial").exists()  # a finished run keeps no partial results
    work, data = pseudo_source(tmp_path / "killed")
    args = pseudo_args(work, data)
    crashed = crashed_only(work, "pseudo", "pseudo/*/partial/votes_fold0.pth", args,
                           "03_pseudo_label.py")
    votes = crashed / "partial"
    # fold 1's votes as a file cut short (however far the killed run got): made again
    (votes / "votes_fold1.pth").write_bytes((votes / "votes_fold0.pth").read_bytes()[:500])
    capsys.readouterr()
    main_of(scripts, "03_pseudo_label", "pseudo", args)  # the same command again
    log = capsys.readouterr().out
    assert f"pseudo {crashed.name} (resumed): fold 0 votes kept, fold 1 votes made now" in log
    assert runs.read_manifest(crashed)["finished"] and runs.find_run(work, "pseudo") == crashed
    assert not votes.exists()  # dropped once the run is finished
    assert len(pd.read_csv(done / "pseudo_labels.csv"))  # the comparison compares something
    assert_same_tables(done, crashed, ["pseudo_labels.csv", "thresholds.csv"])


def test_killed_ensemble_resumes_to_the_submission_of_an_uninterrupted_run(tmp_path, scripts,
                                                                          capsys):
    straight, data = pseudo_source(tmp_path / "straight")
    done = main_of(scripts, "05_ensemble", "ensemble", ensemble_args(straight, data))["run_dir"]
    assert not (done / "partial").exists()
    work, data = pseudo_source(tmp_path / "killed")
    args = ensemble_args(work, data)
    crashed = crashed_only(work, "ensemble", "ensemble/*/partial/test_scores.pth", args,
                           "05_ensemble.py")
    capsys.readouterr()
    out = main_of(scripts, "05_ensemble", "ensemble", args)
    log = capsys.readouterr().out
    # the first fold's test scores at least were stored before the kill
    assert f"ensemble {crashed.name} (resumed): 2 runs" in log
    assert "test scores kept: stage1/r0 fold 0" in log
    assert out["run_dir"] == crashed and runs.read_manifest(crashed)["finished"]
    assert not (crashed / "partial").exists()
    assert_same_tables(done, crashed, ["submission.csv", "test_stage1_r0.csv",
                                       "test_stage1_r1.csv", "detections.csv"])


class Killed(Exception):
    """Stands for the kill of a Kaggle session's time limit."""


def test_killed_segment_scoring_keeps_the_folds_it_scored(tmp_path, scripts, monkeypatch, capsys):
    """05's BirdCLEF path (test soundscapes in 5 s segments) stores each fold model's segment
    scores as soon as they exist; killed during the second fold, a re-run scores only the
    folds it lacks and gives the uninterrupted run's probabilities. Scores stored for other
    segments are never used."""
    from common import segment_submission
    from common.prepared import load_prepared

    work, _ = fake_work_dir(tmp_path)
    info = scripts("05_ensemble").load_run(work / "stage1" / "r0")
    prep = load_prepared(work, "p0")
    table = pd.DataFrame({"recording_id": ["te0", "te0", "te3"], "t_min": [0.0, 1.5, 0.5],
                          "t_max": [1.0, 2.5, 1.5]})
    args = ([info], [1.0], {"p0": prep}, table, 4, "cpu")
    straight = segment_submission.predict(*args)
    partial = tmp_path / "ensemble" / "e0" / "partial" / segment_submission.SEGMENT_SCORES
    real, loaded, kill = segment_submission.load_fold_model, [], [True]

    def load(path, *rest):
        loaded.append(path.name)
        if kill[0] and loaded == ["fold0.pth", "fold1.pth"]:
            raise Killed("killed while loading fold 1")
        return real(path, *rest)

    monkeypatch.setattr(segment_submission, "load_fold_model", load)
    with pytest.raises(Killed):
        segment_submission.predict(*args, partial=partial)
    assert partial.is_file()
    capsys.readouterr()
    loaded.clear()
    kill[0] = False
    again = segment_submission.predict(*args, partial=partial)
    assert f"kept from the killed run: {info['name']} fold 0" in capsys.readouterr().out
    assert loaded == ["fold1.pth"]  # fold 0 was not scored again
    np.testing.assert_array_equal(again, straight)
    loaded.clear()
    other = table.iloc[:2]  # other segments: the stored scores do not fit
    segment_submission.predict([info], [1.0], {"p0": prep}, other, 4, "cpu", partial=partial)
    assert loaded == ["fold0.pth", "fold1.pth"]
