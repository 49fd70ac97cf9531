"""common/noise.py: spectral slope of pink and brown noise, the requested SNR, switches."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.signal import welch

from common.noise import ColoredNoise, add_noise, colored_noise

SR = 32000


def slope_db_per_octave(x: np.ndarray) -> float:
    """Least-squares slope of 10 log10(PSD) against log2(f) over 50 Hz .. 8 kHz."""
    f, psd = welch(x, fs=SR, nperseg=8192, axis=-1)
    psd = psd.mean(axis=0)
    keep = (f >= 50) & (f <= 8000)
    return float(np.polyfit(np.log2(f[keep]), 10 * np.log10(psd[keep]), 1)[0])


@pytest.mark.parametrize("colour,exponent,expected", [("white", 0.0, 0.0), ("pink", 1.0, -3.01),
                                                      ("brown", 2.0, -6.02)])
def test_spectral_slope(colour, exponent, expected):
    gen = torch.Generator().manual_seed(0)
    noise = colored_noise(8, 4 * SR, exponent, generator=gen).numpy()
    assert np.allclose((noise ** 2).mean(axis=1), 1.0, atol=1e-4)
    assert slope_db_per_octave(noise) == pytest.approx(expected, abs=0.3), colour


@pytest.mark.parametrize("snr", [-5.0, 0.0, 10.0, 25.0])
def test_add_noise_hits_requested_snr(snr):
    torch.manual_seed(1)
    t = torch.arange(SR) / SR
    wave = torch.stack([0.3 * torch.sin(2 * np.pi * 1000 * t), 0.01 * torch.randn(SR)])
    noise = colored_noise(2, SR, 1.0)
    out = add_noise(wave, noise, torch.full((2,), snr))
    added = out - wave
    measured = 10 * torch.log10(wave.pow(2).mean(1) / added.pow(2).mean(1))
    assert torch.allclose(measured, torch.full((2,), snr), atol=0.5)


def test_module_draws_snr_in_range_and_respects_switches():
    torch.manual_seed(2)
    wave = 0.1 * torch.randn(64, 8000)
    aug = ColoredNoise({"brown": 1.0}, snr_db=(10.0, 20.0)).train()
    added = aug(wave) - wave
    snr = 10 * torch.log10(wave.pow(2).mean(1) / added.pow(2).mean(1))
    assert snr.min() >= 10 - 0.5 and snr.max() <= 20 + 0.5 and snr.std() > 1.0
    assert torch.equal(aug.eval()(wave), wave)               # identity at inference
    off = ColoredNoise({"white": 0.0, "pink": 0.0}).train()
    assert torch.equal(off(wave), wave)
    half = ColoredNoise({"pink": 0.5}).train()
    changed = (half(wave) != wave).any(dim=1).float().mean()
    assert 0.25 < changed < 0.75


def test_unknown_colour_is_rejected():
    with pytest.raises(ValueError, match="unknown"):
        ColoredNoise({"blue": 0.5})
