"""common/audio.py: decoding, resampling, errors and the float16 waveform cache."""
from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from common.audio import AudioError, WaveCache, cache_path, load_audio, probe, save_cached


def tone(freq, sr, seconds, amp=0.5):
    t = np.arange(int(round(sr * seconds))) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_hz(wave, sr):
    spec = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return np.fft.rfftfreq(len(wave), 1.0 / sr)[np.argmax(spec)]


# ----------------------------------------------------------------------------- decoding
def test_flac_48k_resampled_to_32k_keeps_length_and_tone(tmp_path):
    path = tmp_path / "tone.flac"
    sf.write(path, tone(1000.0, 48000, 1.5), 48000, subtype="PCM_16")
    wave, info = load_audio(path, 32000)
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert abs(len(wave) - 48000) <= 1  # 1.5 s at 32 kHz
    assert info["sample_rate"] == 48000 and info["channels"] == 1
    assert info["duration"] == pytest.approx(1.5)
    assert info["warnings"] == []
    assert abs(peak_hz(wave, 32000) - 1000.0) <= 32000 / len(wave) + 1e-6
    assert np.max(np.abs(wave)) == pytest.approx(0.5, abs=0.02)  # amplitude kept


def test_same_rate_is_not_resampled(tmp_path):
    path = tmp_path / "x.flac"
    data = tone(440.0, 16000, 1.0)
    sf.write(path, data, 16000, subtype="PCM_24")
    wave, info = load_audio(path, 16000)
    assert len(wave) == 16000
    np.testing.assert_allclose(wave, data, atol=1e-5)


def test_stereo_is_downmixed_with_a_warning(tmp_path):
    path = tmp_path / "st.flac"
    left = np.full(8000, 0.5, dtype=np.float32)
    right = np.full(8000, -0.25, dtype=np.float32)
    sf.write(path, np.stack([left, right], axis=1), 16000, subtype="PCM_16")
    wave, info = load_audio(path, 16000)
    assert info["channels"] == 2
    assert len(info["warnings"]) == 1 and "downmix" in info["warnings"][0]
    np.testing.assert_allclose(wave, 0.125, atol=1e-4)


def test_non_finite_samples_are_zeroed_with_a_warning(tmp_path):
    path = tmp_path / "nan.wav"
    data = np.full(1000, 0.25, dtype=np.float32)
    data[[10, 20, 30]] = [np.nan, np.inf, -np.inf]
    sf.write(path, data, 16000, subtype="FLOAT")
    wave, info = load_audio(path, 16000)
    assert np.isfinite(wave).all()
    assert wave[10] == 0 and wave[20] == 0 and wave[30] == 0 and wave[11] == 0.25
    assert any("3 non-finite" in w for w in info["warnings"])


def test_empty_file_raises_audio_error(tmp_path):
    path = tmp_path / "empty.flac"
    path.write_bytes(b"")
    with pytest.raises(AudioError, match="empty"):
        load_audio(path, 32000)


def test_non_audio_bytes_raise_audio_error(tmp_path):
    path = tmp_path / "fake.flac"
    path.write_bytes(b"this is not a flac file at all" * 20)
    with pytest.raises(AudioError, match="cannot decode") as info:
        load_audio(path, 32000)
    assert len(str(info.value)) > len("cannot decode: ")  # carries the decoder's reason
    with pytest.raises(AudioError, match="header"):
        probe(path)


def test_missing_file_raises_audio_error(tmp_path):
    with pytest.raises(AudioError, match="does not exist"):
        load_audio(tmp_path / "missing.flac", 32000)


def test_probe_reads_header(tmp_path):
    path = tmp_path / "p.flac"
    sf.write(path, np.zeros((24000, 2), dtype=np.float32), 48000)
    assert probe(path) == {"sample_rate": 48000, "channels": 2, "frames": 24000,
                           "duration": pytest.approx(0.5)}


# ----------------------------------------------------------------------------- cache
def test_save_cached_round_trip_float16(tmp_path):
    rng = np.random.default_rng(0)
    wave = rng.uniform(-0.9, 0.9, 5000).astype(np.float32)
    path = save_cached(tmp_path / "waves", "rec1", wave)
    assert path == cache_path(tmp_path / "waves", "rec1")
    assert np.load(path).dtype == np.float16
    assert sorted(p.name for p in path.parent.iterdir()) == ["rec1.npy"]  # no temp file
    cache = WaveCache(tmp_path / "waves")
    assert cache.length("rec1") == 5000
    back = cache.get("rec1")
    assert back.dtype == np.float32
    np.testing.assert_allclose(back, wave, atol=1e-3, rtol=0)


def test_save_cached_clips_to_unit_range(tmp_path):
    save_cached(tmp_path, "r", np.array([2.0, -3.0, 0.5], dtype=np.float32))
    np.testing.assert_allclose(WaveCache(tmp_path).get("r"), [1.0, -1.0, 0.5])


def test_crop_inside_past_end_and_beyond(tmp_path):
    wave = (np.arange(100, dtype=np.float32) - 50) / 100.0
    save_cached(tmp_path, "r", wave)
    cache = WaveCache(tmp_path)
    stored = cache.get("r")
    inside = cache.crop("r", 10, 20)
    assert inside.shape == (20,) and inside.dtype == np.float32
    np.testing.assert_array_equal(inside, stored[10:30])
    tail = cache.crop("r", 90, 30)
    assert tail.shape == (30,)
    np.testing.assert_array_equal(tail[:10], stored[90:])
    assert np.all(tail[10:] == 0)
    beyond = cache.crop("r", 500, 16)
    assert beyond.shape == (16,) and np.all(beyond == 0)
    longer = cache.crop("r", 0, 250)
    assert longer.shape == (250,)
    np.testing.assert_array_equal(longer[:100], stored)
    assert np.all(longer[100:] == 0)
    negative = cache.crop("r", -5, 20)
    assert negative.shape == (20,)


def test_crop_does_not_alias_the_cache(tmp_path):
    save_cached(tmp_path, "r", np.full(50, 0.25, dtype=np.float32))
    cache = WaveCache(tmp_path)
    piece = cache.crop("r", 0, 10)
    piece[:] = 7.0
    assert np.all(cache.crop("r", 0, 10) == 0.25)


def test_missing_cache_entry_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.npy"):
        WaveCache(tmp_path).crop("nope", 0, 10)


# ----------------------------------------------------------------------------- streamed cache
def test_cache_audio_streams_blocks_to_the_same_samples_as_whole_file_decoding(tmp_path):
    from common.audio import cache_audio
    rng = np.random.default_rng(1)
    stereo = rng.uniform(-0.5, 0.5, (48000 * 3 + 17, 2)).astype(np.float32)
    path = tmp_path / "long.flac"
    sf.write(path, stereo, 48000, subtype="PCM_24")
    whole, whole_info = load_audio(path, 32000)
    # 0.25 s blocks: 13 blocks, the resampler state carried across every boundary
    info = cache_audio(path, tmp_path / "waves", "long", 32000, block_seconds=0.25)
    stored = np.load(cache_path(tmp_path / "waves", "long"))
    assert stored.dtype == np.float16 and stored.shape == (info["n_samples"],)
    assert info["n_samples"] == len(whole)
    np.testing.assert_allclose(stored.astype(np.float32), whole, atol=1e-3, rtol=0)
    assert info["channels"] == 2 and info["warnings"] == whole_info["warnings"]
    assert info["duration"] == pytest.approx(len(stereo) / 48000)
    assert sorted(p.name for p in (tmp_path / "waves").iterdir()) == ["long.npy"]  # no temp file
    cache = WaveCache(tmp_path / "waves")
    assert cache.length("long") == len(whole)
    np.testing.assert_array_equal(cache.crop("long", 1000, 500), stored[1000:1500].astype(np.float32))
    # the loaders' form: the stored float16 bytes, zero-padded the same way
    raw = cache.crop("long", len(whole) - 100, 500, stored=True)
    assert raw.dtype == np.float16 and raw.shape == (500,)
    np.testing.assert_array_equal(raw[:100], stored[-100:])
    assert np.all(raw[100:] == 0)


def test_cache_audio_failure_leaves_no_file(tmp_path):
    from common.audio import cache_audio
    path = tmp_path / "bad.flac"
    path.write_bytes(b"not audio" * 50)
    with pytest.raises(AudioError, match="cannot decode"):
        cache_audio(path, tmp_path / "waves", "bad", 32000)
    assert list((tmp_path / "waves").iterdir()) == []
