"""Whole-recording inference shared by validation, pseudo labelling and test prediction.

A recording of any length is cut into windows of the training crop length with a stride;
windows from many recordings are batched together; each recording's score is the max over
its windows of the clip logit.
"""
from __future__ import annotations

import time
from contextlib import contextmanager

import numpy as np
import torch


def window_starts(n_samples: int, window: int, stride: int) -> list[int]:
    """Window starts (samples) covering [0, n_samples): every `stride`, plus one flush with
    the end so the tail is scored; one zero-padded window for a recording shorter than one."""
    if n_samples <= window:
        return [0]
    starts = list(range(0, n_samples - window + 1, stride))
    if starts[-1] != n_samples - window:
        starts.append(n_samples - window)
    return starts


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def to_model_input(wave: torch.Tensor, device) -> torch.Tensor:
    """A host batch of waves (float16 from the cache, or float32) as float32 on `device`:
    the copy moves the stored bytes (non-blocking from pinned memory) and the conversion
    runs on the device."""
    return wave.to(device, non_blocking=True).float()


PREFETCH_THREADS = 4  # threads reading the next batches while the model runs (reads release the GIL)
PREFETCH_BATCHES = 6  # batches in flight: host memory bounded by this, not by recording length


def window_batches(cache, jobs: list, window: int, batch_size: int, device,
                   progress: bool | None = False):
    """Yield (jobs of the batch, float32 (B, window) waves on `device`) for `jobs` =
    [(i, recording_id, start)], in order. Threads read the next batches, each straight into
    one buffer (pinned on a GPU), while the caller runs the model on this one."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    from tqdm.auto import tqdm

    device = torch.device(device)
    pin = device.type == "cuda"

    def load(b: int) -> torch.Tensor:
        """One batch read straight into one (pinned) buffer in the cache's dtype."""
        chunk = jobs[b:b + batch_size]
        like = torch.from_numpy(np.empty(0, cache.dtype(chunk[0][1])))  # one run, one dtype
        waves = torch.empty((len(chunk), window), dtype=like.dtype, pin_memory=pin)
        for row, (_, rid, s) in zip(waves.numpy(), chunk):
            cache.read_into(rid, s, row)
        return waves

    starts = range(0, len(jobs), batch_size)
    bar = tqdm(total=len(starts), desc="infer", leave=False,
               disable=None if progress is None else not progress)  # None: bar on a tty only
    with ThreadPoolExecutor(PREFETCH_THREADS) as pool:
        ahead = deque(pool.submit(load, b) for b in starts[:PREFETCH_BATCHES])
        queued = len(ahead)
        for b in starts:
            waves = ahead.popleft().result()
            if queued < len(starts):
                ahead.append(pool.submit(load, starts[queued]))
                queued += 1
            yield jobs[b:b + batch_size], to_model_input(waves, device)
            bar.update()
    bar.close()


@torch.inference_mode()
def predict_windows(model, cache, recording_ids, window: int, stride: int, batch_size: int = 64,
                    device: str | torch.device = "cpu", progress: bool = False,
                    starts: list | None = None) -> list[np.ndarray]:
    """Clip logits of every window: a list with one (n_windows_i, K) array per recording.
    Windows start every `stride` samples, or at the given `starts[i]` of recording i.
    The logits stay on the device until the last batch (one host sync, not one per batch)."""
    model.eval()
    if starts is None:
        starts = [window_starts(cache.length(rid), window, stride) for rid in recording_ids]
    jobs = [(i, rid, s) for i, rid in enumerate(recording_ids) for s in starts[i]]
    if not jobs:
        return [np.zeros((0, 0), np.float32) for _ in recording_ids]
    out = [model(waves)["clip_logit"].float()
           for _, waves in window_batches(cache, jobs, window, batch_size, device, progress)]
    logits = torch.cat(out).cpu().numpy()
    return np.split(logits, np.cumsum([len(s) for s in starts])[:-1])


def predict_recordings(model, cache, recording_ids, window: int, stride: int,
                       batch_size: int = 64, device="cpu", progress: bool = False) -> np.ndarray:
    """(N, K) recording scores: the max over windows of the clip logit."""
    windows = predict_windows(model, cache, recording_ids, window, stride, batch_size,
                              device, progress)
    return np.stack([w.max(axis=0) for w in windows])


def frame_count(n_samples: int, hop: int) -> int:
    """Frames of a centred STFT over `n_samples`: frame j sits at j * hop samples."""
    return n_samples // hop + 1


def _on_hop_grid(track: np.ndarray, n: int) -> np.ndarray:
    """(T, K) window track -> (n, K) by linear interpolation (a resized mel image gives the
    model another frame count than the hop grid; the window's first and last frames match)."""
    if track.shape[0] == n:
        return track
    src = np.linspace(0.0, 1.0, track.shape[0])
    dst = np.linspace(0.0, 1.0, n)
    return np.stack([np.interp(dst, src, track[:, k]) for k in range(track.shape[1])], axis=1)


def resample_frames(track: np.ndarray, hop_s: float, n: int, grid_hop_s: float) -> np.ndarray:
    """(T, K) track with frame j at j * hop_s seconds -> float32 (n, K) with frame j at
    j * grid_hop_s (linear interpolation; held constant past the last frame)."""
    if track.shape[0] == n and abs(hop_s - grid_hop_s) < 1e-9:
        return track
    src, dst = np.arange(track.shape[0]) * hop_s, np.arange(n) * grid_hop_s
    return np.stack([np.interp(dst, src, track[:, k]) for k in range(track.shape[1])],
                    axis=1).astype(np.float32)


@torch.inference_mode()
def predict_frames(model, cache, recording_ids, window: int, stride: int, batch_size: int = 64,
                   device: str | torch.device = "cpu", progress: bool | None = False,
                   hop: int | None = None) -> tuple[np.ndarray, list[np.ndarray]]:
    """Clip scores and framewise tracks of whole recordings in one pass.

    Returns (scores (N, K): the max over windows of the clip logit, as `predict_recordings`;
    tracks: per recording a float32 (frame_count(n_samples, hop), K) array of frame_prob
    stitched over the whole recording, frame j at j * hop samples: the mean of the windows
    that cover a frame, each weighted by a Hann taper over its frames (overlap-add), so a
    window's edge frames, where its view is cut, count little and the track has no step
    where one window ends and the next takes over, as the max over windows had).
    `hop` defaults to the model's hop_length (model.model_cfg).
    """
    hop = hop or model.model_cfg["hop_length"]
    model.eval()
    if not len(recording_ids):
        return np.zeros((0, 0), np.float32), []
    lengths = [cache.length(rid) for rid in recording_ids]
    jobs = [(i, rid, s) for i, rid in enumerate(recording_ids)
            for s in window_starts(lengths[i], window, stride)]
    scores = [None] * len(recording_ids)
    tracks = [None] * len(recording_ids)
    counts = [None] * len(recording_ids)
    per_window = frame_count(window, hop)
    taper = (np.sin(np.pi * (np.arange(per_window) + 0.5) / per_window) ** 2)[:, None]
    taper = taper.astype(np.float32)
    for chunk, waves in window_batches(cache, jobs, window, batch_size, device, progress):
        out = model(waves)
        logits = out["clip_logit"].float().cpu().numpy()
        frames = out["frame_prob"].float().cpu().numpy()
        for (i, _, start), logit, frame in zip(chunk, logits, frames):
            scores[i] = logit if scores[i] is None else np.maximum(scores[i], logit)
            if tracks[i] is None:
                tracks[i] = np.zeros((frame_count(lengths[i], hop), frame.shape[1]), np.float32)
                counts[i] = np.zeros((tracks[i].shape[0], 1), np.float32)
            offset = int(round(start / hop))
            piece = _on_hop_grid(frame, per_window)[:max(tracks[i].shape[0] - offset, 0)]
            tracks[i][offset:offset + len(piece)] += piece * taper[:len(piece)]
            counts[i][offset:offset + len(piece)] += taper[:len(piece)]
    for track, count in zip(tracks, counts):
        track /= np.maximum(count, 1e-12)
    return np.stack(scores), tracks


class InferenceClock:
    """Wall and CPU seconds (this process, all threads) of test inference per hour of audio,
    counted per fold model that scored it, and the seconds spent loading (or exporting)
    fold models: what 05 prints and projects onto the test set's length."""

    def __init__(self, runtime: str = "torch"):
        self.runtime, self.threads = runtime, torch.get_num_threads()
        self.wall = self.cpu = self.load = self.model_hours = 0.0
        self.loaded = 0

    @contextmanager
    def loading(self):
        tic = time.perf_counter()
        yield
        self.load += time.perf_counter() - tic
        self.loaded += 1

    @contextmanager
    def scoring(self, audio_seconds: float):
        """Time one fold model scoring `audio_seconds` of audio."""
        wall, cpu = time.perf_counter(), time.process_time()
        yield
        self.wall += time.perf_counter() - wall
        self.cpu += time.process_time() - cpu
        self.model_hours += audio_seconds / 3600.0

    def figures(self, n_models: int, test_seconds: float, project_hours: float = 0.0) -> dict:
        """Seconds per hour of audio for all `n_models` fold models, and the projected wall
        time of a test set of `project_hours` (0: `test_seconds` of audio) with the model
        loading; {} when nothing was timed (every fold kept from a crashed run)."""
        if self.model_hours <= 0:
            return {}
        hours = project_hours or test_seconds / 3600.0
        wall_per_hour = n_models * self.wall / self.model_hours
        load = n_models * self.load / max(self.loaded, 1)
        return {"runtime": self.runtime, "threads": self.threads, "fold_models": n_models,
                "cpu_s_per_audio_hour": round(n_models * self.cpu / self.model_hours, 2),
                "wall_s_per_audio_hour": round(wall_per_hour, 2),
                "load_s": round(load, 2), "test_audio_hours": round(hours, 4),
                "projected_s": round(wall_per_hour * hours + load, 1)}


def speed_line(fig: dict) -> str:
    """One printed line of InferenceClock.figures."""
    if not fig:
        return "test inference: every fold's scores were kept from the crashed run, none timed"
    return (f"test inference ({fig['runtime']}, {fig['threads']} threads, {fig['fold_models']} "
            f"fold models): {fig['cpu_s_per_audio_hour']:.1f} CPU s "
            f"({fig['wall_s_per_audio_hour']:.1f} s wall) per hour of audio; test set of "
            f"{fig['test_audio_hours']:.3g} h: "
            f"{fig['projected_s']:.0f} s projected ({fig['load_s']:.0f} s of it loading models)")
