"""The demo dataset generator (common/demos/rfcx.py): layout, determinism, labels, and real signal."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from common.demos.rfcx import EVENT_COLUMNS, RFCX_COLUMNS, SPECIES, DemoSpec, write_rfcx_demo

TINY = DemoSpec(seed=3, n_train=12, n_test=6, duration=8.0, sample_rate=32000)
CLASSES = [f"s{i}" for i in range(24)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    return out, write_rfcx_demo(out, TINY, workers=2)


def read(out, name):
    return pd.read_csv(out / name, dtype={"recording_id": str})


def all_bytes(out):
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_layout_and_columns(tiny):
    out, summary = tiny
    assert sorted(p.name for p in out.iterdir()) == [
        "demo_events.csv", "demo_meta.json", "sample_submission.csv", "test", "test_events.csv",
        "test_truth.csv", "train", "train_fp.csv", "train_tp.csv"]
    assert list(read(out, "train_tp.csv").columns) == RFCX_COLUMNS
    assert list(read(out, "train_fp.csv").columns) == RFCX_COLUMNS
    assert list(read(out, "sample_submission.csv").columns) == ["recording_id"] + CLASSES
    assert list(read(out, "test_truth.csv").columns) == ["recording_id"] + CLASSES
    assert list(read(out, "demo_events.csv").columns) == EVENT_COLUMNS
    # the reference events of 05's event F1: every call in a test recording, of a listed species
    ref, truth = read(out, "test_events.csv"), read(out, "test_truth.csv").set_index("recording_id")
    every = read(out, "demo_events.csv")
    calls = every[(every["split"] == "test") & (every["kind"] == "call")]
    assert list(ref.columns) == ["recording_id", "class", "t_min", "t_max"] and len(ref) == len(calls)
    assert all(truth.loc[r, c] == 1 for r, c in zip(ref["recording_id"], ref["class"]))
    train = sorted(p.stem for p in (out / "train").glob("*.flac"))
    test = sorted(p.stem for p in (out / "test").glob("*.flac"))
    assert len(train) == 12 and len(test) == 6 and not set(train) & set(test)
    for rid in train + test:
        assert len(rid) == 9 and all(c in "0123456789abcdef" for c in rid)
    assert not list(out.rglob("*.part"))
    meta = json.loads((out / "demo_meta.json").read_text())
    assert meta["spec"]["n_train"] == 12 and meta["counts"]["tp_rows"] == summary["tp_rows"]
    assert summary["seconds"] > 0


def test_audio_decodes_to_the_declared_format(tiny):
    out, _ = tiny
    for path in sorted(out.rglob("*.flac")):
        info = sf.info(str(path))
        assert (info.samplerate, info.channels, info.frames) == (32000, 1, 8 * 32000)
        assert info.format == "FLAC" and info.subtype == "PCM_16"
        wave, _ = sf.read(str(path))
        assert 0.2 < np.abs(wave).max() < 1.0  # normalised, never clipped


def test_byte_for_byte_deterministic(tiny, tmp_path):
    out, _ = tiny
    write_rfcx_demo(tmp_path / "again", TINY, workers=1)  # 1 worker vs 2: same bytes
    assert all_bytes(tmp_path / "again") == all_bytes(out)
    other = DemoSpec(**{**TINY.__dict__, "seed": 4})
    write_rfcx_demo(tmp_path / "other", other, workers=1)
    assert read(tmp_path / "other", "train_tp.csv").to_csv() != read(out, "train_tp.csv").to_csv()
    assert not set(all_bytes(tmp_path / "other").values()) & set(all_bytes(out).values())


def test_boxes_inside_recording_and_band(tiny):
    out, _ = tiny
    tp, fp = read(out, "train_tp.csv"), read(out, "train_fp.csv")
    assert len(tp) > 0 and len(fp) > 0
    for frame in (tp, fp):
        assert (frame["t_min"] >= 0).all() and (frame["t_max"] <= 8.0).all()
        assert (frame["t_min"] < frame["t_max"]).all() and (frame["f_min"] < frame["f_max"]).all()
        assert (frame["f_min"] >= 0).all() and (frame["f_max"] <= 16000).all()
        assert set(frame["songtype_id"]) <= {1, 4}
        assert set(frame.loc[frame["songtype_id"] == 4, "species_id"]) <= {16, 17, 23}
    for frame in (tp, fp):  # TP calls and FP boxes both sit in the species' band
        lo = frame["species_id"].map(lambda s: SPECIES[s]["f_lo"])
        hi = frame["species_id"].map(lambda s: SPECIES[s]["f_hi"])
        assert (frame["f_min"] >= lo - 1e-3).all() and (frame["f_max"] <= hi + 1e-3).all()
    events = read(out, "demo_events.csv")
    calls = events[events["kind"] == "call"]
    assert (calls["f_min"] >= calls["species_id"].map(lambda s: SPECIES[s]["f_lo"]) - 1e-3).all()
    assert (calls["f_max"] <= calls["species_id"].map(lambda s: SPECIES[s]["f_hi"]) + 1e-3).all()


def test_sparse_labels_and_fp_rows(tiny):
    out, summary = tiny
    tp, fp = read(out, "train_tp.csv"), read(out, "train_fp.csv")
    train = {p.stem for p in (out / "train").glob("*.flac")}
    assert set(tp["recording_id"]) <= train and set(fp["recording_id"]) <= train
    assert tp.groupby("recording_id")["species_id"].nunique().max() <= 2
    fp_only = set(fp["recording_id"]) - set(tp["recording_id"])
    assert len(fp_only) == summary["fp_only_recordings"] == round(DemoSpec().fp_only_frac * 12)
    assert set(tp["recording_id"]) | fp_only == train
    calls = read(out, "demo_events.csv").query("kind == 'call'")
    for row in fp.itertuples():  # an FP box never covers a call of its own species
        same = calls[(calls["recording_id"] == row.recording_id) & (calls["species_id"] == row.species_id)]
        assert not ((same["t_min"] < row.t_max) & (same["t_max"] > row.t_min)).any(), row
    heard = calls[calls["split"] == "train"].groupby("recording_id")["species_id"].nunique()
    assert heard.mean() > tp.groupby("recording_id")["species_id"].nunique().mean()  # unannotated callers


def test_truth_matches_submission(tiny):
    out, _ = tiny
    sub, truth = read(out, "sample_submission.csv"), read(out, "test_truth.csv")
    assert list(truth["recording_id"]) == list(sub["recording_id"])
    assert sorted(sub["recording_id"]) == sorted(p.stem for p in (out / "test").glob("*.flac"))
    assert (sub[CLASSES].to_numpy() == 0).all()
    y = truth[CLASSES].to_numpy()
    assert set(np.unique(y)) <= {0, 1} and (y.sum(1) >= 1).all() and (y.sum(1) <= 8).all()
    assert (y.sum(0) >= 1).all()  # every species appears in test
    calls = read(out, "demo_events.csv").query("kind == 'call' and split == 'test'")
    for rid, row in zip(truth["recording_id"], y):
        assert set(np.flatnonzero(row)) == set(calls.loc[calls["recording_id"] == rid, "species_id"])


def band_energy(wave, sr, t0, t1, f_lo, f_hi):
    seg = wave[int(t0 * sr):int(t1 * sr)]
    spec = np.abs(np.fft.rfft(seg * np.hanning(len(seg)))) ** 2
    freqs = np.fft.rfftfreq(len(seg), 1 / sr)
    return spec[(freqs >= f_lo) & (freqs <= f_hi)].sum() / len(seg)


def test_calls_are_really_in_the_audio(tiny):
    out, _ = tiny
    events = read(out, "demo_events.csv")
    checked = 0
    for row in read(out, "train_tp.csv").itertuples():
        wave, sr = sf.read(str(out / "train" / f"{row.recording_id}.flac"))
        length = row.t_max - row.t_min
        near = events[(events["recording_id"] == row.recording_id) & (events["f_min"] < row.f_max)
                      & (events["f_max"] > row.f_min)]
        for t0 in np.arange(0, 8.0 - length, 0.05):  # a window where nothing sits in the band
            if not ((near["t_min"] < t0 + length) & (near["t_max"] > t0)).any():
                ratio = band_energy(wave, sr, row.t_min, row.t_max, row.f_min, row.f_max) / \
                    band_energy(wave, sr, t0, t0 + length, row.f_min, row.f_max)
                assert ratio > 2.0, (row, ratio)
                checked += 1
                break
    assert checked >= 3


def test_larger_spec_statistics(tmp_path):
    spec = DemoSpec(seed=1, n_train=72, n_test=60, duration=3.0, sample_rate=28000)
    summary = write_rfcx_demo(tmp_path, spec, workers=2)
    prev = summary["test_prevalence"]
    assert prev[3] > 0.7 and 0.2 < prev[18] < 0.7 and min(prev) > 0
    assert 2.0 < summary["test_species_per_clip"] < 4.5
    assert summary["fp_only_recordings"] == round(spec.fp_only_frac * 72)
    per_species = summary["tp_rows_per_species"]
    assert min(per_species) >= 1 and max(per_species) <= 8  # flat: ~3 each
    assert 1.5 < summary["fp_rows"] / summary["tp_rows"] < 5


@pytest.mark.parametrize("field, value, message", [
    ("n_train", 0, "n_train"), ("n_test", -1, "n_test"), ("duration", 1.0, "duration"),
    ("sample_rate", 16000, "sample_rate"), ("fp_only_frac", 1.5, "fp_only_frac"),
    ("snr_min_db", 30.0, "snr_min_db"), ("calls_per_species", 0.5, "calls_per_species")])
def test_spec_validation(field, value, message):
    with pytest.raises(ValueError, match=message):
        DemoSpec(**{field: value})


def test_refuses_a_folder_with_real_data(tmp_path):
    (tmp_path / "train_tp.csv").write_text(",".join(RFCX_COLUMNS) + "\n")
    with pytest.raises(ValueError, match="real data"):
        write_rfcx_demo(tmp_path, TINY, workers=1)


def test_detector_fp_rows_on_drones_and_rain_and_audible_test_species(tmp_path):
    spec = DemoSpec(seed=5, n_train=16, n_test=8, duration=8.0, sample_rate=32000,
                    drone_prob=1.0, rain_prob=1.0, background_fp_prob=1.0)
    write_rfcx_demo(tmp_path, spec, workers=2)
    events, fp = read(tmp_path, "demo_events.csv"), read(tmp_path, "train_fp.csv")
    noise = events[events["kind"].isin(["drone", "rain"]) & (events["split"] == "train")]
    on_noise = 0
    for row in fp.itertuples():
        sp = SPECIES[row.species_id]
        under = noise[(noise["recording_id"] == row.recording_id)
                      & (noise["t_min"] <= row.t_min + 1e-3) & (noise["t_max"] >= row.t_max - 1e-3)]
        for ev in under.itertuples():  # inside the noise's span, in the species' own band
            centre = 0.5 * (ev.f_min + ev.f_max)
            if ev.kind == "rain" or sp["f_lo"] <= centre <= sp["f_hi"]:
                assert sp["f_lo"] - 1e-3 <= row.f_min < row.f_max <= sp["f_hi"] + 1e-3
                on_noise += 1
                break
    assert on_noise >= 8  # every drone/rain burst that fits a species' band made an FP row
    calls = events[(events["kind"] == "call") & (events["split"] == "test")]
    loudest = calls.groupby(["recording_id", "species_id"])["snr_db"].max()
    assert (loudest >= spec.audible_snr_db - 1e-6).all()  # the truth lists audible species only
    with pytest.raises(ValueError, match="audible_snr_db"):
        DemoSpec(audible_snr_db=30.0)
