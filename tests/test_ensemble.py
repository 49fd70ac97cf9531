"""Ensemble stage: submission checker, blends (align, rank, OOF weights), test priors,
event extraction, Raven tables, whole-recording frame tracks, and 05 end to end on a tiny
fake work dir (an untrained model; no training)."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from common import blend, detect, metrics, runs
from common.cli import ConfigError
from common.infer import frame_count, predict_frames, predict_recordings
from common.prepared import load_prepared
from tests.conftest import ArrayCache

CLASSES = ["s0", "s1", "s2"]


# ----------------------------------------------------------------------------- submission
def sample_frame() -> pd.DataFrame:
    return pd.DataFrame({"recording_id": ["a1", "b2", "c3"], "s0": 0.0, "s1": 0.0, "s2": 0.0})


def good_submission() -> pd.DataFrame:
    sub = sample_frame()
    sub[CLASSES] = np.arange(9, dtype=float).reshape(3, 3)
    return sub


def test_check_submission_accepts_a_correct_one():
    blend.check_submission(good_submission(), sample_frame())


@pytest.mark.parametrize("break_it,message", [
    (lambda s: s.assign(recording_id=["a1", "b2", "zz"]), "not in the sample"),
    (lambda s: s.iloc[[1, 0, 2]].reset_index(drop=True), "in another order"),
    (lambda s: s.drop(columns=["s1"]), "missing ['s1']"),
    (lambda s: s.rename(columns={"s2": "s9"}), "extra ['s9']"),
    (lambda s: s[["recording_id", "s1", "s0", "s2"]], "wrong order"),
    (lambda s: s.iloc[:2], "2 rows"),
    (lambda s: s.assign(s1=[0.1, np.nan, 0.3]), "column 's1'"),
    (lambda s: s.assign(s0=[0.1, 0.2, np.inf]), "NaN/inf"),
    (lambda s: s.assign(s2=["x", "0.1", "0.2"]), "non-numeric"),
])
def test_check_submission_rejects(break_it, message):
    with pytest.raises(ValueError) as err:
        blend.check_submission(break_it(good_submission()), sample_frame())
    assert message in str(err.value)


def test_make_submission_follows_the_sample_and_fills_missing_ids():
    sample = pd.DataFrame({"recording_id": ["c3", "a1", "b2"], "s2": 0, "s0": 0, "s1": 0})
    scores = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])  # for a1, c3 (b2 missing)
    sub, filled = blend.make_submission(["a1", "c3"], scores, CLASSES, sample)
    blend.check_submission(sub, sample)
    assert filled == ["b2"]
    assert sub.iloc[0].tolist() == ["c3", 6.0, 4.0, 5.0]
    assert sub.iloc[2, 1:].tolist() == [4.5, 2.5, 3.5]  # column means


# ----------------------------------------------------------------------------- blends
def test_align_standardises_each_run_over_all_entries():
    a = np.array([[0.0, 2.0], [4.0, 6.0]])          # mean 3, std sqrt(5)
    b = np.array([[10.0, 10.0], [10.0, 30.0]])      # mean 15, std sqrt(75)
    za = (a - 3.0) / np.sqrt(5.0)
    zb = (b - 15.0) / np.sqrt(75.0)
    np.testing.assert_allclose(blend.standardise(a), za)
    np.testing.assert_allclose(blend.blend("align", [a, b]), (za + zb) / 2)
    np.testing.assert_allclose(blend.blend("align", [a, b], [3, 1]), 0.75 * za + 0.25 * zb)
    # scale and shift of one run do not change the blend
    np.testing.assert_allclose(blend.blend("align", [5 * a - 7, b]), blend.blend("align", [a, b]))


def test_rank_blend_averages_per_class_ranks():
    a = np.array([[0.1, 9.0], [0.3, 1.0], [0.2, 5.0]])
    b = np.array([[3.0, 0.0], [1.0, 2.0], [2.0, 1.0]])
    ra = np.array([[1, 3], [3, 1], [2, 2]]) / 3.0
    rb = np.array([[3, 1], [1, 3], [2, 2]]) / 3.0
    np.testing.assert_allclose(blend.blend("rank", [a, b]), (ra + rb) / 2)


def test_fast_lwlrap_equals_the_reference():
    rng = np.random.default_rng(0)
    truth = (rng.random((60, 7)) < 0.25).astype(float)
    scores = rng.normal(size=(60, 7)).round(1)  # with ties
    assert blend.fast_lwlrap(truth, scores) == pytest.approx(metrics.lwlrap(truth, scores), abs=1e-12)


def test_simplex_grid():
    grid = blend.simplex_grid(3, 4)
    assert len(grid) == 15
    np.testing.assert_allclose(grid.sum(axis=1), 1.0)
    assert (grid >= 0).all()


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("m", [1, 2, 3, 7])
def test_oof_weights_never_worse_than_the_best_single_run(seed, m):
    rng = np.random.default_rng(seed)
    truth = (rng.random((80, 6)) < 0.3).astype(float)
    # runs of mixed quality: signal + noise at different scales and offsets
    oofs = [rng.normal(size=truth.shape) * rng.uniform(0.5, 3) + truth * rng.uniform(0, 1.5)
            + rng.normal() for _ in range(m)]
    weights, score = blend.fit_oof_weights(oofs, truth, steps=5, max_grid=60)
    assert weights.shape == (m,) and (weights >= 0).all()
    assert weights.sum() == pytest.approx(1.0)
    best_single = max(metrics.lwlrap(truth, o) for o in oofs)
    fitted = metrics.lwlrap(truth, blend.blend("oof", oofs, weights))
    assert score == pytest.approx(fitted)
    assert fitted >= best_single


# ----------------------------------------------------------------------------- priors
def test_load_priors(tmp_path):
    path = tmp_path / "priors.csv"
    pd.DataFrame({"class": ["s2", "s0", "s1"], "prior": [0.3, 0.1, 0.2]}).to_csv(path, index=False)
    np.testing.assert_allclose(blend.load_priors(path, CLASSES), [0.1, 0.2, 0.3])
    pd.DataFrame({"class": ["s0"], "prior": [0.1]}).to_csv(path, index=False)
    with pytest.raises(ValueError, match="s1"):
        blend.load_priors(path, CLASSES)


# ----------------------------------------------------------------------------- events, Raven
def test_extract_events_threshold_and_min_duration():
    track = np.zeros((12, 2))
    track[2:5, 0] = [0.6, 0.9, 0.7]   # frames 2..4: 0.3 s at hop 0.1 -> kept
    track[8, 0] = 0.95                 # one frame: 0.1 s -> dropped by min_duration 0.2
    track[9:12, 1] = [0.5, 0.4, 0.8]   # 0.5 reaches the threshold; 0.4 splits the run
    track[6:8, 1] = 0.49               # below threshold
    events = detect.extract_events(track, ["a", "b"], 0.1, threshold=0.5, min_duration=0.1,
                                   duration=1.15)
    # frame 11 ends at 1.2 s, clipped to the 1.15 s recording: 0.05 s < 0.1 s, dropped
    assert events.values.tolist() == [["a", "a", 0.2, 0.5, 0.9], ["a", "a", 0.8, 0.9, 0.95],
                                      ["b", "b", 0.9, 1.0, 0.5]]
    longer = detect.extract_events(track, ["a", "b"], 0.1, threshold=0.5, min_duration=0.05,
                                   duration=1.15)
    assert longer.values.tolist()[-1] == ["b", "b", 1.1, 1.15, 0.8]
    kept = detect.extract_events(track, ["a", "b"], 0.1, threshold=0.5, min_duration=0.2)
    assert kept.values.tolist() == [["a", "a", 0.2, 0.5, 0.9]]
    # song-type classes carry their species (common/species.py)
    split = detect.extract_events(track, ["s16_t1", "s16_t4"], 0.1, threshold=0.5,
                                  min_duration=0.2, species=["s16", "s16"])
    assert split.values.tolist() == [["s16", "s16_t1", 0.2, 0.5, 0.9]]
    assert detect.extract_events(np.zeros((5, 2)), ["a", "b"], 0.1).empty


def test_raven_table_round_trip(tmp_path):
    events = pd.DataFrame({"recording_id": ["r1", "r1", "r2"], "species": ["s1", "s0", "s2"],
                           "class": ["s1", "s0", "s2"], "t_start": [0.5, 2.25, 1.0],
                           "t_end": [1.75, 3.0, 4.5], "peak_score": [0.91, 0.55, 0.7]})
    ann = pd.DataFrame({"recording_id": ["x", "y"], "class": ["s0", "s0"], "label": [1, 1],
                        "f_min": [1000.0, 800.0], "f_max": [3000.0, 2500.0]})
    bands = detect.species_bands(ann, CLASSES, 32000)
    assert bands == {"s0": (800.0, 3000.0), "s1": (0.0, 16000.0), "s2": (0.0, 16000.0)}
    paths = detect.write_raven_tables(tmp_path, events, ["r1", "r2", "r3"], bands)
    assert [p.name for p in paths] == [f"r{i}.Table.1.selections.txt" for i in (1, 2, 3)]
    header = paths[0].read_text().splitlines()[0].split("\t")
    assert header == detect.RAVEN_COLUMNS
    first = paths[0].read_text().splitlines()[1].split("\t")
    assert first[:3] == ["1", "Spectrogram 1", "1"]
    back = pd.concat([detect.read_raven(p) for p in paths], ignore_index=True)
    pd.testing.assert_frame_equal(back[detect.EVENT_COLUMNS], events, check_dtype=False)
    assert back["f_low"].tolist() == [0.0, 800.0, 0.0]
    assert detect.read_raven(paths[2]).empty


# ----------------------------------------------------------------------------- frame tracks
class FrameModel(nn.Module):
    """Frame k < N / hop of a window scores the wave at sample k * hop, the last frame
    (N // hop + 1 frames, as a centred STFT) its last sample; clip logit = the max frame."""

    model_cfg = {"hop_length": 10}

    def forward(self, wave):
        frames = torch.cat([wave[:, ::10], wave[:, -1:]], dim=1)[:, :, None]  # (B, T, 1)
        return {"clip_logit": frames.amax(dim=1), "frame_prob": frames}


def test_predict_frames_stitches_windows_where_they_agree():
    ramp = np.arange(200, dtype=np.float32) / 200
    bump = np.zeros(55, dtype=np.float32)
    bump[30] = 0.9                                                 # a recording shorter than a window
    cache = ArrayCache({"ramp": ramp, "bump": bump})
    scores, tracks = predict_frames(FrameModel(), cache, ["ramp", "bump"], window=60, stride=40,
                                    batch_size=3)
    assert tracks[0].shape == (frame_count(200, 10), 1) and tracks[1].shape == (6, 1)
    # every frame j of the ramp sees sample j * 10 (windows start on multiples of the hop;
    # a window's last frame sees one sample earlier, a tapered weight of 4e-3 of the mean)
    np.testing.assert_allclose(tracks[0][:20, 0], ramp[::10], atol=1e-3)
    assert tracks[0][20, 0] == ramp[199]                           # the last window's last frame
    np.testing.assert_allclose(tracks[1][:, 0], [0, 0, 0, 0.9, 0, 0], rtol=1e-6)
    np.testing.assert_allclose(scores, predict_recordings(FrameModel(), cache, ["ramp", "bump"],
                                                          60, 40), rtol=1e-6)


class EdgeModel(nn.Module):
    """Scores a window's frames 0.6 inside and 0.2 on its first and last 10 % of frames (the
    edge effect of a padded convolution), whatever the wave: a constant input."""

    model_cfg = {"hop_length": 10}

    def forward(self, wave):
        n = wave.shape[1] // 10 + 1
        frames = torch.full((len(wave), n, 1), 0.6)
        edge = max(1, n // 10)
        frames[:, :edge] = frames[:, -edge:] = 0.2
        return {"clip_logit": frames.amax(dim=1), "frame_prob": frames}


def test_stitched_track_has_no_step_at_window_edges_on_a_constant_input():
    """Windows of 81 frames every 20 frames: each window's edge frames lie inside three other
    windows. The tapered mean keeps the track within 0.02 of the interior score between the
    first and the last window's edges, with no jump over 0.02 (a plain mean would dip to
    0.5 at every window edge: steps of 0.1)."""
    cache = ArrayCache({"flat": np.ones(4000, np.float32)})
    _, tracks = predict_frames(EdgeModel(), cache, ["flat"], window=800, stride=200)
    inner = tracks[0][80:-80, 0]
    assert np.abs(np.diff(inner)).max() < 0.02 and np.abs(inner - 0.6).max() < 0.02


def test_event_matching_by_onset_collar_and_by_iou():
    """Reference events of class a: [1, 2), [5, 9), [20, 20.5); detections: [1.15, 3)
    (onset 0.15 s off: within 0.2 s; IoU 0.85 / 2 = 0.43), [5.7, 8) (0.7 s off: within
    20 % of 4 s = 0.8 s; IoU 2.3 / 4 = 0.575), [20.3, 25) (0.3 s off > 0.2 s; IoU 0.2 / 5 =
    0.04) and [30, 31) (nothing). Onset: 2 matched, IoU >= 0.3: 2 matched; a second
    detection on one event never matches twice."""
    from common.class_figures import event_f1, event_matches
    ev = pd.DataFrame({"recording_id": "r", "class": "a", "t_min": [1.0, 5.0, 20.0],
                       "t_max": [2.0, 9.0, 20.5]})
    det = pd.DataFrame({"recording_id": "r", "species": "a", "t_start": [1.15, 5.7, 20.3, 30.0, 1.1],
                        "t_end": [3.0, 8.0, 25.0, 31.0, 1.9]})
    onset = event_matches(ev, det.iloc[:4], rule="onset").iloc[0]
    iou = event_matches(ev, det.iloc[:4], iou=0.3, rule="iou").iloc[0]
    assert (onset["matched"], iou["matched"]) == (2, 2)
    assert onset["precision"] == pytest.approx(2 / 4) and onset["recall"] == pytest.approx(2 / 3)
    assert event_matches(ev, det.iloc[[2]], iou=0.3, rule="iou").iloc[0]["matched"] == 0
    assert event_matches(ev, det.iloc[[2]], rule="onset").iloc[0]["matched"] == 0
    both = event_f1(ev, det)  # [1.1, 1.9) is closer to [1, 2) than [1.15, 3): one of them counts
    assert both["onset"]["matched"] == 2 and both["onset"]["f1"] == pytest.approx(2 * 2 / (3 + 5))
    assert both["iou_0.3"]["matched"] == 2 and both["iou_0.3"]["detections"] == 5


# ----------------------------------------------------------------------------- end to end
def fake_work_dir(tmp_path, species_of: dict | None = None, columns: list = CLASSES):
    """A preprocessing run, one stage-1 run with an untrained tiny model, and INPUT_DIR.
    `species_of` {class: species}: the model's classes split the species (RFCx song types);
    `columns`: the sample submission's species columns, in its order."""
    from common.sed import build_model, save_checkpoint
    from common.species import SpeciesMap
    sr, rng = 8000, np.random.default_rng(0)
    classes = list(species_of or CLASSES)
    k = len(classes)
    work, data = tmp_path / "work", tmp_path / "data"
    prep_dir = work / "preprocess" / "p0"
    train_ids, test_ids = [f"tr{i}" for i in range(6)], [f"te{i}" for i in range(5)]
    recs = [(r, "train", 2.0, 2 * sr) for r in train_ids] + [(r, "test", 2.5, int(2.5 * sr))
                                                              for r in test_ids]
    for rid, _, _, n in recs:
        (prep_dir / "waves").mkdir(parents=True, exist_ok=True)
        np.save(prep_dir / "waves" / f"{rid}.npy", (0.1 * rng.normal(size=n)).astype(np.float16))
    runs.save_csv(prep_dir / "recordings.csv",
                  pd.DataFrame(recs, columns=["recording_id", "split", "duration", "n_samples"]))
    runs.save_csv(prep_dir / "annotations.csv", pd.DataFrame(
        [(r, classes[i % k], 0.2, 1.0, 500.0, 2000.0, 1) for i, r in enumerate(train_ids)],
        columns=["recording_id", "class", "t_min", "t_max", "f_min", "f_max", "label"]))
    runs.save_csv(prep_dir / "folds.csv", pd.DataFrame(
        {"recording_id": train_ids, "fold": [0, 1] * 3, "has_tp": True}))
    runs.save_json(prep_dir / "classes.json", {"classes": classes, "sample_rate": sr,
                                               **SpeciesMap(classes, species_of).to_json()})
    runs.write_manifest(prep_dir, "preprocess", {}, {}, [], {}, finished=True)
    mcfg = {"backbone": "resnet10t", "n_classes": k, "in_chans": 1, "sample_rate": sr,
            "n_fft": 256, "hop_length": 128, "n_mels": 32, "fmin": 50.0, "fmax": 4000.0,
            "image_size": None, "dropout": 0.0, "crop_seconds": 1.0, "freq_coord": False}
    run_dir = work / "stage1" / "r0"
    torch.manual_seed(0)
    for fold in (0, 1):
        save_checkpoint(run_dir / f"fold{fold}.pth", build_model(mcfg), {"fold": fold})
    oof = pd.DataFrame(rng.normal(size=(6, k)), columns=classes)
    oof.insert(0, "recording_id", train_ids)
    runs.save_csv(run_dir / "oof.csv", oof)
    runs.save_json(run_dir / "metrics.json", {"cv_lwlrap": 0.5, "folds": [0, 1],
                                              "fold_lwlrap": {"0": 0.6, "1": 0.4}})
    runs.write_manifest(run_dir, "stage1", {}, {"preprocess": "p0"}, [], {}, finished=True)
    data.mkdir()
    pd.DataFrame({"recording_id": test_ids[::-1], **{c: 0 for c in columns}}).to_csv(
        data / "sample_submission.csv", index=False)
    pd.DataFrame({"recording_id": test_ids, "s0": 1, "s1": [0, 1, 0, 1, 0], "s2": 0}).to_csv(
        data / "test_truth.csv", index=False)
    return work, data


def test_ensemble_end_to_end(tmp_path, scripts):
    work, data = fake_work_dir(tmp_path)
    ens = scripts("05_ensemble")
    cfg = ens.CFG(input_dir=str(data), work_dir=str(work), tag="e0", n_pictures=2,
                  prior_scaling="em", calibrate="true", event_threshold=0.3, min_event_seconds=0.0,
                  infer_batch=4, frequency_term="none")
    out = ens.main(cfg)
    run_dir = work / "ensemble" / "e0"
    sub = pd.read_csv(run_dir / "submission.csv", dtype={"recording_id": str})
    blend.check_submission(sub, pd.read_csv(data / "sample_submission.csv", dtype=str))
    rep = json.loads((run_dir / "report.json").read_text())
    assert [r["run"] for r in rep["rows"]] == ["stage1/r0", "blend (align)"]
    assert {"test_lwlrap", "test_lwlrap_calibrated", "oof_calibrated", "test_f1",
            "resolution"} <= set(rep["rows"][0])
    assert "test_lwlrap_prior" in rep["rows"][-1]
    priors = pd.read_csv(run_dir / "priors.csv")
    assert list(priors["class"]) == CLASSES and priors["test_prior"].between(0, 1).all()
    summary = json.loads((work / "summary.json").read_text())["ensemble"]
    assert {"test_lwlrap", "cv_lwlrap", "submission"} <= set(summary)
    assert summary["submission"] == str(run_dir / "submission.csv")
    assert runs.read_manifest(run_dir)["finished"]
    assert len(list((run_dir / "raven").glob("*.txt"))) == 5
    det = pd.read_csv(run_dir / "detections.csv")
    assert list(det.columns) == detect.EVENT_COLUMNS
    assert (run_dir / "pictures" / "te0.png").is_file()
    assert (run_dir / "pictures" / "species_ap.png").is_file()
    assert (run_dir / "test_stage1_r0.csv").is_file()
    assert "| blend (align)" in (run_dir / "report.md").read_text()
    assert out["rows"][-1]["test_lwlrap"] == pytest.approx(summary["test_lwlrap_no_prior"])


def test_calibration_taken_for_the_em_prior_goes_when_the_term_replaces_it(tmp_path, scripts,
                                                                          monkeypatch):
    """calibrate=auto turns calibration on when the skewed-OOF simulation prefers the EM
    prior; when the frequency term then wins (and replaces EM), calibration must still beat
    the raw blend on OOF, else the raw blend (with its own term choice) is used: a demo run
    had kept calibration + term at OOF 0.8042 against 0.8065 for the raw blend."""
    from common import calibration, prior_term
    work, data = fake_work_dir(tmp_path)
    ens = scripts("05_ensemble")
    real_sim = calibration.simulate_shift
    monkeypatch.setattr(calibration, "simulate_shift",
                        lambda *a, **k: {**real_sim(*a, **k), "best": "em"})
    calls = []

    def term(setting, scores, *rest):  # the calibrated blend's term wins, but scores poorly
        calls.append(scores)
        if len(calls) == 1:
            return {"weight": 1.0, "note": "weight 1", "cv": -1.0}
        return {"weight": 0.0, "note": "off", "cv": None}

    monkeypatch.setattr(prior_term, "for_blend", term)
    cfg = ens.CFG(input_dir=str(data), work_dir=str(work), tag="c1", n_pictures=0,
                  infer_batch=4)
    infos, prep, _ = ens.load_inputs(cfg)
    fitted = ens.fit_blend(cfg, infos, prep)
    assert len(calls) == 2 and not fitted["calibrated"] and fitted["term"]["weight"] == 0
    assert fitted["cv_lwlrap"] == pytest.approx(fitted["cv_uncalibrated"])
    assert "train_prior" not in fitted and all("calibrator" not in i for i in infos)


def test_frequency_term_is_added_to_the_submission_and_named(tmp_path, scripts):
    """frequency_term=1: the submission is the blend plus log(add-one share of OOF recordings
    with a TP row) per class; the EM prior is then not applied, the report and summary say so,
    and the summary's test figure is the corrected one."""
    from common import prior_term
    work, data = fake_work_dir(tmp_path)
    ens = scripts("05_ensemble")
    cfg = ens.CFG(input_dir=str(data), work_dir=str(work), tag="f1", n_pictures=0, detect=False,
                  prior_scaling="none", calibrate="false", frequency_term="1", infer_batch=4)
    out = ens.main(cfg)
    run_dir = work / "ensemble" / "f1"
    sub = pd.read_csv(run_dir / "submission.csv", dtype={"recording_id": str}).set_index("recording_id")
    plain = pd.read_csv(run_dir / "test_stage1_r0.csv", dtype={"recording_id": str}).set_index("recording_id")
    prep = load_prepared(str(work), "p0")
    oof_ids = sorted(pd.read_csv(work / "stage1" / "r0" / "oof.csv", dtype=str)["recording_id"])
    expected = blend.standardise(plain[CLASSES].to_numpy()) + prior_term.log_rates(prep.tp_matrix(oof_ids))
    assert np.allclose(sub.loc[plain.index, CLASSES].to_numpy(), expected, atol=1e-5)
    assert not (run_dir / "priors.csv").exists()
    summary = json.loads((work / "summary.json").read_text())["ensemble"]
    assert summary["frequency_term"]["weight"] == 1.0
    assert summary["test_lwlrap"] == pytest.approx(out["rows"][-1]["test_lwlrap_prior"])
    assert "frequency term: 1 (weight 1:" in (run_dir / "report.md").read_text()
    with pytest.raises(ConfigError, match="frequency_term"):
        ens.main(ens.CFG(input_dir=str(data), work_dir=str(work), frequency_term="strong"))


def test_song_type_classes_are_submitted_per_species(tmp_path, scripts):
    """Song-type classes (01's classes=species_songtype): the model scores s1_t1 and s1_t4;
    the submission has the sample's species columns in the sample's order, s1 the max of its
    two song types; test LWLRAP, per-class figures and pictures are per species; detections
    stay per class and carry the species."""
    species_of = {"s0": "s0", "s1_t1": "s1", "s1_t4": "s1", "s2": "s2"}
    work, data = fake_work_dir(tmp_path, species_of, columns=["s2", "s0", "s1"])
    ens = scripts("05_ensemble")
    cfg = ens.CFG(input_dir=str(data), work_dir=str(work), tag="e2", n_pictures=1,
                  prior_scaling="none", calibrate="false", event_threshold=0.3,
                  min_event_seconds=0.0, infer_batch=4, frequency_term="none")
    ens.main(cfg)
    run_dir = work / "ensemble" / "e2"
    sub = pd.read_csv(run_dir / "submission.csv", dtype={"recording_id": str})
    assert list(sub.columns) == ["recording_id", "s2", "s0", "s1"]
    test = pd.read_csv(run_dir / "test_stage1_r0.csv", dtype={"recording_id": str})
    test = test.set_index("recording_id")
    assert list(test.columns) == list(species_of)  # the run's scores stay per class
    z = pd.DataFrame(blend.standardise(test.to_numpy()), index=test.index, columns=test.columns)
    expected = pd.DataFrame({"s0": z["s0"], "s1": z[["s1_t1", "s1_t4"]].max(axis=1),
                             "s2": z["s2"]})  # align blend of one uncalibrated run
    got = sub.set_index("recording_id")
    np.testing.assert_allclose(got[CLASSES].to_numpy(), expected.loc[got.index].to_numpy())
    truth = pd.read_csv(data / "test_truth.csv", dtype={"recording_id": str})
    truth = truth.set_index("recording_id")
    summary = json.loads((work / "summary.json").read_text())["ensemble"]
    assert summary["test_lwlrap"] == pytest.approx(metrics.lwlrap(
        truth[CLASSES].to_numpy(), expected.loc[truth.index].to_numpy()))
    assert set(pd.read_csv(run_dir / "per_class.csv")["class"]) == set(CLASSES)
    det = pd.read_csv(run_dir / "detections.csv")
    assert set(zip(det["class"], det["species"])) <= set(species_of.items())
    assert {"s1_t1", "s1_t4"} & set(det["class"])


def test_event_rule_is_chosen_on_oof_recordings(tmp_path, scripts):
    """event_threshold 0: 05 scores its threshold x min-duration grid on the OOF recordings'
    boxes (each recording drawn by the fold model that validated it), applies the best and
    says so in the summary; the test recordings play no part in the choice."""
    work, data = fake_work_dir(tmp_path)
    ens = scripts("05_ensemble")
    cfg = ens.CFG(input_dir=str(data), work_dir=str(work), tag="e1", n_pictures=0,
                  prior_scaling="none", calibrate="false", event_threshold=0.0, infer_batch=4)
    ens.main(cfg)
    run_dir = work / "ensemble" / "e1"
    grid = pd.read_csv(run_dir / "event_rule_oof.csv")
    assert len(grid) == 10 * 4 and grid["oof_f1"].between(0, 1).all()  # 0.1 .. 0.9, 0.95
    rule = json.loads((work / "summary.json").read_text())["ensemble"]["event_rule"]
    best = grid.sort_values(["oof_f1", "threshold"], ascending=False, kind="stable").iloc[0]
    assert rule["chosen"] == "oof" and rule["recordings"] == 6
    assert (rule["threshold"], rule["min_seconds"]) == (best["threshold"], best["min_seconds"])
    det = pd.read_csv(run_dir / "detections.csv")
    assert (det["peak_score"] >= rule["threshold"]).all()
    # the grid's durations follow the data: shares of the median TP box (0.8 s here)
    assert sorted(grid["min_seconds"].unique()) == pytest.approx([0.0, 0.2, 0.4, 0.8])
