"""The mel front end as an nn.Module, so it runs batched on the model's device."""
from __future__ import annotations

import librosa
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def n_frames(n_samples: int, hop_length: int) -> int:
    """Frames of a centred STFT over `n_samples` samples."""
    return n_samples // hop_length + 1


class MelFrontEnd(nn.Module):
    """Waveform (B, N) -> normalised log-mel image (B, in_chans, n_mels, frames).

    Power mel spectrogram (`power`=2) -> dB -> per-image standardisation (each example to
    mean 0, std 1, as the recipe's per-image normalisation), repeated to `in_chans`
    channels, optionally resized to `image_size` = (mels, frames) like the recipe's 224x400.
    `freq_coord` appends one channel holding the mel-bin index scaled to 0..1 (the 2nd-place
    RFCx trick): a CNN then knows where in frequency a pattern sits, which matters because
    each species calls in its own band. Output channels: in_chans + freq_coord.
    """

    def __init__(self, sample_rate: int, n_fft: int, hop_length: int, n_mels: int,
                 fmin: float, fmax: float, power: float = 2.0, in_chans: int = 1,
                 image_size: tuple[int, int] | None = None, top_db: float = 80.0,
                 freq_coord: bool = False, spec_masks: int = 0, mask_fraction: float = 0.1):
        super().__init__()
        self.freq_coord = freq_coord
        self.spec_masks, self.mask_fraction = spec_masks, mask_fraction
        if fmax > sample_rate / 2:
            raise ValueError(f"fmax={fmax} Hz is above the Nyquist frequency "
                             f"{sample_rate / 2} Hz of sample_rate={sample_rate}")
        if n_mels > n_fft // 2 + 1:
            raise ValueError(f"n_mels={n_mels} exceeds the {n_fft // 2 + 1} STFT bins of "
                             f"n_fft={n_fft}; lower n_mels or raise n_fft")
        self.n_fft, self.hop_length, self.power = n_fft, hop_length, power
        self.in_chans, self.top_db = in_chans, top_db
        self.image_size = tuple(image_size) if image_size else None
        mel = librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)
        self.register_buffer("mel_basis", torch.from_numpy(mel.astype(np.float32)), persistent=False)
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)

    def spectrogram(self, wave: torch.Tensor) -> torch.Tensor:
        """(B, N) -> dB mel (B, n_mels, frames), float32 whatever the autocast state."""
        with torch.autocast(device_type=wave.device.type, enabled=False):
            power = self.power_spectrum(wave.float())
            mel = torch.matmul(self.mel_basis, power)
            db = 10.0 * torch.log10(mel.clamp_min(1e-10))
            # clip the floor per example: silence should not dominate the normalisation
            return torch.maximum(db, db.amax(dim=(1, 2), keepdim=True) - self.top_db)

    def power_spectrum(self, wave: torch.Tensor) -> torch.Tensor:
        """(B, N) float32 -> |STFT|^power (B, n_fft // 2 + 1, frames)."""
        args = (wave, self.n_fft, self.hop_length)
        kwargs = {"window": self.window, "center": True, "pad_mode": "reflect"}
        if not torch.onnx.is_in_onnx_export():
            return torch.stft(*args, **kwargs, return_complex=True).abs().pow(self.power)
        # ONNX has no complex tensors: its STFT op gives (real, imaginary) pairs, which
        # torch.stft still returns for the exporter with return_complex=False
        # (common/onnx_runtime.py checks the exported outputs against this module's)
        squared = torch.stft(*args, **kwargs, return_complex=False).pow(2).sum(-1)
        return squared if self.power == 2 else squared.pow(self.power / 2)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        x = self.spectrogram(wave)
        mean = x.mean(dim=(1, 2), keepdim=True)
        std = x.std(dim=(1, 2), keepdim=True)
        x = ((x - mean) / (std + 1e-5)).unsqueeze(1)
        if self.training and self.spec_masks:
            x = spec_augment(x, self.spec_masks, self.mask_fraction)
        if self.image_size:
            x = F.interpolate(x, size=self.image_size, mode="bilinear", align_corners=False)
        x = x.expand(-1, self.in_chans, -1, -1) if self.in_chans > 1 else x
        if self.freq_coord:
            coord = torch.linspace(0.0, 1.0, x.shape[2], device=x.device, dtype=x.dtype)
            x = torch.cat([x, coord.view(1, 1, -1, 1).expand(x.shape[0], 1, -1, x.shape[3])], 1)
        return x


def spec_augment(x: torch.Tensor, n_masks: int, fraction: float) -> torch.Tensor:
    """SpecAugment-style masking of a batch (B, 1, F, T): per example, `n_masks` time bands
    and `n_masks` frequency bands, each up to `fraction` of the axis, set to 0 (the mean of
    the standardised image). Drawn with torch's RNG on the tensor's device."""
    b, _, f, t = x.shape
    keep = torch.ones(b, 1, f, t, device=x.device, dtype=x.dtype)
    for axis, size in ((2, f), (3, t)):
        width = (torch.rand(b, n_masks, device=x.device) * fraction * size).long()
        start = (torch.rand(b, n_masks, device=x.device) * (size - width)).long()
        pos = torch.arange(size, device=x.device).view(1, 1, -1)
        hit = ((pos >= start.unsqueeze(-1)) & (pos < (start + width).unsqueeze(-1))).any(1)
        shape = (b, 1, size, 1) if axis == 2 else (b, 1, 1, size)
        keep = keep * (~hit).to(x.dtype).view(shape)
    return x * keep
