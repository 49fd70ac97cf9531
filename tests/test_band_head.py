"""Issue 17 part 2, frequency awareness: the per-class frequency band head (`band_head`).

The row weights of a band on a hand-made mel setup; bands from the training recordings' TP
boxes only (a validation box changes nothing; no boxes, clip labels: the full range); the
model with the head on: same outputs as off, a checkpoint round trip, a class blind (up to
the floor) to rows outside its band; its ONNX export passes the kit's check."""
from __future__ import annotations

from types import SimpleNamespace

import librosa
import numpy as np
import pandas as pd
import pytest
import torch

from common import bands
from common.sed import AttentionHead, BandAttentionHead, build_model, load_checkpoint, \
    save_checkpoint
from tests.conftest import ArrayCache
from tests.test_features_sed import one_thread  # noqa: F401 (autouse: one thread, tiny inputs)

F = bands.FLOOR
# 8 kHz, 128 mels from 50 Hz to 4 kHz: resnet10t's map has F' = 128 / 32 = 4 rows
CFG = {"backbone": "resnet10t", "n_classes": 3, "in_chans": 1, "sample_rate": 8000,
       "n_fft": 256, "hop_length": 128, "n_mels": 128, "fmin": 50.0, "fmax": 4000.0,
       "image_size": None, "dropout": 0.0, "crop_seconds": 1.0, "freq_coord": False}
ROW_EDGES = librosa.mel_to_hz(bands.mel_bin_edges(128, 50.0, 4000.0)[::32])  # Hz, 4 rows
# class 0: exactly the bottom row; class 1: the full range; class 2: part of the top rows
LOW_BAND = [[float(ROW_EDGES[0]), float(ROW_EDGES[1])], [50.0, 4000.0], [1000.0, 3000.0]]


# ----------------------------------------------------------------------------- row weights
def test_row_weights_on_a_hand_made_mel_axis():
    # 8 mels from 0 to 900 Hz, where librosa's (Slaney) mel scale is linear in Hz: bin
    # centres every 100 Hz (100 .. 800), bins 50 Hz either side; 4 rows of 2 bins each span
    # 50-250, 250-450, 450-650, 650-850 Hz, 2 rows 50-450 and 450-850 Hz
    assert np.allclose(librosa.mel_to_hz(bands.mel_bin_edges(8, 0.0, 900.0)),
                       np.arange(50, 851, 100))
    w = bands.row_weights([[250, 450], [350, 650], [0, 900], [0, 40]], 4, 8, 0.0, 900.0)
    assert np.allclose(w[0], np.array([F, 1, F, F]) / (1 + 3 * F))  # exactly row 1
    assert np.allclose(w[1], np.array([F, 0.5, 1, F]) / (1.5 + 2 * F))  # half of row 1, row 2
    assert w[1, 2] == w[1].max() and w[0, 0] == w[0, 2] == w[0, 3] == w[0].min()
    assert np.allclose(w[2], 0.25)  # the full range: the plain mean over rows
    assert np.allclose(w[3], 0.25)  # a band outside every row: no row is preferred
    assert np.allclose(w.sum(1), 1.0)
    two = bands.row_weights([[250, 450]], 2, 8, 0.0, 900.0)
    assert np.allclose(two[0], np.array([0.5, F]) / (0.5 + F))


# ----------------------------------------------------------------------------- bands
def boxes(**extra):
    """Recordings tr0, tr1 train; va0 validation. Class a: TP boxes at 1-2 kHz in training,
    one at 100 Hz-7 kHz in validation; b: TP boxes only in validation; c: only an FP box."""
    ann = pd.DataFrame([("tr0", "a", 1000.0, 2000.0, 1), ("tr1", "a", 1200.0, 1800.0, 1),
                        ("va0", "a", 100.0, 7000.0, 1), ("va0", "b", 500.0, 900.0, 1),
                        ("tr0", "c", 600.0, 800.0, -1)],
                       columns=["recording_id", "class", "f_min", "f_max", "label"])
    return ann.assign(t_min=0.0, t_max=1.0, **extra)


def expected_band(f_mins, f_maxs, n_mels=64, fmin=50.0, fmax=8000.0):
    margin = (librosa.hz_to_mel(fmax) - librosa.hz_to_mel(fmin)) / (n_mels + 1)
    low = librosa.mel_to_hz(librosa.hz_to_mel(np.quantile(f_mins, 0.05)) - margin)
    high = librosa.mel_to_hz(librosa.hz_to_mel(np.quantile(f_maxs, 0.95)) + margin)
    return [low, high]


def test_bands_come_from_the_training_recordings_tp_boxes_only():
    ann = boxes()
    got = bands.class_bands(ann, ["a", "b", "c"], {"tr0", "tr1"}, 64, 50.0, 8000.0)
    assert np.allclose(got[0], expected_band([1000, 1200], [2000, 1800]), atol=0.1)
    assert got[1] == got[2] == [50.0, 8000.0]  # no TP box in training: the full range
    # a validation box, however it is drawn, does not move the training bands
    moved = ann.assign(f_min=np.where(ann["recording_id"] == "va0", 60.0, ann["f_min"]))
    assert bands.class_bands(moved, ["a", "b", "c"], {"tr0", "tr1"}, 64, 50.0, 8000.0) == got
    # with va0 trained on, a's band would widen to its box (100 Hz-7 kHz)
    wide = bands.class_bands(ann, ["a", "b", "c"], {"tr0", "tr1", "va0"}, 64, 50.0, 8000.0)
    assert wide[0][0] < 1000 and wide[0][1] > 2000 and wide[1] != [50.0, 8000.0]


def test_boxes_without_frequencies_and_clip_labels_give_the_full_range(capsys):
    full = [[50.0, 8000.0]] * 3
    nan = boxes(f_min=np.nan, f_max=np.nan)
    assert bands.class_bands(nan, ["a", "b", "c"], {"tr0", "tr1"}, 64, 50.0, 8000.0) == full
    # a band over (almost) the whole axis is the full range, too
    near = boxes(f_min=40.0, f_max=7500.0)
    assert bands.class_bands(near, ["a", "b", "c"], {"tr0", "tr1"}, 64, 50.0, 8000.0) == full
    clips = boxes().drop(columns=["f_min", "f_max"])
    mcfg = {"band_head": True, "n_mels": 64, "fmin": 50.0, "fmax": 8000.0}
    out = bands.for_fold(mcfg, clips, ["a", "b", "c"], {"tr0", "tr1"}, fold=2)
    assert out["bands"] == full
    line = capsys.readouterr().out
    assert line.count("\n") == 1 and "fold 2: band_head" in line and "full range" in line
    assert bands.for_fold({**mcfg, "band_head": False}, clips, ["a"], {"tr0"}, 0) == \
        {**mcfg, "band_head": False}  # off: no bands, nothing printed
    assert capsys.readouterr().out == ""


def test_stage1_fold_model_takes_its_bands_from_its_training_recordings(scripts, capsys):
    s1 = scripts("02_train_stage1")
    ann = boxes()
    folds = pd.DataFrame({"recording_id": ["tr0", "tr1", "va0"], "fold": [0, 0, 1],
                          "has_tp": [True, True, True]})
    rec = {rid: np.zeros(16000, np.float32) for rid in folds["recording_id"]}
    prep = SimpleNamespace(folds=folds, annotations=ann, clips=False, classes=["a", "b", "c"],
                           cache=ArrayCache(rec), sample_rate=16000,
                           durations={r: 1.0 for r in rec})
    cfg = s1.CFG(backbone="resnet10t", in_chans=1, n_fft=512, hop_length=250, n_mels=64,
                 fmin=50.0, fmax=8000.0, image_size="", crop_seconds=1.0, band_head=True,
                 batch_size=2)
    from common import stage
    mcfg = stage.model_cfg(cfg, prep.classes, prep.sample_rate)
    model, _, _, trained_on = s1.make_fold(cfg, prep, 1, mcfg, "cpu")  # fold 1 validates va0
    assert trained_on == {"tr0", "tr1"} and isinstance(model.head, BandAttentionHead)
    assert model.model_cfg["bands"] == bands.class_bands(ann, prep.classes, {"tr0", "tr1"},
                                                         64, 50.0, 8000.0)
    assert "fold 1: band_head: 1 of 3 classes" in capsys.readouterr().out


# ----------------------------------------------------------------------------- the model
def test_band_head_keeps_the_outputs_and_the_state_dict_keys(tmp_path):
    torch.manual_seed(0)
    plain = build_model(CFG).eval()
    band = build_model({**CFG, "band_head": True, "bands": LOW_BAND}).eval()
    assert isinstance(plain.head, AttentionHead) and not isinstance(plain.head, BandAttentionHead)
    assert band.head.band_weights.shape == (3, 4)  # 3 distinct bands x F' = 4 rows
    assert set(band.state_dict()) == set(plain.state_dict())  # same parameters; a plain
    band.load_state_dict(plain.state_dict())  # model's checkpoint loads into the band head
    wave = 0.1 * torch.randn(2, 8000)
    with torch.no_grad():
        a, b = plain(wave), band(wave)
    assert set(a) == set(b) == {"clip_logit", "clip_prob", "frame_logit", "frame_prob"}
    for key in a:
        assert a[key].shape == b[key].shape, key
    # class 1 (full range) is the plain head's class 1; the banded classes differ
    assert torch.allclose(a["clip_logit"][:, 1], b["clip_logit"][:, 1], atol=1e-5)
    assert not torch.allclose(a["clip_logit"][:, 0], b["clip_logit"][:, 0], atol=1e-4)
    # last-layer mixup: lambda 1 is no mix
    with torch.no_grad():
        mixed = band(wave, mix=(torch.tensor([1, 0]), 1.0))
    assert torch.allclose(mixed["clip_logit"], b["clip_logit"], atol=1e-6)
    # a checkpoint rebuilds the same model from its model_cfg alone
    save_checkpoint(tmp_path / "fold0.pth", band)
    again, ckpt = load_checkpoint(tmp_path / "fold0.pth")
    assert ckpt["model_cfg"]["bands"] == LOW_BAND and ckpt["model_cfg"]["band_head"] is True
    with torch.no_grad():
        c = again(wave)
    for key in b:
        torch.testing.assert_close(c[key], b[key], rtol=0, atol=0)


def test_a_checkpoint_without_the_band_keys_loads_with_the_plain_head(tmp_path):
    torch.manual_seed(0)
    model = build_model(CFG).eval()
    save_checkpoint(tmp_path / "old.pth", model)
    ckpt = torch.load(tmp_path / "old.pth", weights_only=False)
    for key in ("band_head", "bands"):  # a checkpoint written before the option
        ckpt["model_cfg"].pop(key)
    torch.save(ckpt, tmp_path / "old.pth")
    loaded, _ = load_checkpoint(tmp_path / "old.pth")
    assert not isinstance(loaded.head, BandAttentionHead) and loaded.model_cfg["band_head"] is False


def test_a_class_does_not_read_the_rows_outside_its_band():
    torch.manual_seed(0)
    feats = torch.randn(2, 16, 4, 9)
    top = feats.clone()
    top[:, :, 2:] += torch.randn(2, 16, 2, 9)  # a change confined to the top two rows
    # with no floor: class 0 reads rows 0-1 only, class 1 every row
    head = BandAttentionHead(16, 2, 0.0, [[0.5, 0.5, 0, 0], [0.25] * 4]).eval()
    plain = AttentionHead(16, 2, 0.0).eval()
    plain.load_state_dict(head.state_dict())
    with torch.no_grad():
        a, b = head(feats), head(top)
        pa, pb = plain(feats.mean(2)), plain(top.mean(2))
    for key in ("clip_logit", "frame_logit"):
        assert torch.equal(a[key][..., 0], b[key][..., 0])  # blind to the top rows
        assert not torch.allclose(a[key][..., 1], b[key][..., 1])
        assert not torch.allclose(pa[key][..., 0], pb[key][..., 0])  # the plain head reacts
        torch.testing.assert_close(a[key][..., 1], pa[key][..., 1])  # full range = plain
    # with the model's weights (floor included): d logit_0 / d row is the row's weight, so a
    # row outside the band gets the floor's share of a row inside it
    model = build_model({**CFG, "band_head": True, "bands": LOW_BAND}).eval()
    w = model.head.band_weights[model.head.band_of.flatten()[:3]]  # (K, F') per class
    assert torch.allclose(w[0], torch.tensor([1, F, F, F]) / (1 + 3 * F))
    feats = torch.randn(2, model.backbone.num_features, 4, 5, requires_grad=True)
    model.head(feats)["clip_logit"][:, 0].sum().backward()
    grad = feats.grad.abs().sum(dim=(0, 1, 3))
    assert torch.allclose(grad[1:] / grad[0], torch.full((3,), F), rtol=1e-4)
    feats.grad = None
    plain = AttentionHead(model.backbone.num_features, 3, 0.0).eval()
    plain.load_state_dict(model.head.state_dict())  # the same weights: every row alike
    plain(feats.mean(2))["clip_logit"][:, 0].sum().backward()
    grad = feats.grad.abs().sum(dim=(0, 1, 3))
    assert torch.allclose(grad, grad[0].expand(4), rtol=1e-4)


def test_onnx_export_with_the_band_head_passes_the_kits_check():
    from common.onnx_runtime import exported
    torch.manual_seed(0)
    model = build_model({**CFG, "band_head": True, "bands": LOW_BAND}).eval()
    onnx_model, data = exported(model, 8000)  # raises OnnxExportError unless torch's outputs
    assert len(data) > 1000
    with torch.inference_mode():
        want = model(torch.zeros(1, 8000) + 0.01)
    got = onnx_model(torch.zeros(1, 8000) + 0.01)
    np.testing.assert_allclose(got["clip_logit"].numpy(), want["clip_logit"].numpy(),
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("extra, rows", [({"image_size": (64, 40)}, 2),  # 64 resized mels / 32
                                         ({"backbone": "cnn10"}, 8),  # 128 mels / 16
                                         ({"backbone": "vit_tiny_patch16_224"}, 8),  # patches
                                         ({"backbone": "wavenet"}, 1)])  # a 1-D map
def test_band_rows_follow_the_encoder(extra, rows):
    model = build_model({**CFG, "band_head": True, "bands": LOW_BAND, **extra})
    assert model.head.band_weights.shape[1] == rows
    out = model(0.1 * torch.randn(2, 8000))
    assert out["clip_logit"].shape == (2, 3)


def test_stage3_band_head_rebuilds_a_plain_initial_model_with_its_weights(tmp_path, scripts,
                                                                          capsys):
    s3 = scripts("04_train_stage3")
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "fold1.pth", build_model(CFG))
    ann = boxes()
    prep = SimpleNamespace(annotations=ann, classes=["a", "b", "c"])
    kept = s3.initial_model(s3.CFG(band_head=False), tmp_path / "fold1.pth", prep,
                            {"tr0", "tr1"}, 1, "cpu")
    assert not isinstance(kept.head, BandAttentionHead)
    model = s3.initial_model(s3.CFG(band_head=True), tmp_path / "fold1.pth", prep,
                             {"tr0", "tr1"}, 1, "cpu")
    assert isinstance(model.head, BandAttentionHead) and model.model_cfg["band_head"] is True
    assert model.model_cfg["bands"] == bands.class_bands(ann, prep.classes, {"tr0", "tr1"},
                                                         128, 50.0, 4000.0)
    assert "fold 1: band_head: 1 of 3 classes" in capsys.readouterr().out
    for key, value in kept.state_dict().items():  # the initial weights, every one
        assert torch.equal(model.state_dict()[key], value), key
