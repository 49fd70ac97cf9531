"""common/backbones.py: every backbone of the seed's search (and a ViT, PANNs Cnn14, the
1-D WaveNet) builds behind the SED head and trains (forward + backward) at two resolutions;
a PANNs-style checkpoint loads by parameter name."""
from __future__ import annotations

import pytest
import timm
import torch

from common.backbones import PannsCnn, create_backbone
from common.sed import SEDModel
from tests.test_features_sed import one_thread  # noqa: F401 (autouse: one thread, tiny inputs)

SR = 16000
# two resolutions: 32 mels x 65 frames (hop 250) and 48 mels x 101 frames (hop 160), 1 s crops
RESOLUTIONS = [(32, 250), (48, 160)]
BACKBONES = ["cnn14", "tf_efficientnet_b0", "tf_efficientnetv2_s", "rexnet_100", "rexnet_150",
             "rexnet_200", "resnest50d", "vit_tiny_patch16_224", "wavenet"]


def model_cfg(backbone, n_mels, hop, **kw):
    return {"backbone": backbone, "n_classes": 4, "in_chans": 1, "sample_rate": SR, "n_fft": 512,
            "hop_length": hop, "n_mels": n_mels, "fmin": 50.0, "fmax": 8000.0, "image_size": None,
            "dropout": 0.1, "crop_seconds": 1.0, **kw}


@pytest.mark.parametrize("backbone", BACKBONES)
def test_forward_backward_at_two_resolutions(backbone):
    torch.manual_seed(0)
    for n_mels, hop in RESOLUTIONS:
        model = SEDModel(model_cfg(backbone, n_mels, hop)).train()
        wave = 0.1 * torch.randn(2, SR)
        out = model(wave)
        frames = SR // hop + 1
        assert out["clip_logit"].shape == (2, 4)
        assert out["frame_logit"].shape == (2, frames, 4), (backbone, n_mels, hop)
        out["clip_logit"].sum().backward()
        grads = [p.grad for p in model.backbone.parameters() if p.requires_grad]
        assert all(g is not None and torch.isfinite(g).all() for g in grads), backbone
        assert sum(float(g.abs().sum()) for g in grads) > 0


def test_vit_is_sized_to_the_mel_image():
    model = SEDModel(model_cfg("vit_tiny_patch16_224", 48, 160))
    assert tuple(model.backbone.vit.patch_embed.img_size) == (48, 101)
    assert model.backbone.vit.patch_embed.grid_size == (3, 6)


def test_wavenet_reads_the_waveform_and_is_causal():
    torch.manual_seed(0)
    net = create_backbone("wavenet", 1, hop_length=160).eval()
    assert net.takes_wave
    wave = torch.randn(1, SR)
    later = wave.clone()
    later[:, SR // 2:] += 1.0  # change only the second half
    a, b = net.stem(wave.unsqueeze(1)), net.stem(later.unsqueeze(1))
    for block in net.blocks:
        a, b = block(a)[0], block(b)[0]
    half = SR // 2 // 16 - 2  # stem steps that see only the first half (stride 16, kernel 32)
    assert torch.allclose(a[..., :half], b[..., :half])
    assert not torch.allclose(a[..., half + 4:], b[..., half + 4:])


def test_panns_checkpoint_loads_by_name(tmp_path):
    torch.manual_seed(1)
    source = PannsCnn("cnn10", 1, 64)
    state = {k: v for k, v in source.state_dict().items()}
    assert {"bn0.weight", "conv_block1.conv1.weight", "conv_block4.bn2.running_var"} <= set(state)
    state["fc_audioset.weight"] = torch.zeros(527, 512)  # PANNs' classifier: skipped
    path = tmp_path / "Cnn10_mAP=0.380.pth"
    torch.save({"model": state, "iteration": 1}, path)
    loaded = create_backbone("cnn10", 3, str(path), input_size=(64, 101))
    conv = loaded.conv_block1.conv1.weight
    assert conv.shape[1] == 3  # 1-channel PANNs kernel adapted to 3 input channels
    assert torch.allclose(loaded.conv_block2.conv1.weight, source.conv_block2.conv1.weight)
    assert torch.allclose(conv.sum(1), source.conv_block1.conv1.weight.sum(1), atol=1e-5)


def test_cnn14_has_the_panns_size():
    net = PannsCnn("cnn14", 1, 64)
    params = sum(p.numel() for p in net.parameters())
    # Cnn14's 80.8 M minus its fc1 (2048 x 2048) and AudioSet classifier (2048 x 527)
    assert 75.0e6 < params < 76.0e6


# ----------------------------------------------------------------------------- partial weights
def stage1_cfg(scripts, **kw):
    """02's CFG as a user sets it on the command line (the kit's own pretrained_path path)."""
    base = dict(in_chans=1, crop_seconds=1.0, n_fft=512, hop_length=250, n_mels=32, fmax=8000.0,
                image_size="")
    return scripts("02_train_stage1").CFG(**{**base, **kw})


def test_other_architecture_stops_naming_the_first_mismatches(tmp_path, scripts, capsys):
    from common.cli import ConfigError
    from common.stage import model_cfg as stage_model_cfg
    torch.manual_seed(0)
    source = timm.create_model("efficientnet_b0", pretrained=False)  # random init, 3 channels
    path = tmp_path / "efficientnet_b0.pth"
    torch.save(source.state_dict(), path)
    target = timm.create_model("tf_efficientnet_b2", pretrained=False, in_chans=1, num_classes=0,
                               global_pool="").state_dict()
    # the first tensor of the file whose shape differs (the 3-channel stem is adapted, not one)
    first = next(k for k, v in source.state_dict().items()
                 if k in target and v.shape != target[k].shape and k != "conv_stem.weight")
    cfg = stage1_cfg(scripts, backbone="tf_efficientnet_b2", pretrained_path=str(path))
    for build in (lambda: stage_model_cfg(cfg, ["a", "b"], SR),   # 02's check before any work
                  lambda: SEDModel(model_cfg("tf_efficientnet_b2", 32, 250),
                                   pretrained_path=str(path))):   # and the model build itself
        with pytest.raises(ConfigError) as info:
            build()
        message = str(info.value)
        assert str(path) in message and "tf_efficientnet_b2" in message
        assert f"of the {len(target)} tensors" in message and "fewer than half" in message
        assert first in message
        shapes = list(source.state_dict()[first].shape), list(target[first].shape)
        assert f"file {shapes[0]} vs model {shapes[1]}" in message
        assert "same architecture" in message  # what to do
    assert "loaded" not in capsys.readouterr().out  # nothing was loaded, nothing reported


def test_matching_state_dict_loads_fully_and_says_so(tmp_path, capsys):
    torch.manual_seed(1)
    source = timm.create_model("resnet10t", pretrained=False, in_chans=1, num_classes=0,
                               global_pool="")
    path = tmp_path / "resnet10t.pth"
    torch.save(source.state_dict(), path)
    total = len(source.state_dict())
    torch.manual_seed(2)
    backbone = create_backbone("resnet10t", 1, str(path))
    for key, value in source.state_dict().items():
        assert torch.equal(backbone.state_dict()[key], value), key
    lines = [line for line in capsys.readouterr().out.splitlines() if "pretrained_path" in line]
    assert len(lines) == 1
    assert f"loaded {total} of {total} backbone tensors; skipped 0 of the file's (0 shape " \
           "mismatch, 0 unknown name); 0 backbone tensors not loaded" in lines[0]


def test_partly_fitting_state_dict_loads_what_fits_and_counts_the_rest(tmp_path, capsys):
    torch.manual_seed(1)
    source = timm.create_model("resnet10t", pretrained=False, in_chans=1, num_classes=0,
                               global_pool="")
    state = dict(source.state_dict())
    total = len(state)
    state["layer4.0.conv2.weight"] = torch.zeros(7, 7, 3, 3)  # another shape: skipped
    del state["layer4.0.bn2.weight"]                           # absent: not loaded
    state["head.fc.weight"] = torch.zeros(10, 512)             # a name the backbone lacks
    path = tmp_path / "partial.pth"
    torch.save(state, path)
    torch.manual_seed(2)
    fresh = create_backbone("resnet10t", 1)
    torch.manual_seed(2)
    backbone = create_backbone("resnet10t", 1, str(path))
    own = backbone.state_dict()
    assert torch.equal(own["layer4.0.conv2.weight"], fresh.state_dict()["layer4.0.conv2.weight"])
    assert torch.equal(own["layer1.0.conv1.weight"], state["layer1.0.conv1.weight"])
    out = capsys.readouterr().out
    assert f"loaded {total - 2} of {total} backbone tensors; skipped 2 of the file's (1 shape " \
           "mismatch, 1 unknown name); 2 backbone tensors not loaded" in out
