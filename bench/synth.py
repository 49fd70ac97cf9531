"""Synthetic 48 kHz FLAC recordings for the benchmark: colored noise plus tones and sweeps.

Written block by block, so a 60-minute file needs no more memory than a 10-second one.
Content matters little for throughput, but FLAC compresses noise poorly and pure tones well;
a mix keeps the decode cost near that of real field recordings.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

SOURCE_SR = 48000
BLOCK_S = 10


def colored_noise(n: int, exponent: float, seed: int) -> np.ndarray:
    """Noise with power ~ 1/f^exponent (0 white, 1 pink, 2 brown), unit peak."""
    spec = np.fft.rfft(np.random.default_rng(seed).standard_normal(n))
    freqs = np.fft.rfftfreq(n)
    freqs[0] = freqs[1]
    x = np.fft.irfft(spec / freqs ** (exponent / 2), n)
    return (x / (np.abs(x).max() + 1e-9)).astype(np.float32)


# three 10 s noise beds, rolled and scaled per block (an FFT per block would dominate the
# time to write a 60-minute file)
BEDS = [colored_noise(BLOCK_S * SOURCE_SR, e, i) for i, e in enumerate((0.0, 1.0, 2.0))]


def synth_block(rng, n: int, t0: float) -> np.ndarray:
    bed = BEDS[rng.integers(len(BEDS))]
    x = 0.2 * np.roll(bed, rng.integers(len(bed)))[:n]
    t = np.arange(n, dtype=np.float32) / SOURCE_SR
    for _ in range(3):  # tones and slow sweeps of birds and frogs, 0.3 to 12 kHz
        f0, rate = rng.uniform(300, 12000), rng.uniform(-200, 200)
        x += 0.1 * np.sin(2 * np.pi * (f0 * t + 0.5 * rate * t * t)).astype(np.float32)
    return x


def write_recording(path: Path, seconds: float, seed: int) -> Path:
    """One mono 16-bit 48 kHz FLAC of `seconds`, written atomically in 10-second blocks."""
    rng = np.random.default_rng(seed)
    tmp = path.with_name(f".{path.stem}.tmp.flac")
    total = int(round(seconds * SOURCE_SR))
    with sf.SoundFile(tmp, "w", SOURCE_SR, 1, subtype="PCM_16", format="FLAC",
                      compression_level=0.5) as out:
        for start in range(0, total, BLOCK_S * SOURCE_SR):
            n = min(BLOCK_S * SOURCE_SR, total - start)
            out.write(synth_block(rng, n, start / SOURCE_SR))
    tmp.replace(path)
    return path


def ensure_files(folder: Path, prefix: str, count: int, seconds: float, seed: int) -> list[Path]:
    """`count` recordings of `seconds` under folder (kept between runs: written only if missing)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"{prefix}{i:04d}.flac"
        if not path.exists():
            write_recording(path, seconds, seed * 100003 + i)
        paths.append(path)
    return paths
