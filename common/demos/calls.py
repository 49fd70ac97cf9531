"""Sound synthesis and mixing for the demo dataset (common/demos/rfcx.py).

Species templates (SPECIES) and call, decoy and noise-burst synthesis (the background,
rain and insect drones are in common/demos/noise.py, the mixing in common/demos/scene.py).
Every function takes a numpy Generator and returns float32 samples at `sr` Hz, so a caller
that owns one Generator per recording gets byte-identical audio on every run.

A species template is a dict of SPECIES. Its `shape` says how `a`, `b` (Hz) and `rate` (Hz)
are read:
    up, down    log sweep from a to b                    (hook: up to b, half way back)
    warble      slow sinusoidal FM, centre a +- b, FM rate
    trill_fm    repeated short up-chirps, a - b .. a + b, chirps per second (trill_fm_down)
    trill_am    tone from a to a + b, amplitude-pulsed at rate
    clicks      band-passed clicks in a..b at rate (5 % jitter)
    harmonic    f0 gliding a -> b with `harm` partials (ratios 1..harm, or `ratios`)
`decoy` is the rate multiplier of the species' unlisted look-alike (placed in the species'
band as a distractor or under an FP row); `st4` marks species with songtype 4. Look-alike
pairs by design (overlapping bands, same family, told apart by rate, span or length):
s5/s7 warbles, s16/s21 pulsed tones, s3/s11 up-sweeps, s9/s10 clicks, s14/s20 FM trills.
"""
from __future__ import annotations

import numpy as np

# f_lo, f_hi (Hz) and median_s: docs/recipe.md ("RFCx species table"); the rest is this demo's design
_S = [
    (5906, 8250, 0.79, "down", 7900, 6300, 0), (3844, 5625, 0.90, "up", 4000, 5400, 0),
    (469, 3000, 1.78, "harmonic", 720, 650, 0), (1031, 2813, 0.74, "up", 1200, 2600, 0),
    (2344, 4219, 1.86, "warble", 3300, 600, 4.0), (4781, 11250, 2.35, "warble", 7800, 1800, 2.5),
    (563, 4406, 2.14, "harmonic", 900, 1000, 0), (4688, 11438, 3.14, "warble", 8200, 2600, 4.5),
    (3750, 5531, 4.12, "trill_am", 4700, -400, 6.0), (844, 5719, 3.56, "clicks", 1500, 5200, 9.0),
    (947, 10853, 2.44, "clicks", 1500, 10000, 3.5), (1809, 5685, 1.14, "up", 2000, 5200, 0),
    (563, 3281, 3.14, "harmonic", 640, 700, 0), (94, 1406, 0.62, "down", 1200, 300, 0),
    (2531, 6469, 0.59, "trill_fm", 4500, 1200, 22.0), (94, 1125, 3.34, "harmonic", 200, 180, 0),
    (3094, 4594, 1.83, "trill_am", 3850, 250, 10.0), (1313, 7406, 6.45, "warble", 4300, 2200, 1.2),
    (3188, 5063, 0.69, "down", 5000, 3400, 0), (281, 2813, 1.55, "warble", 1500, 700, 6.0),
    (1313, 6094, 3.44, "trill_fm", 3700, 1800, 9.0), (3281, 4125, 1.09, "trill_am", 3700, -150, 24.0),
    (10688, 13688, 1.61, "trill_fm", 12200, 900, 30.0), (6460, 11628, 7.00, "clicks", 7000, 11000, 30.0),
]
_TP_ROWS = [50, 50, 37, 50, 50, 50, 50, 50, 50, 34, 50, 50, 50, 50, 50, 50, 50, 68, 50, 43, 40, 50, 44, 100]
# Decoy rate multipliers chosen so a decoy never lands on another species' rate in the same band.
_DECOY = {4: 2.2, 5: 0.4, 7: 2.0, 8: 0.5, 9: 2.5, 10: 0.4, 14: 0.5, 16: 0.35, 17: 3.0, 19: 0.45,
          20: 2.0, 21: 2.0, 22: 0.5, 23: 0.35}
_HARM = {2: 4, 6: 4, 12: 4, 15: 5}

SPECIES: list[dict] = [
    dict(species=i, f_lo=float(lo), f_hi=float(hi), median_s=med, shape=shape, a=float(a),
         b=float(b), rate=float(rate), harm=_HARM.get(i, 1), decoy=_DECOY.get(i, 1.0),
         st4=i in (16, 17, 23), real_tp_rows=_TP_ROWS[i])
    for i, (lo, hi, med, shape, a, b, rate) in enumerate(_S)]


def extent(tpl: dict) -> tuple[float, float]:
    """(low, high) Hz that a template's energy spans (before pitch scaling)."""
    a, b, shape = tpl["a"], tpl["b"], tpl["shape"]
    if shape in ("warble", "trill_fm", "trill_fm_down"):
        return a - b, a + b
    if shape == "trill_am":
        return min(a, a + b), max(a, a + b)
    if shape == "harmonic":
        return min(a, b), max(a, b) * max(tpl.get("ratios", range(1, tpl["harm"] + 1)))
    return min(a, b), max(a, b)  # sweeps, hook, clicks


def scaled(tpl: dict, factor: float) -> dict:
    """The template with every frequency multiplied by `factor` (a pitch shift)."""
    out = dict(tpl)
    out["a"], out["b"] = tpl["a"] * factor, tpl["b"] * factor
    return out


def fit_pitch(tpl: dict, f_lo: float, f_hi: float, rng, spread: float) -> dict:
    """Pitch-shift by a random factor in 1 +- spread, limited so the call stays in f_lo..f_hi."""
    lo, hi = extent(tpl)
    low, high = max(1 - spread, f_lo / lo), min(1 + spread, f_hi / hi)
    if low > high:  # spread too small to reach the band: take the nearest factor that fits
        low = high = min(max(1.0, f_lo / lo), f_hi / hi)
    return scaled(tpl, rng.uniform(low, high))


def songtype4(tpl: dict) -> dict:
    """Songtype 4 of species 16, 17, 23: the same voice, faster and on a narrower span."""
    out = dict(tpl, rate=tpl["rate"] * 1.5)
    if tpl["shape"] == "warble":
        out["b"] = tpl["b"] * 0.5
    return out


def decoy(tpl: dict) -> dict:
    """An unlisted look-alike of a species: same band and family, a different pattern."""
    shape = tpl["shape"]
    if shape in ("up", "down"):
        return dict(tpl, shape="hook")  # rises to the end pitch and falls half way back
    if shape == "harmonic":
        return dict(tpl, ratios=(1.0, 1.5, 2.5))  # inharmonic partials
    if shape == "trill_fm":
        return dict(tpl, shape="trill_fm_down", rate=tpl["rate"] * tpl["decoy"])
    return dict(tpl, rate=tpl["rate"] * tpl["decoy"])


def fade_window(n: int, fade: float = 0.2) -> np.ndarray:
    """Tukey-like envelope: raised-cosine fades over `fade` of the length at each end."""
    w = np.ones(n, dtype=np.float32)
    k = max(1, int(n * fade / 2))
    ramp = 0.5 - 0.5 * np.cos(np.arange(k, dtype=np.float32) * np.float32(np.pi / k))
    w[:k], w[n - k:] = ramp, ramp[::-1]
    return w


def fast_len(n: int) -> int:
    """Smallest 2^a 3^b 5^c >= n: FFT sizes that pocketfft handles fast (a prime is 20x slower)."""
    best, p5 = 2 * n, 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            p = p35
            while p < n:
                p *= 2
            best, p35 = min(best, p), p35 * 3
        p5 *= 5
    return best


def _band_gain(size: int, sr: int, f_lo: float, f_hi: float) -> np.ndarray:
    """Gain per rfft bin of `size`: 1 in f_lo..f_hi, raised-cosine skirts 5 % of the width."""
    f = np.arange(size // 2 + 1, dtype=np.float32) * np.float32(sr / size)
    skirt = np.float32(0.05 * (f_hi - f_lo) + 1.0)
    ramp = np.clip((f - np.float32(f_lo) + skirt) / skirt, 0, 1)
    ramp *= np.clip((np.float32(f_hi) + skirt - f) / skirt, 0, 1)
    return 0.5 - 0.5 * np.cos(np.float32(np.pi) * ramp)


def bandpass(x: np.ndarray, sr: int, f_lo: float, f_hi: float) -> np.ndarray:
    """Zero-phase FFT band-pass along the last axis, float32 (no scipy needed)."""
    n = x.shape[-1]
    size = fast_len(n)
    spec = np.fft.rfft(x.astype(np.float32, copy=False), size, axis=-1)
    spec *= _band_gain(size, sr, f_lo, f_hi)
    return np.fft.irfft(spec, size, axis=-1)[..., :n]


def band_noise(n: int, sr: int, f_lo: float, f_hi: float, rng) -> np.ndarray:
    """n samples of noise limited to f_lo..f_hi, made in the frequency domain (one FFT)."""
    size = fast_len(n)
    gain = _band_gain(size, sr, f_lo, f_hi)
    parts = rng.random((len(gain), 2), dtype=np.float32) - np.float32(0.5)
    parts *= gain[:, None]
    return np.fft.irfft(parts.view(np.complex64)[:, 0], size)[:n]


def _clicks(n: int, sr: int, f_lo: float, f_hi: float, rate: float, rng) -> np.ndarray:
    """Pulse train at `rate` Hz (5 % jitter); each pulse 0.5-1.3 ms decaying noise, band-passed
    on its own (a 16 ms kernel: cheaper than filtering the whole call)."""
    period = sr / rate
    klen = int(0.016 * sr)
    starts = np.arange(0.0, n, period) + rng.normal(0, 0.05 * period, int(np.ceil(n / period)))
    starts = np.clip(starts.astype(int) - klen // 4, 0, max(0, n - klen))  # the drop sits at klen/4
    decay = np.exp(-np.maximum(np.arange(klen) - klen // 4, 0) / (rng.uniform(0.0005, 0.0013) * sr))
    decay[: klen // 4] = 0.0
    kern = bandpass(rng.standard_normal((len(starts), klen), dtype=np.float32) * decay.astype(np.float32),
                    sr, f_lo, f_hi) * fade_window(klen, 0.5)
    out = np.zeros(max(n, klen), dtype=np.float32)
    kern *= rng.uniform(0.6, 1.0, (len(starts), 1)).astype(np.float32)
    np.add.at(out, starts[:, None] + np.arange(klen), kern)
    return out[:n]


def cycles(f: np.ndarray, sr: int) -> np.ndarray:
    """Phase in half-cycles wrapped to [0, 2 pi), float32: sin(k * result) for integer k is
    the k/2-th partial, continuous across wraps, at float32 speed (6x float64)."""
    turns = np.cumsum(f, dtype=np.float64) * (0.5 / sr)
    turns -= np.floor(turns)  # 3x faster than np.mod
    out = turns.astype(np.float32)
    out *= np.float32(2 * np.pi)
    return out


def synth_call(tpl: dict, dur: float, sr: int, rng) -> np.ndarray:
    """One call of `dur` s from a template (already pitch-fitted), float32, peak about 1."""
    n = max(16, int(round(dur * sr)))
    t = np.arange(n, dtype=np.float32) / np.float32(sr)
    u = t / np.float32(dur)  # 0..1 through the call
    a, b, rate, shape = tpl["a"], tpl["b"], tpl["rate"], tpl["shape"]
    env = fade_window(n, 0.25) * (1 + np.float32(rng.uniform(-0.3, 0.3)) * (u - 0.5))
    if shape == "clicks":
        x = _clicks(n, sr, a, b, rate, rng)
        return env * x / (np.abs(x).max() + 1e-12)
    if shape in ("up", "down"):
        f = a * np.exp(np.float32(np.log(b / a)) * u)  # log sweep
    elif shape == "hook":
        f = a + (b - a) * (1 - ((u - 0.6) / 0.6) ** 2)
    elif shape == "warble":
        f = a + b * np.sin(np.float32(2 * np.pi * rate) * t + np.float32(rng.uniform(0, 2 * np.pi)))
    elif shape in ("trill_fm", "trill_fm_down"):
        frac = np.mod(np.float32(rate) * t, 1.0)
        f = a + b * (2 * frac - 1) * (1 if shape == "trill_fm" else -1)
        env *= np.sin(np.float32(np.pi) * frac) ** 2  # one element per chirp, silent at the jump
    elif shape == "trill_am":
        f = a + b * u
        pulse = np.sin(np.float32(np.pi * rate) * t) ** 2
        env *= pulse * pulse  # sharp pulses at `rate` per second
    elif shape == "harmonic":
        f = (a + (b - a) * u) * (1 + 0.015 * np.sin(np.float32(2 * np.pi * 5) * t))  # glide + vibrato
    else:
        raise ValueError(f"unknown call shape {shape!r}")
    half = cycles(f, sr)
    if shape != "harmonic":
        return env * np.sin(2 * half)
    ratios = tpl.get("ratios", range(1, tpl["harm"] + 1))  # multiples of 0.5 (see cycles)
    x = sum(np.float32(0.7 ** i) * np.sin(np.float32(2 * r) * half) for i, r in enumerate(ratios))
    return env * x / np.abs(x).max()


def noise_burst(f_lo: float, f_hi: float, dur: float, sr: int, rng) -> np.ndarray:
    """Band-limited noise, half the time buzzing (AM at 25-80 Hz) like an insect, peak about 1."""
    n = max(16, int(round(dur * sr)))
    x = band_noise(n, sr, f_lo, f_hi, rng)
    if rng.random() < 0.5:
        omega = np.float32(2 * np.pi * rng.uniform(25, 80) / sr)  # rad per sample
        x *= 0.55 + 0.45 * np.sin(omega * np.arange(n, dtype=np.float32))
    return fade_window(n, 0.3) * x / (np.abs(x).max() + 1e-12)
