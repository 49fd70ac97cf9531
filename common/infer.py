"""Whole-recording inference shared by validation, pseudo labelling and test prediction.

A recording of any length is cut into windows of the training crop length with a stride;
windows from many recordings are batched together; each recording's score is the max over
its windows of the clip logit.
"""
from __future__ import annotations

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


@torch.inference_mode()
def predict_windows(model, cache, recording_ids, window: int, stride: int, batch_size: int = 64,
                    device: str | torch.device = "cpu", progress: bool = False,
                    starts: list | None = None) -> list[np.ndarray]:
    """Clip logits of every window: a list with one (n_windows_i, K) array per recording.
    Windows start every `stride` samples, or at the given `starts[i]` of recording i."""
    from tqdm.auto import tqdm

    device = torch.device(device)
    model.eval()
    if starts is None:
        starts = [window_starts(cache.length(rid), window, stride) for rid in recording_ids]
    jobs = [(i, rid, s) for i, rid in enumerate(recording_ids) for s in starts[i]]
    per_rec: list[list] = [[] for _ in recording_ids]
    bar = tqdm(range(0, len(jobs), batch_size), desc="infer", leave=False, disable=not progress)
    for b in bar:
        chunk = jobs[b:b + batch_size]
        waves = np.stack([cache.crop(rid, s, window) for _, rid, s in chunk])
        logits = model(torch.from_numpy(waves).to(device))["clip_logit"].float().cpu().numpy()
        for (i, _, _), row in zip(chunk, logits):
            per_rec[i].append(row)
    return [np.stack(rows) for rows in per_rec]


def predict_recordings(model, cache, recording_ids, window: int, stride: int,
                       batch_size: int = 64, device="cpu", progress: bool = False) -> np.ndarray:
    """(N, K) recording scores: the max over windows of the clip logit."""
    windows = predict_windows(model, cache, recording_ids, window, stride, batch_size,
                              device, progress)
    return np.stack([w.max(axis=0) for w in windows])
