"""SED model: mel front end -> any timm backbone -> attention head (docs/recipe.md,
"Front end and SED model").

The model returns a dict with stable keys:
  clip_logit (B, K)  attention-pooled pre-sigmoid logit, used by losses and predictions
  clip_prob  (B, K)  attention-pooled sigmoid of the framewise logits
  frame_logit (B, T, K), frame_prob (B, T, K)  framewise outputs upsampled to the input frames
A model is rebuilt from its `model_cfg` dict alone (see `build_model`), which every
checkpoint stores, so loading a checkpoint takes no other flag.

`band_head` (off by default) swaps AttentionHead for BandAttentionHead: each class pools the
encoder's frequency rows with weights from its own frequency band (model_cfg "bands", see
common/bands.py) instead of their plain mean. With it off the model is the plain one.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from common import bands as class_bands
from common.backbones import create_backbone, load_backbone_weights  # noqa: F401 (re-exported)
from common.features import MelFrontEnd
from common.noise import ColoredNoise

MODEL_KEYS = ("backbone", "n_classes", "in_chans", "sample_rate", "n_fft", "hop_length",
              "n_mels", "fmin", "fmax", "image_size", "dropout", "crop_seconds", "freq_coord", "spec_masks",
              "noise_white", "noise_pink", "noise_brown", "noise_snr_min", "noise_snr_max",
              "band_head", "bands")  # bands: [[low Hz, high Hz]] per class (common/bands.py)


class AttentionHead(nn.Module):
    """(B, C, T') encoder sequence -> clip and frame outputs (B, K) and (B, T', K)."""

    def __init__(self, in_features: int, n_classes: int, dropout: float):
        super().__init__()
        self.dropout = dropout
        self.fc1 = nn.Linear(in_features, in_features)
        self.att = nn.Conv1d(in_features, n_classes, 1)
        self.cla = nn.Conv1d(in_features, n_classes, 1)

    def forward(self, x: torch.Tensor) -> dict:
        # smooth over +-1 frame: peaks survive (max) and the context is kept (avg)
        x = F.max_pool1d(x, 3, 1, 1) + F.avg_pool1d(x, 3, 1, 1)
        x = F.dropout(x, self.dropout, self.training)
        x = F.relu(self.fc1(x.transpose(1, 2))).transpose(1, 2)
        x = F.dropout(x, self.dropout, self.training)
        return pooled(self.att(x), self.cla(x))


def pooled(att: torch.Tensor, cla: torch.Tensor) -> dict:
    """Attention and classification logits (B, K, T') -> the head's outputs: per class, a
    softmax over time of tanh(att) weights the frame logits and the frame probabilities."""
    weights = torch.softmax(torch.tanh(att), dim=-1)
    return {"clip_logit": (weights * cla).sum(-1),
            "clip_prob": (weights * torch.sigmoid(cla)).sum(-1),
            "frame_logit": cla.transpose(1, 2)}


class BandAttentionHead(AttentionHead):
    """(B, C, F', T') encoder map -> AttentionHead's outputs, each class reading its own
    frequency band: x_k = sum_f w[k, f] feats[:, :, f, :] with w the (K, F') row weights
    (common.bands.row_weights, each row summing to 1), AttentionHead's steps on x_k (max +
    avg smoothing over time, dropout, the shared fc1), and class k's attention and
    classification logits from its own x_k (row k of the att / cla convolutions), softmax
    over time per class. The parameters are AttentionHead's, so a plain head's weights load
    into it; with uniform w (every class on the full range) it computes AttentionHead on the
    mean over F'.

    Classes with equal weights share one pooled sequence: clip-label data (every class on
    the full range) costs what the plain head does, and in general the head's activations
    are (B, U, C, T') for U distinct bands, its logits (B, U, 2K, T')."""

    def __init__(self, in_features: int, n_classes: int, dropout: float, row_weights):
        super().__init__(in_features, n_classes, dropout)
        unique, inverse = np.unique(np.asarray(row_weights, dtype=np.float32), axis=0,
                                    return_inverse=True)
        inverse = np.tile(inverse.reshape(-1), 2)  # the band of each att, then each cla row
        # rebuilt from the model_cfg's bands: not part of the state dict
        self.register_buffer("band_weights", torch.from_numpy(unique), persistent=False)
        self.register_buffer("band_of", torch.from_numpy(inverse).long().view(1, 1, -1, 1),
                             persistent=False)

    def forward(self, feats: torch.Tensor) -> dict:
        if not torch.jit.is_tracing() and feats.shape[2] != self.band_weights.shape[1]:
            raise ValueError(f"the band head was built for {self.band_weights.shape[1]} "
                             f"frequency rows; the encoder gave {feats.shape[2]}")
        x = torch.einsum("bcft,uf->buct", feats, self.band_weights.to(feats.dtype))
        b, u, c, t = x.shape
        x = x.reshape(b * u, c, t)
        x = F.max_pool1d(x, 3, 1, 1) + F.avg_pool1d(x, 3, 1, 1)
        x = F.dropout(x, self.dropout, self.training)
        x = F.relu(self.fc1(x.transpose(1, 2)))                        # (B U, T', C)
        x = F.dropout(x, self.dropout, self.training).reshape(b, u, t, c)
        weight = torch.cat([self.att.weight, self.cla.weight]).squeeze(-1)  # (2K, C)
        logits = torch.einsum("butc,jc->bujt", x, weight)              # every (band, row)
        index = self.band_of.expand(b, 1, weight.shape[0], t)
        logits = logits.gather(1, index).squeeze(1)                     # each row's own band
        att, cla = logits.chunk(2, dim=1)
        return pooled(att + self.att.bias.view(1, -1, 1), cla + self.cla.bias.view(1, -1, 1))


class SEDModel(nn.Module):
    """Waveform (B, N) -> dict of clip and frame outputs (see module docstring)."""

    def __init__(self, model_cfg: dict, pretrained_path: str = ""):
        super().__init__()
        self.model_cfg = {k: model_cfg.get(k, False) for k in MODEL_KEYS}
        c = self.model_cfg
        self.front = MelFrontEnd(c["sample_rate"], c["n_fft"], c["hop_length"], c["n_mels"],
                                 c["fmin"], c["fmax"], in_chans=c["in_chans"],
                                 image_size=c["image_size"], freq_coord=bool(c["freq_coord"]),
                                 spec_masks=int(c["spec_masks"]))
        frames = int(round(c["crop_seconds"] * c["sample_rate"])) // c["hop_length"] + 1
        self.backbone = create_backbone(c["backbone"], c["in_chans"] + bool(c["freq_coord"]),
                                        pretrained_path, c["image_size"] or (c["n_mels"], frames),
                                        c["hop_length"])
        if c["band_head"]:
            self.head = BandAttentionHead(self.backbone.num_features, c["n_classes"],
                                          c["dropout"], self.band_row_weights())
        else:
            self.head = AttentionHead(self.backbone.num_features, c["n_classes"], c["dropout"])
        # training-time waveform noise (identity in eval mode); off when every probability is 0
        self.noise = ColoredNoise({k: c[f"noise_{k}"] or 0 for k in ("white", "pink", "brown")},
                                  (c["noise_snr_min"] or 0, c["noise_snr_max"] or 0))

    def feature_rows(self) -> int:
        """F' of the encoder map, read from a dry forward of the backbone on one zero input
        of the model's size (eval mode, no gradient, its train / eval mode restored): right
        for any backbone (timm, ViT, PANNs, the 1-D WaveNet: 1), and on the meta device."""
        c = self.model_cfg
        n_samples = int(round(c["crop_seconds"] * c["sample_rate"]))
        if getattr(self.backbone, "takes_wave", False):
            probe = torch.zeros(1, n_samples)
        else:
            size = c["image_size"] or (c["n_mels"], n_samples // c["hop_length"] + 1)
            probe = torch.zeros(1, c["in_chans"] + bool(c["freq_coord"]), *size)
        mode = self.backbone.training
        self.backbone.eval()
        with torch.no_grad():
            rows = self.backbone.forward_features(probe).shape[2]
        self.backbone.train(mode)
        return int(rows)

    def band_row_weights(self) -> np.ndarray:
        """(K, F') weights of the band head from the model_cfg's bands (a model_cfg without
        them, the dry build before a fold's bands are known: every class on the full range)."""
        c = self.model_cfg
        bands = c["bands"] or [[c["fmin"], c["fmax"]]] * c["n_classes"]
        if len(bands) != c["n_classes"]:
            raise ValueError(f"band_head: {len(bands)} bands for {c['n_classes']} classes")
        return class_bands.row_weights(bands, self.feature_rows(), c["n_mels"], c["fmin"],
                                       c["fmax"])

    def encode(self, wave: torch.Tensor) -> torch.Tensor:
        """(B, N) -> encoder feature map (B, C, F', T'); noise is added in training mode."""
        wave = self.noise(wave)
        if getattr(self.backbone, "takes_wave", False):
            return self.backbone.forward_features(wave)
        return self.backbone.forward_features(self.front(wave))

    def frames(self, n_samples: int) -> int:
        """Length of the frame outputs for a wave of n_samples: the mel frames (or the
        resized image's width)."""
        if self.front.image_size and not getattr(self.backbone, "takes_wave", False):
            return self.front.image_size[1]
        return n_samples // self.model_cfg["hop_length"] + 1

    def forward(self, wave: torch.Tensor, mix: tuple | None = None) -> dict:
        """`mix=(perm, lam)` mixes the encoder feature map with its permutation (last-layer
        mixup): feats = lam * feats + (1 - lam) * feats[perm]; lam is a scalar or (B,)."""
        feats = self.encode(wave)
        if mix is not None:
            perm, lam = mix
            lam = torch.as_tensor(lam, dtype=feats.dtype, device=feats.device).reshape(-1, 1, 1, 1)
            feats = lam * feats + (1 - lam) * feats[perm]
        return self.outputs(feats, self.frames(wave.shape[-1]))

    def outputs(self, feats: torch.Tensor, n_frames: int) -> dict:
        """Encoder feature map (B, C, F', T') -> the output dict, frame outputs upsampled to
        `n_frames` (the part after the front end and backbone, shared with the OpenVINO
        bf16 graph of common/onnx_runtime.py)."""
        out = self.head(feats if self.model_cfg["band_head"] else feats.mean(dim=2))
        frame_logit = F.interpolate(out["frame_logit"].transpose(1, 2), size=n_frames,
                                    mode="linear", align_corners=False).transpose(1, 2)
        out["frame_logit"] = frame_logit
        out["frame_prob"] = torch.sigmoid(frame_logit)
        return out


def build_model(model_cfg: dict, pretrained_path: str = "") -> SEDModel:
    return SEDModel(model_cfg, pretrained_path)


def save_checkpoint(path, model: SEDModel, extra: dict | None = None) -> Path:
    """Weights plus the model config (and any `extra` facts: fold, epoch, score)."""
    from common.runs import save_torch
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return save_torch(path, {"model_cfg": model.model_cfg, "state_dict": state,
                             **(extra or {})})


def to_device(model: nn.Module, device: str | torch.device) -> nn.Module:
    """The model on `device`; on a GPU with channels-last convolution weights (the layout
    cuDNN's tensor-core kernels use under bf16/fp16, so no transposes between layers)."""
    device = torch.device(device)
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if device.type == "cuda" else model


def load_checkpoint(path, device: str | torch.device = "cpu") -> tuple[SEDModel, dict]:
    """Rebuild the model from a checkpoint file; returns (model in eval mode, checkpoint)."""
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    model = build_model(ckpt["model_cfg"])
    model.load_state_dict(ckpt["state_dict"])
    return to_device(model, device).eval(), ckpt
