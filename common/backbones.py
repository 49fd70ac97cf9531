"""Backbones behind the SED head: any timm model, a ViT sized to the mel image, the kit's
own PANNs Cnn14/Cnn10 (docs/recipe.md, "PANNs Cnn14") and a 1-D WaveNet over the raw waveform.

Every backbone has `num_features`, `takes_wave` (True: it reads the waveform (B, N), not
the mel image) and `forward_features(x) -> (B, C, F', T')`. Nothing is downloaded:
`pretrained_path` loads a local state dict (a PANNs checkpoint file loads into cnn14 by
its parameter names: bn0, conv_block1..6.{conv1,bn1,conv2,bn2}).
"""
from __future__ import annotations

import difflib
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from torch import nn

from common.cli import ConfigError

PANNS = {"cnn14": ((64, 128, 256, 512, 1024, 2048), (2, 2, 2, 2, 2, 1)),  # time stride 32
         "cnn10": ((64, 128, 256, 512), (2, 2, 2, 2))}                    # time stride 16
KIT_BACKBONES = (*PANNS, "wavenet")


class ConvBlock(nn.Module):
    """PANNs block: (3x3 conv, BN, ReLU) x 2, then a pool x pool average pool."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, 1, 1, bias=False)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn1, self.bn2 = nn.BatchNorm2d(cout), nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor, pool: int) -> torch.Tensor:
        x = F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))
        return F.avg_pool2d(x, pool) if pool > 1 else x


class PannsCnn(nn.Module):
    """PANNs CNN trunk (Cnn14: 64..2048 channels, ~80 M parameters with its fc layers).

    Input (B, C, F, T) mel image; internally (B, C, T, F) as PANNs lays it out, so a PANNs
    checkpoint's kernels keep their orientation. bn0 normalises each mel bin (F bins)."""
    takes_wave = False

    def __init__(self, name: str, in_chans: int, freq_bins: int):
        super().__init__()
        channels, self.pools = PANNS[name]
        self.bn0 = nn.BatchNorm2d(freq_bins)
        for i, (cin, cout) in enumerate(zip((in_chans,) + channels[:-1], channels), 1):
            self.add_module(f"conv_block{i}", ConvBlock(cin, cout))
        self.num_features = channels[-1]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = x.transpose(2, 3)                                   # (B, C, T, F)
        x = self.bn0(x.transpose(1, 3)).transpose(1, 3)         # BN over the F mel bins
        for i, pool in enumerate(self.pools, 1):
            x = F.dropout(getattr(self, f"conv_block{i}")(x, pool), 0.2, self.training)
        return x.transpose(2, 3)                                # (B, C', F', T')


class GatedResidual(nn.Module):
    """WaveNet layer: dilated causal conv, tanh * sigmoid gate, residual and skip 1x1 convs."""

    def __init__(self, channels: int, dilation: int, residual: bool = True):
        super().__init__()
        self.dilation = dilation
        self.conv = nn.Conv1d(channels, 2 * channels, 2, dilation=dilation)
        self.skip = nn.Conv1d(channels, channels, 1)
        # the last layer feeds only the skip sum: a residual conv there would get no gradient
        self.res = nn.Conv1d(channels, channels, 1) if residual else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = self.conv(F.pad(x, (self.dilation, 0))).chunk(2, dim=1)  # causal: pad the past
        h = torch.tanh(a) * torch.sigmoid(b)
        return (x + self.res(h) if self.res is not None else x), self.skip(h)


class WaveNet1D(nn.Module):
    """Raw waveform (B, N) -> (B, C, 1, N // hop + 1): a strided conv stem (`stride`
    samples per step), `stacks` x `layers` gated layers with dilations 1, 2, .., 2^(layers-1)
    (receptive field stride * 2^layers samples per stack), skip sum, average-pooled to the
    mel front end's frame rate, so the head sees the same frames as a mel model's."""
    takes_wave = True

    def __init__(self, hop_length: int, channels: int = 32, layers: int = 10, stacks: int = 1,
                 stride: int = 16):
        super().__init__()
        self.hop_length = hop_length
        self.stem = nn.Conv1d(1, channels, 2 * stride, stride=stride, padding=stride // 2)
        n = stacks * layers
        self.blocks = nn.ModuleList(GatedResidual(channels, 2 ** (j % layers), j < n - 1)
                                    for j in range(n))
        self.out = nn.Conv1d(channels, channels, 1)
        self.num_features = channels

    def forward_features(self, wave: torch.Tensor) -> torch.Tensor:
        x, skip = self.stem(wave.unsqueeze(1)), 0.0
        for block in self.blocks:
            x, s = block(x)
            skip = skip + s
        x = F.relu(self.out(F.relu(skip)))
        return F.adaptive_avg_pool1d(x, wave.shape[-1] // self.hop_length + 1).unsqueeze(2)


class TokenGrid(nn.Module):
    """A ViT as a feature-map backbone: tokens (B, prefix + F'T', C) -> (B, C, F', T')."""
    takes_wave = False

    def __init__(self, vit: nn.Module):
        super().__init__()
        self.vit = vit
        self.num_features = vit.num_features

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.vit.forward_features(x)[:, self.vit.num_prefix_tokens:]
        f, t = self.vit.patch_embed.grid_size
        return tokens.transpose(1, 2).reshape(x.shape[0], -1, f, t)


def _timm(name: str, in_chans: int, **kwargs) -> nn.Module:
    try:
        return timm.create_model(name, pretrained=False, in_chans=in_chans, num_classes=0,
                                 global_pool="", **kwargs)
    except RuntimeError as err:
        if "Unknown model" not in str(err):
            raise
        close = difflib.get_close_matches(name, [*timm.list_models(), *KIT_BACKBONES], n=5,
                                          cutoff=0.5)
        raise ConfigError(f"unknown backbone '{name}'. Close names: {close or 'none'}; see "
                          f"timm.list_models() or the kit's own {list(KIT_BACKBONES)}") from None


def create_backbone(name: str, in_chans: int, pretrained_path: str = "",
                    input_size: tuple[int, int] | None = None, hop_length: int = 0) -> nn.Module:
    """A feature extractor (no classifier, no pooling); nothing is downloaded.

    `input_size` = (mel bins, frames) of the image it will see: PANNs' bn0 needs the bins,
    a ViT its image size (its patch grid and position embeddings are built for it).
    `pretrained_path` loads weights from a local file (a timm/torch/PANNs state dict); a
    first conv with another channel count is adapted the way timm adapts ImageNet weights.
    """
    if name in PANNS:
        if not input_size:
            raise ConfigError(f"backbone {name} needs the mel image size (bins, frames)")
        model = PannsCnn(name, in_chans, input_size[0])
    elif name == "wavenet":
        model = WaveNet1D(hop_length or 320)
    else:
        model = _timm(name, in_chans)
        if hasattr(model, "patch_embed") and input_size:  # a ViT: rebuild for this image size
            model = _timm(name, in_chans, img_size=tuple(input_size))
    if pretrained_path:
        load_backbone_weights(model, pretrained_path, in_chans, name)
    return TokenGrid(model) if hasattr(model, "patch_embed") and hasattr(model, "num_prefix_tokens") \
        else model


def match_backbone_weights(own: dict, path: str, in_chans: int, name: str = "") -> tuple[dict, dict]:
    """The tensors of the local state dict at `path` that fit the backbone whose state dict
    (or its shapes: meta tensors do) is `own`: ({name: tensor}, report). A first conv with
    another channel count is adapted the way timm adapts ImageNet weights.

    report: loaded, total (the backbone's tensors, buffers included), shape_mismatch and
    unknown (file tensors skipped: wrong shape, or a name the backbone does not have, such as
    the classifier), missing (backbone tensors the file does not fill), and the first few
    mismatches as (name, file shape, model shape). Stops with a ConfigError when fewer than
    half of the backbone's tensors load: the file is then another architecture, and a
    backbone mostly left at random initialisation is not what `pretrained_path` asked for.
    """
    if not Path(path).is_file():
        raise ConfigError(f"pretrained_path {path} does not exist")
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state.get("model", state)) if isinstance(state, dict) else state
    loaded, mismatched, unknown = {}, [], []
    for key, value in state.items():
        if key not in own:
            unknown.append(key)
            continue
        if value.ndim == 4 and own[key].ndim == 4 and value.shape[1] != own[key].shape[1] \
                and value.shape[0] == own[key].shape[0]:
            value = timm.models.adapt_input_conv(in_chans, value, base_chans=value.shape[1])
        if value.shape == own[key].shape:
            loaded[key] = value
        else:
            mismatched.append((key, tuple(value.shape), tuple(own[key].shape)))
    report = {"loaded": len(loaded), "total": len(own), "shape_mismatch": len(mismatched),
              "unknown": len(unknown), "missing": len(own) - len(loaded),
              "first_mismatches": mismatched[:3], "first_unknown": unknown[:3]}
    if 2 * len(loaded) < len(own):
        what = f"backbone {name}" if name else "the backbone"
        shown = "; ".join(f"{k}: file {list(a)} vs model {list(b)}" for k, a, b in mismatched[:3])
        if unknown:
            shown += ("; " if shown else "") + f"names the backbone lacks: {unknown[:3]}"
        raise ConfigError(
            f"pretrained_path {path} fits only {len(loaded)} of the {len(own)} tensors of {what} "
            f"(fewer than half; {len(mismatched)} have another shape, {len(unknown)} names are "
            f"unknown). First mismatches: {shown or 'none'}. Give a state dict saved from the "
            f"same architecture as --backbone{'=' + name if name else ''}, or set --backbone to "
            "the architecture the file was saved from")
    return loaded, report


def load_backbone_weights(model: nn.Module, path: str, in_chans: int, name: str = "") -> dict:
    """Load a local state dict into `model`, skipping the classifier and every tensor that
    does not fit (see match_backbone_weights); prints one line of what loaded."""
    loaded, report = match_backbone_weights(model.state_dict(), path, in_chans, name)
    model.load_state_dict(loaded, strict=False)
    print(f"pretrained_path {path}: loaded {report['loaded']} of {report['total']} backbone "
          f"tensors; skipped {report['shape_mismatch'] + report['unknown']} of the file's "
          f"({report['shape_mismatch']} shape mismatch, {report['unknown']} unknown name); "
          f"{report['missing']} backbone tensors not loaded keep their initial values", flush=True)
    return report
