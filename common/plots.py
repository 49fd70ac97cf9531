"""PNG pictures of the ensemble stage (matplotlib, Agg backend, written atomically).

- a recording: its mel spectrogram with the framewise scores of its top species below,
  on the same time axis, and the true species in the title where known;
- bar charts: per-species AP, blend weights.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from common.features import MelFrontEnd  # noqa: E402


def save_figure(fig, path) -> Path:
    """Save to a temporary name beside `path`, then rename (a crash leaves no half PNG)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
    return path


def mel_db(wave: np.ndarray, mcfg: dict) -> np.ndarray:
    """(n_samples,) -> dB mel spectrogram (n_mels, frames) with a model's front-end settings;
    frame j sits at j * hop_length samples, like the model's framewise track."""
    front = MelFrontEnd(mcfg["sample_rate"], mcfg["n_fft"], mcfg["hop_length"], mcfg["n_mels"],
                        mcfg["fmin"], mcfg["fmax"])
    with torch.no_grad():
        return front.spectrogram(torch.from_numpy(np.asarray(wave, np.float32))[None])[0].numpy()


def recording_picture(path, spec: np.ndarray, track: np.ndarray, hop_seconds: float,
                      classes: list, fmin: float, fmax: float, top_k: int = 3,
                      truth: list | None = None, threshold: float | None = None,
                      title: str = "") -> Path:
    """Spectrogram (n_mels, F) above the framewise scores (T, K) of the `top_k` species with
    the highest peak; `truth` (species names) is listed in the title where known."""
    duration = max(spec.shape[1], track.shape[0]) * hop_seconds
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 5.5), sharex=True,
                                      gridspec_kw={"height_ratios": [3, 2]})
    top.imshow(spec, origin="lower", aspect="auto", cmap="magma",
               extent=(0, spec.shape[1] * hop_seconds, 0, spec.shape[0]))
    ticks = np.linspace(0, spec.shape[0], 5)
    top.set_yticks(ticks, [f"{f / 1000:.1f}" for f in _mel_ticks(fmin, fmax, len(ticks))])
    top.set_ylabel("kHz (mel scale)")
    truth_text = ", ".join(truth) if truth else "unknown"
    top.set_title(f"{title}  |  truth: {truth_text}" if title else f"truth: {truth_text}",
                  fontsize=10)
    times = np.arange(track.shape[0]) * hop_seconds
    for k in np.argsort(-track.max(axis=0))[:top_k]:
        mark = " (true)" if truth and classes[k] in truth else ""
        bottom.plot(times, track[:, k], lw=1.2, label=f"{classes[k]}{mark}  peak {track[:, k].max():.2f}")
    if threshold is not None:
        bottom.axhline(threshold, color="grey", ls="--", lw=0.8, label=f"threshold {threshold}")
    bottom.set(ylim=(0, 1.02), xlim=(0, duration), xlabel="time (s)", ylabel="frame score")
    bottom.grid(alpha=0.3)
    bottom.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    return save_figure(fig, path)


def _mel_ticks(fmin: float, fmax: float, n: int) -> np.ndarray:
    """Frequencies (Hz) at n evenly spaced positions of a mel axis from fmin to fmax."""
    import librosa
    return librosa.mel_to_hz(np.linspace(librosa.hz_to_mel(fmin), librosa.hz_to_mel(fmax), n))


def bar_chart(path, labels: list, values, title: str, ylabel: str,
              ylim: tuple | None = None, note: str = "") -> Path:
    """One bar per label (NaN values are drawn as 'n/a')."""
    values = np.asarray(values, dtype=np.float64)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.38 * len(labels) + 2), 3.6))
    shown = np.nan_to_num(values, nan=0.0)
    bars = ax.bar(range(len(labels)), shown, color="tab:blue")
    for bar, value in zip(bars, values):
        text = "n/a" if np.isnan(value) else f"{value:.2f}"
        ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height(), text, ha="center",
                va="bottom", fontsize=7)
    ax.set_xticks(range(len(labels)), labels, rotation=45 if len(labels) > 6 else 0,
                  ha="right" if len(labels) > 6 else "center", fontsize=8)
    ax.set(title=title, ylabel=ylabel)
    if ylim:
        ax.set_ylim(*ylim)
    if note:
        ax.text(0.01, 0.98, note, transform=ax.transAxes, va="top", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)
