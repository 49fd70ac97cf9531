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


BLOCK_SECONDS = 30.0  # decode block: bounds a worker's memory whatever the recording length
HEADER_BYTES = 128     # .npy header of a float16 vector in the cache


def _open(path: Path) -> sf.SoundFile:
    if not path.is_file():
        raise AudioError("file does not exist")
    if path.stat().st_size == 0:
        raise AudioError("empty file (0 bytes)")
    try:
        return sf.SoundFile(str(path))
    except Exception as err:  # soundfile raises several types for unreadable input
        raise AudioError(f"cannot decode: {err}") from None


def stream_audio(path: str | os.PathLike, target_sr: int, info: dict,
                 block_seconds: float = BLOCK_SECONDS):
    """Yield mono float32 blocks of `path` at `target_sr`, decoding `block_seconds` at a time.

    Memory is bounded by the block, not by the recording. The streamed resampler gives the
    same samples as resampling the whole file at once. `info` is filled with the source
    sample rate, channels, duration (s) and warnings (downmixed, non-finite samples zeroed)
    once the stream ends. Raises AudioError with the reason when the file cannot be used.
    """
    with _open(Path(path)) as handle:
        sr, channels = int(handle.samplerate), int(handle.channels)
        resampler = None if sr == target_sr else \
            soxr.ResampleStream(sr, target_sr, 1, dtype="float32", quality="HQ")
        block = max(int(block_seconds * sr), 1)
        # one decode buffer reused for every block: a fresh multi-MB array per block costs
        # page faults that were ~10 % of the preprocessing time
        buffer = np.empty((block, channels), dtype=np.float32)
        frames, bad, peak = 0, 0, 0.0
        while True:
            try:
                data = handle.read(block, dtype="float32", always_2d=True, out=buffer)
            except Exception as err:
                raise AudioError(f"cannot decode at {frames / sr:.1f} s: {err}") from None
            last = data.shape[0] < block
            wave = data.mean(axis=1, dtype=np.float32) if channels > 1 else data[:, 0]
            frames += data.shape[0]
            # two reductions, no temporary: NaN or inf anywhere makes the peak non-finite
            block_peak = max(float(wave.max(initial=0.0)), -float(wave.min(initial=0.0)))
            if not np.isfinite(block_peak):
                nonfinite = ~np.isfinite(wave)
                bad += int(nonfinite.sum())
                wave = np.where(nonfinite, np.float32(0.0), wave)
                block_peak = float(np.abs(wave).max(initial=0.0))
            peak = max(peak, block_peak)
            if resampler is not None:
                wave = resampler.resample_chunk(wave, last=last)
            if len(wave):
                # a copy: the decode buffer is overwritten by the next block
                yield wave.copy() if resampler is None and channels == 1 else wave
            if last:
                break
    if frames == 0:
        raise AudioError("no audio samples")
    warnings = [f"downmixed {channels} channels to mono"] if channels > 1 else []
    if bad:
        warnings.append(f"{bad} non-finite samples set to 0")
    if peak == 0.0:
        warnings.append("every sample is 0 (a silent recording; kept, it scores as silence)")
    info.update(sample_rate=sr, channels=channels, duration=frames / float(sr), warnings=warnings)


def load_audio(path: str | os.PathLike, target_sr: int) -> tuple[np.ndarray, dict]:
    """Decode `path` to mono float32 at `target_sr`: (wave of shape (n_samples,), info)
    with the facts of `stream_audio`. Raises AudioError with the reason."""
    info: dict = {}
    blocks = list(stream_audio(path, target_sr, info))
    wave = np.concatenate(blocks) if blocks else np.zeros(0, np.float32)
    return wave, info


def cache_audio(path: str | os.PathLike, cache_dir, recording_id: str, target_sr: int,
                block_seconds: float = BLOCK_SECONDS) -> dict:
    """Decode `path` straight into its float16 cache file, block by block (memory bounded by
    `block_seconds`), atomically (temporary name, then rename). Returns the facts of
    `stream_audio` plus n_samples. Raises AudioError with the reason."""
    out = cache_path(cache_dir, recording_id)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.npy")
    info: dict = {}
    try:
        with open(tmp, "wb") as handle:
            _write_header(handle, 0)
            written = 0
            for block in stream_audio(path, target_sr, info, block_seconds):
                handle.write(to_float16(block))
                written += len(block)
            handle.seek(0)
            _write_header(handle, written)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return {**info, "n_samples": written}


def to_float16(block: np.ndarray) -> np.ndarray:
    """Clip to [-1, 1] (in place) and convert to little-endian float16. torch's vectorised
    conversion is ~5x numpy's astype (2.7 ms vs 0.5 ms per 30 s at 32 kHz), which was 8 %
    of the preprocessing time. Workers forked by 01_preprocess run torch single-threaded."""
    import torch
    np.clip(block, -1.0, 1.0, out=block)
    return torch.from_numpy(block).half().numpy().astype("<f2", copy=False)


def _write_header(handle, n_samples: int) -> None:
    """The .npy header of a float16 vector; 128 bytes for any length below 10^40 samples, so
    it is written first as a placeholder and rewritten in place once the length is known."""
    start = handle.tell()
    np.lib.format.write_array_header_1_0(
        handle, {"descr": "<f2", "fortran_order": False, "shape": (n_samples,)})
    if handle.tell() - start != HEADER_BYTES:
        raise RuntimeError(f"unexpected .npy header size {handle.tell() - start}")


def cache_path(cache_dir, recording_id: str) -> Path:
    return Path(cache_dir) / f"{recording_id}.npy"


def save_cached(cache_dir, recording_id: str, wave: np.ndarray) -> Path:
    """Write the float16 cache file atomically (temporary name, then rename)."""
    path = cache_path(cache_dir, recording_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.npy")
    np.save(tmp, to_float16(np.array(wave, dtype=np.float32)))  # a copy: clipped in place
    os.replace(tmp, path)
    return path


class WaveCache:
    """Read-only access to the cached waveforms of one preprocessing run.

    `get(rid)` returns the whole float32 wave; `crop(rid, start, length)` a zero-padded
    window (samples), so a crop near the end of a short recording keeps its length.
    A crop reads only its own bytes (positioned read, no memory map), so scoring a
    recording of any length keeps memory bounded by the batch; the OS page cache keeps
    repeated reads cheap. Headers are parsed once per recording.
    """

    def __init__(self, cache_dir):
        self.cache_dir = Path(cache_dir)
        self._meta: dict[str, tuple] = {}

    def _entry(self, rid: str) -> tuple:
        """(path, data offset in bytes, n_samples, dtype) of one cached recording."""
        meta = self._meta.get(rid)
        if meta is None:
            path = cache_path(self.cache_dir, rid)
            if not path.exists():
                raise FileNotFoundError(f"{path} is missing from the waveform cache; "
                                        "run 01_preprocess.py again")
            with open(path, "rb") as handle:
                fmt = np.lib.format
                read_header = fmt.read_array_header_1_0 if fmt.read_magic(handle) == (1, 0) \
                    else fmt.read_array_header_2_0
                shape, _, dtype = read_header(handle)
                if len(shape) != 1:
                    raise ValueError(f"{path}: expected a 1-D waveform, found shape {shape}; "
                                     "run 01_preprocess.py again")
                meta = (path, handle.tell(), int(shape[0]), dtype)
            self._meta[rid] = meta
        return meta

    def length(self, rid: str) -> int:
        return self._entry(rid)[2]

    def get(self, rid: str) -> np.ndarray:
        return self.crop(rid, 0, self.length(rid))

    def dtype(self, rid: str) -> np.dtype:
        """The stored sample type (float16 for the kit's caches)."""
        return self._entry(rid)[3]

    def read_into(self, rid: str, start: int, out: np.ndarray) -> np.ndarray:
        """Fill `out` (1-D, the stored dtype) with samples [start, start + len(out)),
        zero-padded past the end: one positioned read straight into `out`, no temporary
        (the inference loader reads a whole batch into one pinned buffer this way)."""
        path, offset, n, dtype = self._entry(rid)
        if out.dtype != dtype:
            raise TypeError(f"read_into needs a {dtype} buffer for {path}, got {out.dtype}")
        start = max(0, int(start))
        count = max(0, min(len(out), n - start))
        if count:
            with open(path, "rb") as handle:
                handle.seek(offset + start * dtype.itemsize)
                got = handle.readinto(memoryview(out[:count]).cast("B"))
            if got != count * dtype.itemsize:
                raise OSError(f"{path}: short read ({got} of {count * dtype.itemsize} bytes); "
                              "the cache file changed or is truncated: run 01_preprocess.py again")
        out[count:] = 0
        return out

    def crop(self, rid: str, start: int, length: int, stored: bool = False) -> np.ndarray:
        """float32 samples [start, start + length); `stored=True` keeps the cache's own
        dtype (float16 for the kit's caches): the training and inference loaders move half
        the bytes and convert on the model's device (common.infer.to_model_input)."""
        raw = self.read_into(rid, start, np.empty(length, dtype=self.dtype(rid)))
        return raw if stored else raw.astype(np.float32)
