"""Pseudo labels: fold models vote on overlapping windows of every train and test recording.

Each recording is cut into `windows_per_minute` overlapping windows per 60 s (8 by default,
as the recipe), each as long as the models' training crop. A (window, species) is a pseudo
positive where at least `min_votes` of the fold models give p >= `threshold`. A model never
votes on a recording it trained on (its run's trained_on.csv), so a train recording is voted
on by the one fold model that held it out (FP-only recordings too: each has a fold whose
models skip it; they hold most of RFCx's unannotated calls); the votes needed scale with the
models allowed: ceil(min_votes * allowed / n_folds). Where every fold model votes (the test
recordings), `consensus_threshold` may replace `threshold`: several held-out models agreeing
are stronger evidence than one (demo, against every call placed: 3 of 3 models at 0.65 were right on 96 %
of their test windows, one model at 0.85 on 86 % of its train windows, at 0.65-0.7 on about
half). Pseudo negatives (every allowed model below `neg_threshold`) are optional and off by
default (the recipe found they hurt).

Reads  the fold checkpoints of a stage-1/2/3 run (--source=stage2 --source_tag=latest).
Writes WORK_DIR/pseudo/<tag>/: pseudo_labels.csv (recording_id, window, t_start, t_end,
       class, score, votes, n_models, label), summary.json, manifest.json; pseudo.* figures
       in WORK_DIR/summary.json.

Examples:
    python 03_pseudo_label.py --cfg_file=profiles/demo.json
    python 03_pseudo_label.py --source=stage1 --min_votes=2 --threshold=0.6
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from common import metrics, paths, runs
from common.cli import ConfigError, cfg_dict, run
from common.data import overlap_hit
from common.infer import predict_windows, resolve_device
from common.sed import load_checkpoint
from common.stage import open_run


@dataclass
class CFG:
    input_dir: str = field(default_factory=paths.default_input_dir)  # for test_truth.csv (demo)
    work_dir: str = field(default_factory=paths.default_work_dir)
    source: str = "stage2"         # stage whose fold models vote: stage1 | stage2 | stage3
    source_tag: str = "latest"
    tag: str = ""
    windows_per_minute: int = 8    # overlapping windows per 60 s of recording
    threshold: float = 0.5         # a vote: p >= threshold
    consensus_threshold: float = 0.0  # the vote threshold where all n_folds models vote (test
                                   # recordings); 0 = `threshold`
    min_votes: int = 3             # votes needed when all n_folds models may vote
    pseudo_negatives: bool = False
    neg_threshold: float = 0.05    # pseudo negative: every allowed model below this
    min_overlap: float = 0.5       # s, to match a pseudo window with a TP/FP box (summary)
    infer_batch: int = 64
    device: str = "auto"


def window_plan(duration: float, window_s: float, per_minute: int) -> np.ndarray:
    """Window starts (s): round(per_minute * duration / 60) windows, evenly spaced."""
    n = max(1, int(round(per_minute * duration / 60.0)))
    return np.linspace(0.0, max(duration - window_s, 0.0), n)


def eligible_folds(rid: str, folds: list, seen: dict) -> list:
    """Folds whose model never trained on recording `rid`."""
    return [f for f in folds if rid not in seen[f]]


def vote(probs: np.ndarray, threshold: float, min_votes: int, n_folds: int,
         consensus_threshold: float = 0.0) -> tuple:
    """probs (M, W, K) of M allowed models -> (positive (W, K) bool, votes (W, K)). With all
    n_folds models allowed, a vote is p >= consensus_threshold when that is set."""
    if consensus_threshold > 0 and probs.shape[0] == n_folds:
        threshold = consensus_threshold
    votes = (probs >= threshold).sum(axis=0)
    needed = math.ceil(min_votes * probs.shape[0] / n_folds)
    return votes >= needed, votes


def predict_all(cfg, src_dir, folds, prep, plan, seen, window, device) -> dict:
    """{recording_id: (M, W, K) probabilities of the allowed fold models}."""
    out = {rid: [] for rid in plan}
    for fold in folds:
        ids = [rid for rid in plan if rid not in seen[fold]]
        model, _ = load_checkpoint(src_dir / f"fold{fold}.pth", device)
        starts = [[int(round(s * prep.sample_rate)) for s in plan[rid]] for rid in ids]
        logits = predict_windows(model, prep.cache, ids, window, window, cfg.infer_batch,
                                 device, progress=None, starts=starts)
        for rid, lg in zip(ids, logits):
            out[rid].append(metrics.sigmoid(lg))
    return {rid: np.stack(p) for rid, p in out.items() if p}


def build_table(cfg, prep, plan, probs, window_s, n_folds) -> pd.DataFrame:
    rows = []
    for rid, p in probs.items():
        pos, votes = vote(p, cfg.threshold, cfg.min_votes, n_folds, cfg.consensus_threshold)
        neg = (p < cfg.neg_threshold).all(axis=0) if cfg.pseudo_negatives else np.zeros_like(pos)
        score = p.mean(axis=0)
        for w, k in zip(*np.nonzero(pos | neg)):
            start = float(plan[rid][w])
            rows.append((rid, int(w), round(start, 3), round(start + window_s, 3),
                         prep.classes[k], float(score[w, k]), int(votes[w, k]), p.shape[0],
                         1 if pos[w, k] else -1))
    return pd.DataFrame(rows, columns=["recording_id", "window", "t_start", "t_end", "class",
                                       "score", "votes", "n_models", "label"])


def match_events(events: pd.DataFrame, windows: pd.DataFrame, min_overlap: float) -> tuple:
    """Events (recording_id, class, t_min, t_max) against windows (recording_id, class,
    t_start, t_end) of the same recording and class, matched by overlap_hit: (events inside
    some window, windows holding some event), boolean arrays in the rows' order."""
    events, windows = events.reset_index(drop=True), windows.reset_index(drop=True)
    event_hit, window_hit = np.zeros(len(events), bool), np.zeros(len(windows), bool)
    by_key = windows.groupby(["recording_id", "class"]).indices
    t0, t1 = events["t_min"].to_numpy(float)[:, None], events["t_max"].to_numpy(float)[:, None]
    start, end = windows["t_start"].to_numpy(float), windows["t_end"].to_numpy(float)
    for key, e in events.groupby(["recording_id", "class"]).indices.items():
        w = by_key.get(key)
        if w is not None:
            hit = overlap_hit(t0[e], t1[e], start[w], end[w], min_overlap)  # (events, windows)
            event_hit[e] |= hit.any(axis=1)
            window_hit[w] |= hit.any(axis=0)
    return event_hit, window_hit


def agreement(table: pd.DataFrame, ann: pd.DataFrame, label: int, min_overlap: float, ids) -> float:
    """Fraction of annotation rows with `label` (on recordings that got votes) covered by a
    pseudo positive of the same class: recall against TP, false-positive rate against FP."""
    rows = ann[(ann["label"] == label) & ann["recording_id"].isin(ids)]
    covered, _ = match_events(rows, table[table["label"] > 0], min_overlap)
    return float(covered.mean()) if len(rows) else 0.0


def precision_vs_events(table: pd.DataFrame, input_dir, n_folds: int,
                        min_overlap: float = 0.5) -> dict | None:
    """Demo only (INPUT_DIR/demo_events.csv lists every call placed): the share of pseudo
    positives with a call of their species in the window, for windows voted on by every fold
    model (`all_models`, the test recordings) and by fewer (`fewer_models`)."""
    path = Path(input_dir) / "demo_events.csv"
    if not path.is_file():
        return None
    events = pd.read_csv(path, dtype={"recording_id": str})
    calls = events[events["kind"] == "call"]
    calls = calls.assign(**{"class": "s" + calls["species_id"].astype(str)})
    pos = table[table["label"] > 0]
    _, right = match_events(calls, pos, min_overlap)
    full = (pos["n_models"] == n_folds).to_numpy()
    return {name: {"windows": int(mask.sum()),
                   "precision": float(right[mask].mean()) if mask.any() else None}
            for name, mask in (("all_models", full), ("fewer_models", ~full))}


def positives_on(pos: pd.DataFrame, prep) -> dict:
    """Pseudo-positive windows on test recordings, train recordings with TP rows and the
    other train recordings (FP-only: calls nobody annotated, each held out by one fold)."""
    has_tp = set(prep.folds.loc[prep.folds["has_tp"].astype(bool), "recording_id"])
    rid = pos["recording_id"]
    test = rid.isin(set(prep.ids("test")))
    tp = rid.isin(has_tp)
    return {"test": int(test.sum()), "train_tp": int(tp.sum()), "train_fp_only": int((~test & ~tp).sum())}


def summarise(cfg, prep, table, probs, plan, n_folds: int) -> dict:
    pos = table[table["label"] > 0]
    voted = set(probs)
    out = {"positives": int(len(pos)), "negatives": int((table["label"] < 0).sum()),
           "recordings_voted": len(voted), "recordings_without_model": len(set(plan) - voted),
           "recall_vs_tp": agreement(table, prep.annotations, 1, cfg.min_overlap, voted),
           "fp_rate_vs_fp": agreement(table, prep.annotations, -1, cfg.min_overlap, voted),
           "positives_per_class": {c: int((pos["class"] == c).sum()) for c in prep.classes},
           "positives_on": positives_on(pos, prep)}
    found = prep.test_truth(cfg.input_dir)
    if found is not None:  # demo: recording-level quality of the test pseudo positives
        ids, truth = found
        pred = np.zeros_like(truth)
        index = {c: i for i, c in enumerate(prep.classes)}
        row = {rid: i for i, rid in enumerate(ids)}
        for rid, cls in zip(pos["recording_id"], pos["class"]):
            if rid in row:
                pred[row[rid], index[cls]] = 1
        out["test_recording_f1"] = metrics.f1_at(truth, pred, 0.5)
    checked = precision_vs_events(table, cfg.input_dir, n_folds, cfg.min_overlap)
    if checked is not None:
        out["precision_vs_events"] = checked
    return out


def main(cfg: CFG) -> dict:
    tic = time.time()
    device = resolve_device(cfg.device)
    src_dir, _, prep, mcfg, folds = open_run(cfg.work_dir, cfg.source, cfg.source_tag)
    n_folds = int(prep.folds["fold"].max()) + 1
    if cfg.min_votes > len(folds):
        raise ConfigError(f"min_votes={cfg.min_votes} but {src_dir} has {len(folds)} fold models")
    trained = pd.read_csv(src_dir / "trained_on.csv", dtype={"recording_id": str})
    seen = {f: set(trained.loc[trained["fold"] == f, "recording_id"]) for f in folds}
    window_s = float(mcfg["crop_seconds"])
    window = int(round(window_s * prep.sample_rate))
    durations = prep.durations
    plan = {rid: window_plan(durations[rid], window_s, cfg.windows_per_minute)
            for rid in prep.ids("train") + prep.ids("test")}
    run_dir = runs.start_run(cfg.work_dir, "pseudo", cfg.tag)
    inputs = {"preprocess": prep.run_dir.name, "source": f"{cfg.source}/{src_dir.name}"}
    runs.write_manifest(run_dir, "pseudo", cfg_dict(cfg), inputs, [], {}, finished=False)
    probs = predict_all(cfg, src_dir, folds, prep, plan, seen, window, device)
    table = build_table(cfg, prep, plan, probs, window_s, n_folds)
    runs.save_csv(run_dir / "pseudo_labels.csv", table)
    summary = summarise(cfg, prep, table, probs, plan, n_folds)
    summary["seconds"] = round(time.time() - tic, 1)
    runs.save_json(run_dir / "summary.json", summary)
    runs.write_manifest(run_dir, "pseudo", cfg_dict(cfg), inputs,
                        ["pseudo_labels.csv", "summary.json"], summary, finished=True)
    headline = {k: summary[k] for k in ("positives", "negatives", "recall_vs_tp",
                                         "fp_rate_vs_fp", "seconds")}
    checked = summary.get("precision_vs_events", {})
    for name, part in checked.items():  # demo: flat figures for summary.json
        headline[f"precision_vs_events_{name}"] = part["precision"]
    headline.update({f"positives_{k}": v for k, v in summary["positives_on"].items()})
    runs.update_summary(cfg.work_dir, "pseudo", {**headline, "tag": run_dir.name})
    events = "".join(f", {name} {part['windows']} windows {part['precision']:.2f} right vs calls"
                     for name, part in checked.items() if part["windows"])
    on = summary["positives_on"]
    print(f"pseudo {run_dir.name}: {summary['positives']} positive windows ({on['test']} test, "
          f"{on['train_tp']} train with TP, {on['train_fp_only']} FP-only) from "
          f"{cfg.source}/{src_dir.name}; recall vs TP {summary['recall_vs_tp']:.3f}, "
          f"FP rate vs FP {summary['fp_rate_vs_fp']:.3f}{events} [{summary['seconds']:.0f}s]",
          flush=True)
    return summary


if __name__ == "__main__":
    run(main, CFG, "pseudo")
