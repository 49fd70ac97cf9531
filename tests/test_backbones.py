"""common/backbones.py: every backbone of the seed's search (and a ViT, PANNs Cnn14, the
1-D WaveNet) builds behind the SED head and trains (forward + backward) at two resolutions;
a PANNs-style checkpoint loads by parameter name."""
from __future__ import annotations

import pytest
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
