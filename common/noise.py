"""Colored-noise augmentation on the waveform, on the model's device (before the mel front end).

White, pink and brown noise have power spectra proportional to 1/f^0, 1/f^1 and 1/f^2:
flat, -3 dB per octave and -6 dB per octave. Each colour is added with its own probability
at a signal-to-noise ratio drawn uniformly from [snr_min, snr_max] dB per example (the
seed's "pink, brown, white noise at a random SNR").
"""
from __future__ import annotations

import torch
from torch import nn

EXPONENTS = {"white": 0.0, "pink": 1.0, "brown": 2.0}  # power ~ 1 / f^exponent


def colored_noise(batch: int, n: int, exponent: float, device=None,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """(batch, n) float32 noise with power spectrum ~ 1/f^exponent and mean square 1 per row.

    White Gaussian noise shaped in the frequency domain: amplitude * f^(-exponent / 2),
    DC removed (a brown process would otherwise wander off by its lowest bins).
    """
    white = torch.randn(batch, n, device=device, generator=generator)
    if exponent == 0:
        return white / white.pow(2).mean(dim=1, keepdim=True).sqrt().clamp_min(1e-12)
    freqs = torch.arange(n // 2 + 1, device=white.device, dtype=torch.float32)
    scale = freqs.clamp_min(1.0).pow(-exponent / 2)
    scale[0] = 0.0
    noise = torch.fft.irfft(torch.fft.rfft(white) * scale, n=n)
    return noise / noise.pow(2).mean(dim=1, keepdim=True).sqrt().clamp_min(1e-12)


def add_noise(wave: torch.Tensor, noise: torch.Tensor, snr_db: torch.Tensor) -> torch.Tensor:
    """wave (B, N) + noise (B, N) scaled so that mean(wave^2) / mean(noise^2) = snr_db (B,)."""
    power = wave.float().pow(2).mean(dim=1, keepdim=True)
    gain = (power / 10 ** (snr_db.view(-1, 1) / 10) / noise.pow(2).mean(dim=1, keepdim=True)
            .clamp_min(1e-12)).sqrt()
    return wave + (noise * gain).to(wave.dtype)


class ColoredNoise(nn.Module):
    """Adds white / pink / brown noise to a batch (B, N) in training mode; identity in eval.

    probs: {'white': p, 'pink': p, 'brown': p}, each colour drawn independently per example;
    snr_db: (low, high) dB range of the per-example SNR (signal power over noise power).
    """

    def __init__(self, probs: dict, snr_db: tuple[float, float] = (5.0, 30.0)):
        super().__init__()
        unknown = set(probs) - set(EXPONENTS)
        if unknown:
            raise ValueError(f"noise colours {sorted(unknown)} unknown; use {list(EXPONENTS)}")
        if not snr_db[0] <= snr_db[1]:
            raise ValueError(f"noise SNR range {snr_db}: low must not exceed high")
        self.probs = {k: float(v) for k, v in probs.items() if v > 0}
        self.snr_db = (float(snr_db[0]), float(snr_db[1]))

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        if not self.training or not self.probs:
            return wave
        b, n = wave.shape
        lo, hi = self.snr_db
        for colour, p in self.probs.items():
            hit = torch.rand(b, 1, device=wave.device) < p
            snr = lo + (hi - lo) * torch.rand(b, device=wave.device)
            noise = colored_noise(b, n, EXPONENTS[colour], wave.device)
            wave = torch.where(hit, add_noise(wave, noise, snr), wave)
        return wave


def input_mixup(wave: torch.Tensor, targets: torch.Tensor, alpha: float,
                frames: torch.Tensor | None = None) -> tuple:
    """Mix each waveform (B, N) with a permuted one of the batch, lam ~ Beta(alpha, alpha) per
    batch; the mix carries both clips' labels (their union: a call stays audible at any lam,
    and the union suits LSEP's hard ranking as well as BCE). Frame targets (B, T, K) in
    {-1, 0, 1}, when given, are united too: +1 where either is +1, -1 only where both are -1
    (a frame absent in one clip and unknown in the other is unknown in the mix)."""
    lam = torch.distributions.Beta(alpha, alpha).sample().to(wave.device)
    perm = torch.randperm(len(wave), device=wave.device)
    mixed = (lam * wave + (1 - lam) * wave[perm], torch.maximum(targets, targets[perm]))
    if frames is None:
        return mixed
    a, b = frames, frames[perm]
    united = torch.where((a > 0) | (b > 0), 1, torch.where((a < 0) & (b < 0), -1, 0))
    return (*mixed, united.to(frames.dtype))
