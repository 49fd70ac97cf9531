"""What the ensemble (05) shows of a dataset with no test recordings (BirdCLEF 2021 layout,
an RFCx folder whose test/ is empty or missing): held-out recordings instead of test ones.

- frame tracks of OOF recordings, each scored only by the fold model that validated it
  (a model never draws a recording it trained on), blended over runs by the run weights;
- the blend's segment F1 (BirdCLEF 2021 rule, as stage 1 reports it: at 0.5 and at the best
  threshold of a sweep) from the runs' own segment predictions: `local` from oof_segments.csv
  (the validation clips' 5 s segments), `soundscape` from soundscape_pred.csv (the labelled
  soundscapes, mean over each run's fold models).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from common import blend, runs, segments
from common.infer import frame_count, predict_frames, resample_frames
from common.sed import load_checkpoint

SEGMENT_FILES = {"local": "oof_segments.csv", "soundscape": "soundscape_pred.csv"}
KEY = ["recording_id", "t_min", "t_max"]


def no_test_reason(prep) -> str:
    """Why the preprocessing run `prep` has no test recordings, for the one-line message."""
    if prep.clips:
        layout = json.loads((prep.run_dir / "classes.json").read_text()).get("layout")
        if layout == "birdclef2023":
            return (f"preprocessing run {prep.run_dir.name} (clip labels, BirdCLEF 2023-2025 "
                    "layout) holds no test recordings: test_soundscapes/ was empty or missing")
        return (f"preprocessing run {prep.run_dir.name} (clip labels, BirdCLEF 2021 layout) holds "
                "no test recordings: its labelled soundscapes score soundscape F1 and are never "
                "submitted")
    source = Path(runs.read_manifest(prep.run_dir)["inputs"].get("input_dir", "input_dir"))
    return (f"preprocessing run {prep.run_dir.name} holds no test recordings "
            f"({source / 'test'} was empty or missing)")


def pick_recordings(infos: list, n: int) -> list:
    """Up to `n` recordings in every run's OOF table, in sorted order."""
    common = set.intersection(*(set(i["oof"].index) for i in infos))
    return sorted(common)[:max(n, 0)]


def heldout_tracks(infos: list, prep, preps: dict, ids: list, run_weights, grid_hop: int,
                   device, stride_s: float = 0.0) -> dict:
    """{recording_id: (frames, K) float32}: per run, the frame track of the fold model that
    validated the recording, on the first run's frame grid (hop `grid_hop` samples), summed
    with the run weights (which sum to 1); windows every `stride_s` (0: one window long)."""
    fold_of = dict(zip(prep.folds["recording_id"], prep.folds["fold"]))
    hop_s = grid_hop / prep.sample_rate
    n = {rid: frame_count(prep.cache.length(rid), grid_hop) for rid in ids}
    tracks = {rid: np.zeros((n[rid], len(prep.classes)), np.float32) for rid in ids}
    for info, w in zip(infos, run_weights):
        run_prep, mcfg = preps[info["preprocess"]], info["mcfg"]
        window = int(round(mcfg["crop_seconds"] * run_prep.sample_rate))
        stride = int(round(stride_s * run_prep.sample_rate)) or window
        for fold in sorted({int(fold_of[rid]) for rid in ids}):
            mine = [rid for rid in ids if int(fold_of[rid]) == fold]
            model, _ = load_checkpoint(info["dir"] / f"fold{fold}.pth", device)
            _, frames = predict_frames(model, run_prep.cache, mine, window, stride, device=device)
            for rid, track in zip(mine, frames):
                own_hop_s = mcfg["hop_length"] / run_prep.sample_rate
                tracks[rid] += float(w) * resample_frames(track, own_hop_s, n[rid], hop_s)
    return tracks


def blended_segment_f1(infos: list, weights, prep, name: str) -> dict:
    """F1 figures ({name}_f1, _f1_best, _threshold, _micro_f1) of the weighted mean of the
    runs' segment probabilities (`name`: local | soundscape) on the segments every run
    scored; {} when a run has no such file or they share no segment."""
    paths = [i["dir"] / SEGMENT_FILES[name] for i in infos]
    if not all(p.is_file() for p in paths):
        return {}
    frames = [pd.read_csv(p, dtype={"recording_id": str}).set_index(KEY) for p in paths]
    common = frames[0].index
    for frame in frames[1:]:
        common = common.intersection(frame.index)
    if not len(common):
        return {}
    seg = segments.SegmentSet(common.to_frame(index=False), prep.annotations, prep.classes,
                              prep.sample_rate, infos[0]["mcfg"]["crop_seconds"])
    order = pd.MultiIndex.from_frame(seg.table[KEY])
    probs = blend.weighted_mean([f.loc[order, prep.classes].to_numpy(np.float64) for f in frames],
                                weights)
    return segments.f1_scores(name, seg.truth, probs)
