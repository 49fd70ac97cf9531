"""Background sound of the demo recordings: a colored-noise floor (white/pink/brown mix with
a table of its power per band, so calls can be set at an in-band SNR), rain bursts and
insect drones. Same contract as common.demos.calls: a numpy Generator in, float32 out."""
from __future__ import annotations

import functools

import numpy as np

from common.demos.calls import cycles, fade_window, fast_len

GRID_HZ = 5.0  # frequency step of the noise power table that band_power reads


@functools.lru_cache(maxsize=2)
def _noise_bank(n: int, sr: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """White, pink and brown noise of 4 n samples each at unit mean square (3, 4 n), and the
    share of each one's power below j * GRID_HZ Hz (3, steps + 1).

    Made once per process from `seed`; each recording mixes random windows of them, which
    costs a few ms instead of an FFT of the whole recording (the slowest step otherwise).
    """
    size = fast_len(4 * n)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 99]))
    f = np.maximum(np.arange(size // 2 + 1, dtype=np.float32) * np.float32(sr / size / 1000.0),
                   np.float32(0.02))  # kHz, floored at 20 Hz
    starts = (np.arange(0.0, sr / 2, GRID_HZ) * (size / sr)).astype(int)
    waves, cums = np.empty((3, 4 * n), np.float32), []
    for i, exponent in enumerate((0.0, 0.5, 1.0)):
        amp = f ** np.float32(-exponent)
        amp[0] = 0.0  # no DC
        # centred uniform real and imaginary parts: the waveform is Gaussian anyway
        parts = rng.random((len(f), 2), dtype=np.float32) - np.float32(0.5)
        parts *= amp[:, None]
        waves[i] = np.fft.irfft(parts.view(np.complex64)[:, 0], size)[: 4 * n]
        waves[i] /= np.sqrt(np.mean(waves[i] ** 2, dtype=np.float64))
        cum = np.concatenate([[0.0], np.cumsum(np.add.reduceat(amp.astype(np.float64) ** 2, starts))])
        cums.append(cum / cum[-1])
    return waves, np.stack(cums)


def release_noise_bank() -> None:
    """Free the noise bank (~70 MB for 30 s at 48 kHz) once a dataset is written."""
    _noise_bank.cache_clear()


def colored_noise(n: int, sr: int, rng, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(noise of n samples, mean square ~1, float32; share of its power below j * GRID_HZ Hz).

    A random white/pink/brown mix (Dirichlet weights), each part a random window of the
    process's noise bank, sign-flipped at random. band_power(cum, f_lo, f_hi) is then the
    expected mean square of the noise band-passed to f_lo..f_hi.
    """
    bank, cums = _noise_bank(n, sr, seed)
    w = rng.dirichlet([1.0, 1.0, 1.0])
    wave = np.zeros(n, np.float32)
    for i, offset in enumerate(rng.integers(0, 3 * n + 1, 3)):
        wave += bank[i, offset:offset + n] * np.float32(np.sqrt(w[i]) * rng.choice([-1.0, 1.0]))
    return wave, w @ cums


def band_power(cum: np.ndarray, f_lo: float, f_hi: float) -> float:
    """Mean square of colored_noise within f_lo..f_hi Hz (taken at least 200 Hz wide)."""
    mid, half = (f_lo + f_hi) / 2, max(f_hi - f_lo, 200.0) / 2
    j0, j1 = (int(np.clip(round(v / GRID_HZ), 0, len(cum) - 1)) for v in (mid - half, mid + half))
    return max(float(cum[j1] - cum[j0]), 1e-12)


def rain(dur: float, sr: int, rng) -> np.ndarray:
    """A rain burst: Poisson drops (100-400 /s), each 1-4 ms of decaying, differentiated (so
    bright, little below 1 kHz) noise, float32, peak about 1."""
    n = int(round(dur * sr))
    count = rng.poisson(rng.uniform(100, 400) * dur)
    klen = int(0.006 * sr)
    starts = rng.integers(0, max(1, n - klen), count)
    decay = np.exp(-np.arange(klen + 1) / (rng.uniform(0.001, 0.004) * sr / 3)).astype(np.float32)
    kern = np.diff(rng.standard_normal((count, klen + 1), dtype=np.float32) * decay, axis=1)
    out = np.zeros(n, dtype=np.float32)
    kern *= rng.lognormal(0, 0.7, (count, 1)).astype(np.float32)
    np.add.at(out, starts[:, None] + np.arange(klen), kern)
    return fade_window(n, 0.3) * out / (np.abs(out).max() + 1e-12)


def drone(dur: float, sr: int, fc: float, rng) -> np.ndarray:
    """An insect drone: steady tone at fc (+- 0.5 % wander), AM at 15-60 Hz, float32, peak ~1."""
    n = int(round(dur * sr))
    t = np.arange(n, dtype=np.float32) / np.float32(sr)
    wander, phase0 = np.float32(2 * np.pi * rng.uniform(0.05, 0.3)), np.float32(rng.uniform(0, 6.3))
    f = fc * (1 + 0.005 * np.sin(wander * t + phase0))
    depth, am_rate = np.float32(rng.uniform(0.3, 0.9)), np.float32(2 * np.pi * rng.uniform(15, 60))
    am = 1 - depth * (0.5 + 0.5 * np.sin(am_rate * t))
    return fade_window(n, 0.1) * am * np.sin(2 * cycles(f, sr))
