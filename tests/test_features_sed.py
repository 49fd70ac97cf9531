"""common/features.py (mel front end) and common/sed.py (SED model, checkpoints, backbones)."""
from __future__ import annotations

import librosa
import numpy as np
import pytest
import timm
import torch

from common.cli import ConfigError
from common.features import MelFrontEnd, n_frames
from common.sed import SEDModel, build_model, create_backbone, load_checkpoint, save_checkpoint

SR = 16000
FRONT = dict(sample_rate=SR, n_fft=512, hop_length=160, n_mels=64, fmin=50.0, fmax=8000.0)


def model_cfg(**kw):
    cfg = {"backbone": "resnet10t", "n_classes": 5, "in_chans": 1, "sample_rate": SR,
           "n_fft": 512, "hop_length": 160, "n_mels": 64, "fmin": 50.0, "fmax": 8000.0,
           "image_size": None, "dropout": 0.5, "crop_seconds": 1.0}
    cfg.update(kw)
    return cfg


def waves(batch=2, seconds=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return 0.1 * torch.randn(batch, int(SR * seconds), generator=g)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny inputs: one intra-op thread is much faster than two competing for 2 busy cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def sine(freq, seconds=1.0, sr=SR):
    t = torch.arange(int(sr * seconds), dtype=torch.float32) / sr
    return 0.5 * torch.sin(2 * np.pi * freq * t)


# ----------------------------------------------------------------------------- front end
def test_n_frames():
    assert n_frames(16000, 160) == 101
    assert n_frames(480000, 512) == 938


@pytest.mark.parametrize("n_samples", [16000, 12345])
def test_front_end_shape(n_samples):
    front = MelFrontEnd(**FRONT)
    out = front(waves(3, n_samples / SR)[:, :n_samples])
    assert out.shape == (3, 1, 64, n_samples // 160 + 1)
    assert out.dtype == torch.float32


def test_front_end_three_channels_are_copies():
    out = MelFrontEnd(**FRONT, in_chans=3)(waves(2))
    assert out.shape == (2, 3, 64, 101)
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 0], out[:, 2])


def test_front_end_image_size():
    out = MelFrontEnd(**FRONT, in_chans=3, image_size=(32, 48))(waves(2))
    assert out.shape == (2, 3, 32, 48)


def test_front_end_per_image_normalisation():
    batch = torch.stack([waves(1, seed=1)[0] * 0.01, sine(3000.0) * 0.9])
    out = MelFrontEnd(**FRONT)(batch)
    for i in range(2):  # each example on its own, not the batch as a whole
        assert out[i].mean().item() == pytest.approx(0.0, abs=1e-4)
        assert out[i].std().item() == pytest.approx(1.0, abs=1e-3)


def test_front_end_is_per_example():
    front = MelFrontEnd(**FRONT)
    batch = waves(3)
    together = front(batch)
    alone = front(batch[1:2])
    torch.testing.assert_close(together[1:2], alone, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("freq", [500.0, 2000.0, 6000.0])
def test_tone_lands_in_the_right_mel_bin(freq):
    out = MelFrontEnd(**FRONT)(sine(freq)[None])
    profile = out[0, 0].mean(dim=-1).numpy()  # mean over time, per mel bin
    centres = librosa.mel_frequencies(n_mels=64 + 2, fmin=50.0, fmax=8000.0)[1:-1]
    expected = int(np.argmin(np.abs(centres - freq)))
    assert abs(int(np.argmax(profile)) - expected) <= 1


def test_front_end_rejects_bad_settings():
    with pytest.raises(ValueError, match="n_mels"):
        MelFrontEnd(sample_rate=SR, n_fft=64, hop_length=16, n_mels=40, fmin=0.0, fmax=8000.0)
    with pytest.raises(ValueError, match="fmax"):
        MelFrontEnd(sample_rate=SR, n_fft=512, hop_length=160, n_mels=64, fmin=0.0, fmax=9000.0)


# ----------------------------------------------------------------------------- SED model
def check_outputs(out, batch, frames, k):
    assert set(out) >= {"clip_logit", "clip_prob", "frame_logit", "frame_prob"}
    assert out["clip_logit"].shape == (batch, k)
    assert out["clip_prob"].shape == (batch, k)
    assert out["frame_logit"].shape == (batch, frames, k)
    assert out["frame_prob"].shape == (batch, frames, k)
    assert torch.all((out["clip_prob"] >= 0) & (out["clip_prob"] <= 1))
    assert torch.all((out["frame_prob"] >= 0) & (out["frame_prob"] <= 1))
    torch.testing.assert_close(out["frame_prob"], torch.sigmoid(out["frame_logit"]))
    for value in out.values():
        assert torch.isfinite(value).all()


@pytest.mark.parametrize("in_chans", [1, 3])
def test_sed_model_output_shapes(in_chans):
    torch.manual_seed(0)
    model = SEDModel(model_cfg(in_chans=in_chans)).eval()
    with torch.no_grad():
        out = model(waves(2))
    check_outputs(out, 2, 101, 5)


def test_sed_model_output_shapes_with_image_size():
    torch.manual_seed(0)
    model = SEDModel(model_cfg(backbone="mobilenetv3_small_100", in_chans=3,
                               image_size=(64, 96), n_classes=4)).eval()
    with torch.no_grad():
        out = model(waves(2))
    check_outputs(out, 2, 96, 4)


def test_clip_prob_is_attention_pooled_sigmoid():
    """clip_prob lies between the min and max framewise probability of the head."""
    torch.manual_seed(0)
    model = SEDModel(model_cfg()).eval()
    with torch.no_grad():
        out = model(waves(2))
    lo = out["frame_prob"].amin(dim=1) - 1e-5
    hi = out["frame_prob"].amax(dim=1) + 1e-5
    assert torch.all((out["clip_prob"] >= lo) & (out["clip_prob"] <= hi))


def test_mixup_lambda_one_is_no_mix_and_zero_is_the_permuted_batch():
    torch.manual_seed(0)
    model = SEDModel(model_cfg()).eval()
    x = waves(3, seed=3)
    perm = torch.tensor([2, 0, 1])
    with torch.no_grad():
        plain = model(x)
        same = model(x, mix=(perm, 1.0))
        swapped = model(x, mix=(perm, 0.0))
        permuted = model(x[perm])
        per_row = model(x, mix=(perm, torch.tensor([1.0, 0.0, 1.0])))
    for key in ("clip_logit", "clip_prob", "frame_logit"):
        torch.testing.assert_close(same[key], plain[key], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(swapped[key], permuted[key], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(per_row["clip_logit"][[0, 2]], plain["clip_logit"][[0, 2]],
                               atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(per_row["clip_logit"][1], permuted["clip_logit"][1],
                               atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        half = model(x, mix=(perm, 0.5))["clip_logit"]
    assert not torch.allclose(half, plain["clip_logit"], atol=1e-4)


def test_checkpoint_round_trip_needs_no_other_flag(tmp_path):
    torch.manual_seed(0)
    model = SEDModel(model_cfg(n_classes=3, dropout=0.2))
    model.train()
    with torch.no_grad():  # move BatchNorm running statistics away from their init values
        for seed in range(3):
            model(waves(2, seed=seed))
    model.eval()
    x = waves(2, seed=9)
    with torch.no_grad():
        expected = model(x)
    path = save_checkpoint(tmp_path / "fold0.pth", model, extra={"fold": 0, "score": 0.5})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fold0.pth"]
    loaded, ckpt = load_checkpoint(path)
    assert not loaded.training
    assert ckpt["fold"] == 0 and ckpt["score"] == 0.5
    assert ckpt["model_cfg"] == model.model_cfg
    with torch.no_grad():
        got = loaded(x)
    for key in expected:
        assert torch.equal(got[key], expected[key]), key


def test_build_model_ignores_extra_cfg_keys():
    model = build_model({**model_cfg(), "lr": 0.1, "epochs": 3})
    assert "lr" not in model.model_cfg and model.model_cfg["backbone"] == "resnet10t"


# ----------------------------------------------------------------------------- backbones
def test_unknown_backbone_lists_close_timm_names():
    with pytest.raises(ConfigError) as info:
        create_backbone("resnet10x", 1)
    assert "resnet10x" in str(info.value) and "resnet10t" in str(info.value)


def test_pretrained_path_loads_local_state_dict(tmp_path):
    torch.manual_seed(1)
    source = timm.create_model("resnet10t", pretrained=False, in_chans=1, num_classes=0,
                               global_pool="")
    path = tmp_path / "backbone.pth"
    torch.save(source.state_dict(), path)
    torch.manual_seed(2)
    model = SEDModel(model_cfg(), pretrained_path=str(path))
    own = model.backbone.state_dict()
    for key, value in source.state_dict().items():
        assert torch.equal(own[key], value), key


def test_pretrained_path_wrapped_state_dict(tmp_path):
    torch.manual_seed(1)
    source = timm.create_model("resnet10t", pretrained=False, in_chans=1, num_classes=0,
                               global_pool="")
    path = tmp_path / "ckpt.pth"
    torch.save({"state_dict": source.state_dict()}, path)
    backbone = create_backbone("resnet10t", 1, str(path))
    for key, value in source.state_dict().items():
        assert torch.equal(backbone.state_dict()[key], value), key


def test_three_channel_state_dict_into_one_channel_model(tmp_path):
    torch.manual_seed(1)
    source = timm.create_model("resnet10t", pretrained=False, in_chans=3, num_classes=1000)
    state = source.state_dict()
    path = tmp_path / "imagenet_like.pth"
    torch.save(state, path)
    torch.manual_seed(2)
    backbone = create_backbone("resnet10t", 1, str(path))
    own = backbone.state_dict()
    first = "conv1.0.weight"
    assert state[first].shape[1] == 3 and own[first].shape[1] == 1
    # timm's adaptation for one channel: the sum over the RGB filters
    torch.testing.assert_close(own[first], state[first].sum(dim=1, keepdim=True))
    for key, value in own.items():
        if key != first:
            assert torch.equal(value, state[key]), key
    assert "fc.weight" not in own  # the classifier is skipped


def test_pretrained_path_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        create_backbone("resnet10t", 1, str(tmp_path / "none.pth"))
    path = tmp_path / "other.pth"
    torch.save({"unrelated.weight": torch.zeros(3)}, path)
    with pytest.raises(ConfigError, match="fits only 0 of the"):
        create_backbone("resnet10t", 1, str(path))
