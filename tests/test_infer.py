"""common/infer.py: sliding windows and max-over-windows recording scores."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from common.infer import predict_recordings, predict_windows, resolve_device, window_starts
from tests.conftest import ArrayCache


# ----------------------------------------------------------------------------- windows
def test_window_starts_stride_and_flush_end():
    assert window_starts(100, 30, 20) == [0, 20, 40, 60, 70]
    assert window_starts(90, 30, 30) == [0, 30, 60]  # already flush: no duplicate
    assert window_starts(50, 30, 20) == [0, 20]


@pytest.mark.parametrize("n", [1, 10, 29, 30])
def test_short_recording_gets_one_window(n):
    assert window_starts(n, 30, 10) == [0]


@pytest.mark.parametrize("n,window,stride", [(480000, 160000, 80000), (123457, 16000, 7000),
                                             (1000, 999, 1), (61, 10, 10)])
def test_window_starts_cover_the_recording(n, window, stride):
    starts = window_starts(n, window, stride)
    assert starts[0] == 0
    assert starts[-1] + window == n  # the tail is scored
    assert all(0 <= s <= n - window for s in starts)
    assert all(b > a for a, b in zip(starts, starts[1:]))
    assert all(b - a <= stride for a, b in zip(starts, starts[1:]))
    covered = np.zeros(n, dtype=bool)
    for s in starts:
        covered[s:s + window] = True
    assert covered.all()


def test_sixty_seconds_in_six_ten_second_windows():
    sr = 48000
    assert window_starts(60 * sr, 10 * sr, 10 * sr) == [k * 10 * sr for k in range(6)]


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected


# ----------------------------------------------------------------------------- predictions
class MeanMaxModel(nn.Module):
    """clip_logit = [mean, -mean, max] of each input window: (B, N) -> (B, 3)."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, wave):
        self.calls.append(tuple(wave.shape))
        mean = wave.mean(dim=1)
        return {"clip_logit": torch.stack([mean, -mean, wave.amax(dim=1)], dim=1)}




def make_cache():
    return ArrayCache({
        "ramp": (np.arange(100, dtype=np.float32) / 100.0),          # windows 0,20,40,60,70
        "short": np.full(10, 0.6, dtype=np.float32),                  # one padded window
        "spike": np.where(np.arange(50) == 45, 5.0, -0.5).astype(np.float32),  # windows 0, 20
    })


def test_predict_recordings_is_max_over_windows():
    model = MeanMaxModel()
    scores = predict_recordings(model, make_cache(), ["ramp", "short", "spike"], window=30,
                                stride=20, batch_size=3)
    assert scores.shape == (3, 3)
    # ramp: the mean is largest in the last window (70..99) and smallest in the first (0..29)
    ramp_last = np.mean(np.arange(70, 100)) / 100.0
    ramp_first = np.mean(np.arange(0, 30)) / 100.0
    np.testing.assert_allclose(scores[0], [ramp_last, -ramp_first, 0.99], rtol=1e-6)
    # short: 10 samples of 0.6 zero-padded to 30
    np.testing.assert_allclose(scores[1], [0.2, -0.2, 0.6], rtol=1e-6)
    # spike: window 0 (0..29) is all -0.5; window 20 (20..49) holds the spike
    spike_mean = (29 * -0.5 + 5.0) / 30
    np.testing.assert_allclose(scores[2], [spike_mean, 0.5, 5.0], rtol=1e-6)
    # 5 + 1 + 2 = 8 windows in batches of at most 3, each window 30 samples long
    assert sum(shape[0] for shape in model.calls) == 8
    assert all(shape[0] <= 3 and shape[1] == 30 for shape in model.calls)


def test_predict_windows_per_recording_and_batch_size_invariance():
    cache = make_cache()
    ids = ["spike", "ramp", "short"]
    small = predict_windows(MeanMaxModel(), cache, ids, window=30, stride=20, batch_size=2)
    large = predict_windows(MeanMaxModel(), cache, ids, window=30, stride=20, batch_size=64)
    assert [w.shape for w in small] == [(2, 3), (5, 3), (1, 3)]
    for a, b in zip(small, large):
        np.testing.assert_allclose(a, b)
    ramp_means = [np.mean(np.arange(s, s + 30)) / 100.0 for s in (0, 20, 40, 60, 70)]
    np.testing.assert_allclose(small[1][:, 0], ramp_means, rtol=1e-6)


def test_predict_windows_from_float16_cache_model_sees_float32_and_many_batches_keep_order():
    """The loaders move the cache's float16 bytes and convert on the device: the model gets
    float32, and prefetched batches (more than are read ahead) arrive in order."""
    rng = np.random.default_rng(3)
    waves = {f"r{i}": rng.uniform(-1, 1, 400).astype(np.float16) for i in range(7)}
    as32 = ArrayCache({k: v.astype(np.float32) for k, v in waves.items()})
    model = MeanMaxModel()
    seen = []
    forward = model.forward
    model.forward = lambda wave: seen.append(wave.dtype) or forward(wave)
    ids = sorted(waves)
    half = predict_windows(model, ArrayCache(waves), ids, window=30, stride=7, batch_size=3)
    full = predict_windows(MeanMaxModel(), as32, ids, window=30, stride=7, batch_size=64)
    assert set(seen) == {torch.float32} and len(seen) > 3 * 6  # well past the read-ahead
    for a, b in zip(half, full):
        np.testing.assert_array_equal(a, b)


def test_predict_windows_explicit_starts():
    out = predict_windows(MeanMaxModel(), make_cache(), ["ramp"], window=10, stride=999,
                          starts=[[0, 50, 90]])
    expected = [np.mean(np.arange(s, s + 10)) / 100.0 for s in (0, 50, 90)]
    np.testing.assert_allclose(out[0][:, 0], expected, rtol=1e-6)


def test_predict_recordings_puts_model_in_eval_mode():
    model = MeanMaxModel().train()
    predict_recordings(model, make_cache(), ["short"], window=30, stride=30)
    assert not model.training


def test_stage_windows_validation_stride_and_final_stride():
    from types import SimpleNamespace

    from common.stage import windows
    cfg = SimpleNamespace(crop_seconds=5.0, val_stride_seconds=0.0, infer_stride_seconds=1.25)
    assert windows(cfg, 100) == (500, 500)             # per-epoch validation: the crop
    assert windows(cfg, 100, final=True) == (500, 125)  # best epoch's OOF and test scores
    cfg.val_stride_seconds = 2.5
    assert windows(cfg, 100) == (500, 250)
    cfg.infer_stride_seconds = 0.0                      # 0: the validation stride
    assert windows(cfg, 100, final=True) == (500, 250)
    assert windows(SimpleNamespace(crop_seconds=5.0, val_stride_seconds=0.0), 100, final=True) \
        == (500, 500)                                   # a CFG without the field (05, sweeps)
