"""Decode, resample and cache waveforms.

The cache holds one float16 `.npy` per recording at the training sample rate (float16 keeps
~3 significant digits, plenty for audio in [-1, 1], at half the size of float32); training and
inference memory-map it instead of decoding FLAC again.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

AUDIO_EXTENSIONS = (".flac", ".wav", ".ogg", ".mp3")


class AudioError(Exception):
    """A file that cannot be used; the message is the reason written to report.json."""


def probe(path: str | os.PathLike) -> dict:
    """Header facts without decoding: sample rate, channels, frames, duration (s)."""
    try:
        info = sf.info(str(path))
    except Exception as err:  # soundfile raises several types for unreadable input
        raise AudioError(f"cannot read header: {err}") from None
    return {"sample_rate": int(info.samplerate), "channels": int(info.channels),
            "frames": int(info.frames), "duration": float(info.duration)}


def load_audio(path: str | os.PathLike, target_sr: int) -> tuple[np.ndarray, dict]:
    """Decode `path` to mono float32 at `target_sr`.

    Returns (wave of shape (n_samples,), info) where info has the source sample rate,
    channels, duration (s) and a list of warnings (downmixed, non-finite samples zeroed).
    Raises AudioError with the reason when the file cannot be used.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioError("file does not exist")
    if path.stat().st_size == 0:
        raise AudioError("empty file (0 bytes)")
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as err:
        raise AudioError(f"cannot decode: {err}") from None
    if data.shape[0] == 0:
        raise AudioError("no audio samples")
    warnings = []
    channels = data.shape[1]
    wave = data.mean(axis=1) if channels > 1 else data[:, 0]
    if channels > 1:
        warnings.append(f"downmixed {channels} channels to mono")
    bad = ~np.isfinite(wave)
    if bad.any():
        warnings.append(f"{int(bad.sum())} non-finite samples set to 0")
        wave = np.where(bad, 0.0, wave).astype(np.float32)
    if sr != target_sr:
        wave = soxr.resample(wave, sr, target_sr, quality="HQ").astype(np.float32)
    info = {"sample_rate": int(sr), "channels": int(channels),
            "duration": data.shape[0] / float(sr), "warnings": warnings}
    return np.ascontiguousarray(wave, dtype=np.float32), info


def cache_path(cache_dir, recording_id: str) -> Path:
    return Path(cache_dir) / f"{recording_id}.npy"


def save_cached(cache_dir, recording_id: str, wave: np.ndarray) -> Path:
    """Write the float16 cache file atomically (temporary name, then rename)."""
    path = cache_path(cache_dir, recording_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.npy")
    np.save(tmp, np.clip(wave, -1.0, 1.0).astype(np.float16))
    os.replace(tmp, path)
    return path


class WaveCache:
    """Read-only access to the cached waveforms of one preprocessing run.

    `get(rid)` returns the whole float32 wave; `crop(rid, start, length)` a zero-padded
    window (samples), so a crop near the end of a short recording keeps its length.
    Arrays are memory-mapped and kept open, so repeated crops cost no decoding.
    """

    def __init__(self, cache_dir):
        self.cache_dir = Path(cache_dir)
        self._maps: dict[str, np.ndarray] = {}

    def _map(self, rid: str) -> np.ndarray:
        arr = self._maps.get(rid)
        if arr is None:
            path = cache_path(self.cache_dir, rid)
            if not path.exists():
                raise FileNotFoundError(f"{path} is missing from the waveform cache; "
                                        "run 01_preprocess.py again")
            arr = np.load(path, mmap_mode="r")
            self._maps[rid] = arr
        return arr

    def length(self, rid: str) -> int:
        return int(self._map(rid).shape[0])

    def get(self, rid: str) -> np.ndarray:
        return np.asarray(self._map(rid), dtype=np.float32)

    def crop(self, rid: str, start: int, length: int) -> np.ndarray:
        arr = self._map(rid)
        start = max(0, int(start))
        out = np.zeros(length, dtype=np.float32)
        piece = arr[start:start + length]
        out[:piece.shape[0]] = piece
        return out
