"""Pseudo labels: fold models vote on overlapping windows of train and test recordings, and
on the 5 s segments of unlabeled soundscapes (self-training).

Each recording is cut into windows as long as the models' training crop, every
`infer_stride_seconds` (0: half a window), the last one flush with the end, so the whole
recording is covered for any crop length. A (window, species) is a pseudo positive where
enough allowed models give p >= the species' threshold. An unlabeled soundscape (01
--max_unlabeled, BirdCLEF 2023-2025) gets one window per 5 s segment, centred on it; with
`--soft=true` its rows are soft targets instead of votes: per class the allowed voters' mean
probability ** `soft_power`, entries below `soft_floor` zeroed (common/soft_labels.py).
`vote_splits` chooses the recordings voted on (train, test, unlabeled).

Honest CV (common/provenance.py): the rows that fold k's next stage may train on are voted
only by models that never trained on fold k's validation recordings (in one level of
k-fold CV: fold k's own model), so stage-3 CV is not lifted by labels that came from its
own validation set. Every row records its `voters` and the `fold` it was made for; 04
re-checks the provenance from the voters' trained_on.csv and counts what it drops. A model
never votes on a recording whose annotations it trained on (`vote_on_trained` allows it);
test recordings carry no annotations, so a later round's models vote on them again.

Per-species thresholds (`target_precision`): on the source run's OOF predictions (each
validation recording scored by the model that held it out, against its TP rows), the lowest
threshold at which the species' OOF precision reaches the target; a species with fewer than
`min_class_positives` OOF positives takes the threshold pooled over all species; a species
whose OOF precision never reaches the target gets no pseudo labels. The sparse TP truth
counts unannotated calls as wrong, so the OOF precision is a lower bound. `threshold` is the
floor of every threshold (and the only one with target_precision 0). Pseudo negatives
(every voter below `neg_threshold`) are optional and off by default (the recipe found they
hurt).

Reads  the fold checkpoints, oof.csv and trained_on.csv of a stage-1/2/3 run
       (--source=stage2 --source_tag=latest).
Writes WORK_DIR/pseudo/<tag>/: pseudo_labels.csv (recording_id, window, t_start, t_end,
       class, score, votes, n_models, voters, fold, label, target: the soft target, empty
       for a vote; a soft row has label 0), thresholds.csv (per species:
       threshold, OOF precision and positives, windows), summary.json, manifest.json;
       pseudo.* figures in WORK_DIR/summary.json. The same command run again continues a
       crashed run, keeping the votes of the fold models it had finished (partial/).

Examples:
    python 03_pseudo_label.py --cfg_file=profiles/demo.json
    python 03_pseudo_label.py --source=stage1 --target_precision=0 --threshold=0.6
    python 03_pseudo_label.py --source=stage1 --vote_splits=unlabeled --soft=true --soft_power=2
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from common import metrics, paths, provenance, runs, segments, soft_labels
from common.cli import ConfigError, cfg_dict, run
from common.infer import predict_windows, resolve_device
from common.pseudo_checks import agreement, positives_on, precision_vs_events
from common.sed import load_checkpoint
from common.stage import open_run


@dataclass
class CFG:
    input_dir: str = field(default_factory=paths.default_input_dir)  # for test_truth.csv (demo)
    work_dir: str = field(default_factory=paths.default_work_dir)
    source: str = "stage2"         # stage whose fold models vote: stage1 | stage2 | stage3
    source_tag: str = "latest"
    tag: str = ""
    resume: str = ""               # tag of a crashed run to continue; "" = the newest one of this config
    fresh: bool = False            # true: a new run even when a crashed one of this config exists
    infer_stride_seconds: float = 0.0  # window stride, s; 0 = half the window
    target_precision: float = 0.9  # per-species threshold: lowest with this OOF precision;
                                   # 0 = `threshold` for every species
    threshold: float = 0.5         # a vote: p >= threshold (the floor of per-species ones)
    min_class_positives: int = 5   # OOF positives a species needs for a threshold of its own
    min_votes: int = 3             # votes needed when all n_folds models may vote
    vote_on_trained: bool = False  # a model may also label annotated recordings it trained on
    pseudo_negatives: bool = False
    neg_threshold: float = 0.05    # pseudo negative: every voter below this
    vote_splits: list[str] = field(default_factory=lambda: ["train", "test", "unlabeled"])
    #                                recordings voted on, by split (unlabeled: 01 --max_unlabeled)
    soft: bool = False             # unlabeled recordings: soft targets, not 0/1 votes
    soft_power: float = 1.0        # soft target = voters' mean probability ** this (> 1 sharpens)
    soft_floor: float = 0.05       # a target below this is 0; a window with none above is left out
    min_overlap: float = 0.5       # s, to match a pseudo window with a TP/FP box (summary)
    infer_batch: int = 64
    device: str = "auto"


def window_plan(duration: float, window_s: float, stride_s: float) -> np.ndarray:
    """Window starts (s) covering [0, duration): evenly spaced at most `stride_s` apart, the
    first at 0 and the last flush with the end; one window for a recording shorter than it."""
    span = max(duration - window_s, 0.0)
    n = 1 if span <= 1e-9 else int(math.ceil(span / max(stride_s, 1e-6) - 1e-9)) + 1
    return np.linspace(0.0, span, n)


def vote(probs: np.ndarray, threshold, min_votes: int, n_folds: int) -> tuple:
    """probs (M, W, K) of M allowed models -> (positive (W, K) bool, votes (W, K)).
    `threshold` is a scalar or per species (K,); the votes needed scale with the models
    allowed: ceil(min_votes * M / n_folds)."""
    votes = (probs >= np.asarray(threshold)).sum(axis=0)
    needed = math.ceil(min_votes * probs.shape[0] / n_folds)
    return votes >= needed, votes


def class_thresholds(oof: np.ndarray, truth: np.ndarray, target: float, floor: float,
                     min_positives: int) -> pd.DataFrame:
    """Per species (rows in class order): threshold, OOF precision at it, OOF positives.
    oof (N, K) probabilities of held-out models, truth (N, K) 0/1. The threshold is the
    lowest OOF score at which precision (of scores >= it) reaches `target`, at least
    `floor`; pooled over species for those with < min_positives positives; inf where the
    target is never reached. target 0: `floor` everywhere."""
    k = oof.shape[1]
    if target <= 0:
        return pd.DataFrame({"threshold": np.full(k, floor), "oof_precision": np.nan,
                             "oof_positives": truth.sum(axis=0).astype(int), "rule": "fixed"})
    pooled, pooled_prec = _lowest_at_precision(oof.ravel(), truth.ravel(), target, floor)
    rows = []
    for c in range(k):
        n_pos = int(truth[:, c].sum())
        if n_pos < min_positives:
            t = pooled
            hit = oof[:, c] >= t
            prec = float(truth[hit, c].mean()) if hit.any() else pooled_prec
            rows.append((t, prec, n_pos, "pooled"))
        else:
            t, prec = _lowest_at_precision(oof[:, c], truth[:, c], target, floor)
            rows.append((t, prec, n_pos, "species"))
    return pd.DataFrame(rows, columns=["threshold", "oof_precision", "oof_positives", "rule"])


def _lowest_at_precision(score: np.ndarray, truth: np.ndarray, target: float,
                         floor: float) -> tuple[float, float]:
    """(lowest threshold >= floor whose precision reaches target, that precision); (inf, nan)
    when none does."""
    order = np.argsort(-score, kind="stable")
    s, y = score[order], truth[order] > 0
    precision = np.cumsum(y) / np.arange(1, len(y) + 1)
    group_end = np.r_[s[:-1] > s[1:], True]  # tied scores pass a threshold together
    ok = (precision >= target) & (s >= floor) & group_end
    if not ok.any():
        return math.inf, math.nan
    i = int(np.flatnonzero(ok)[-1])
    return float(s[i]), float(precision[i])


def predict_all(cfg, src_dir, folds, prep, plan, may, window, device, run_dir) -> tuple:
    """({fold model j: {recording_id: (W, K) probabilities}} on the recordings j may label
    (`may[j]`, a set), the models whose probabilities a crashed run of this config had
    stored). Each model's are stored as soon as they are made (runs.save_partial)."""
    out, kept = {}, []
    for fold in folds:
        ids = [rid for rid in plan if rid in may[fold]]
        path = runs.partial_path(run_dir, f"votes_fold{fold}.pth")
        out[fold] = runs.load_partial(path, lambda got: list(got) == ids and all(
            got[r].shape == (len(plan[r]), len(prep.classes)) for r in ids))
        if out[fold] is not None:
            kept.append(fold)
            continue
        model, _ = load_checkpoint(src_dir / f"fold{fold}.pth", device)
        starts = [[int(round(s * prep.sample_rate)) for s in plan[rid]] for rid in ids]
        logits = predict_windows(model, prep.cache, ids, window, window, cfg.infer_batch,
                                 device, progress=None, starts=starts)
        out[fold] = {rid: metrics.sigmoid(lg) for rid, lg in zip(ids, logits)}
        runs.save_partial(path, out[fold])
    return out, kept


def build_table(cfg, prep, plan, probs, window_s, n_folds, thresholds, clean) -> pd.DataFrame:
    """Rows for each fold k: on every recording fold k may train on, the votes of the clean
    voters of k that may label it, or their soft targets (--soft, unlabeled recordings)."""
    rows, soft_ids = [], set(prep.ids(soft_labels.UNLABELED)) if cfg.soft else set()
    for k, voters_k in clean.items():
        excluded = provenance.excluded_ids(prep.folds, k)
        for rid in plan:
            voters = [j for j in voters_k if rid in probs[j]]
            if rid in excluded or not voters:
                continue
            p = np.stack([probs[j][rid] for j in voters])
            who = provenance.join_voters(voters)
            if rid in soft_ids:
                rows += soft_labels.soft_rows(rid, plan[rid], window_s, p, cfg.soft_power,
                                              cfg.soft_floor, prep.classes, who, k)
                continue
            pos, votes = vote(p, thresholds, cfg.min_votes, n_folds)
            neg = (p < cfg.neg_threshold).all(axis=0) if cfg.pseudo_negatives else np.zeros_like(pos)
            score = p.mean(axis=0)
            for w, c in zip(*np.nonzero(pos | neg)):
                start = float(plan[rid][w])
                rows.append((rid, int(w), round(start, 3), round(start + window_s, 3),
                             prep.classes[c], float(score[w, c]), int(votes[w, c]), len(voters),
                             who, k, 1 if pos[w, c] else -1, np.nan))
    return pd.DataFrame(rows, columns=["recording_id", "window", "t_start", "t_end", "class",
                                       "score", "votes", "n_models", "voters", "fold", "label",
                                       "target"])


def voting_plan(cfg, prep, window_s: float) -> dict:
    """{recording_id: window starts (s)} of the recordings of `vote_splits`: overlapping
    windows (window_plan), one per 5 s segment on unlabeled soundscapes."""
    known = ("train", "test", soft_labels.UNLABELED)
    bad = [s for s in cfg.vote_splits if s not in known]
    if bad or not cfg.vote_splits:
        raise ConfigError(f"vote_splits={cfg.vote_splits}: choose among {', '.join(known)}")
    if cfg.soft_power <= 0 or not 0 <= cfg.soft_floor <= 1:
        raise ConfigError(f"soft_power={cfg.soft_power}, soft_floor={cfg.soft_floor}: the power "
                          "must be > 0 and the floor in [0, 1]")
    stride_s = cfg.infer_stride_seconds or window_s / 2
    plan = {}
    for split in cfg.vote_splits:
        for rid in prep.ids(split):
            plan[rid] = segments.segment_starts(prep.durations[rid], window_s) \
                if split == soft_labels.UNLABELED else \
                window_plan(prep.durations[rid], window_s, stride_s)
    return plan


def summarise(cfg, prep, table, probs, plan, n_folds: int, thresholds: pd.DataFrame) -> dict:
    pos = table[table["label"] > 0]
    voted = set().union(*(set(p) for p in probs.values()))
    per_class = pos["class"].value_counts()
    thresholds = thresholds.assign(windows=[int(per_class.get(c, 0)) for c in prep.classes])
    out = {"positives": int(len(pos)), "negatives": int((table["label"] < 0).sum()),
           "recordings_voted": len(voted), "recordings_without_model": len(set(plan) - voted),
           "recall_vs_tp": agreement(table, prep.annotations, 1, cfg.min_overlap, voted),
           "fp_rate_vs_fp": agreement(table, prep.annotations, -1, cfg.min_overlap, voted),
           "positives_per_class": {c: int(per_class.get(c, 0)) for c in prep.classes},
           "positives_per_fold": {int(k): int(v) for k, v in pos["fold"].value_counts().items()},
           "species_without_labels": [c for c, t in zip(prep.classes, thresholds["threshold"])
                                      if not np.isfinite(t)],
           "positives_on": positives_on(pos, prep),
           "soft_windows": int(len(table.loc[table["target"].notna(), ["recording_id",
                                                                      "t_start"]].drop_duplicates())),
           "soft_entries": int(table["target"].notna().sum())}
    found = prep.test_truth(cfg.input_dir)
    if found is not None:  # demo: recording-level quality of the test pseudo positives
        ids, truth = found  # per species
        pred = np.zeros((len(ids), len(prep.classes)), np.float32)
        index = {c: i for i, c in enumerate(prep.classes)}
        row = {rid: i for i, rid in enumerate(ids)}
        for rid, cls in zip(pos["recording_id"], pos["class"]):
            if rid in row:
                pred[row[rid], index[cls]] = 1
        out["test_recording_f1"] = metrics.f1_at(truth, prep.species.to_species(pred), 0.5)
    checked = precision_vs_events(table, cfg.input_dir, n_folds, cfg.min_overlap,
                                  prep.species.species)
    if checked is not None:
        out["precision_vs_events"] = checked
    return out, thresholds


def oof_thresholds(cfg, src_dir, prep) -> pd.DataFrame:
    """Per-species vote thresholds from the source run's OOF predictions (class_thresholds)."""
    oof = pd.read_csv(src_dir / "oof.csv", dtype={"recording_id": str})
    ids = oof["recording_id"].tolist()
    probs = metrics.sigmoid(oof[prep.classes].to_numpy(np.float64))
    table = class_thresholds(probs, prep.tp_matrix(ids), cfg.target_precision, cfg.threshold,
                             cfg.min_class_positives)
    table.insert(0, "class", prep.classes)
    return table


def print_thresholds(table: pd.DataFrame) -> None:
    """One line per species: threshold, OOF precision behind it, windows made."""
    print("species  threshold  OOF precision  OOF positives  rule     windows", flush=True)
    for cls, t, prec, n_pos, rule, n in zip(*(table[c] for c in (
            "class", "threshold", "oof_precision", "oof_positives", "rule", "windows"))):
        t = f"{t:.3f}" if np.isfinite(t) else "none"
        prec = f"{prec:.2f}" if np.isfinite(prec) else "-"
        print(f"{cls:<8} {t:>9}  {prec:>13}  {n_pos:>13}  {rule:<7}  {n:>7}", flush=True)


def main(cfg: CFG) -> dict:
    tic = time.time()
    device = resolve_device(cfg.device)
    src_dir, _, prep, mcfg, folds = open_run(cfg.work_dir, cfg.source, cfg.source_tag)
    n_folds = int(prep.folds["fold"].max()) + 1
    if not 1 <= cfg.min_votes <= n_folds:
        raise ConfigError(f"min_votes={cfg.min_votes}: the votes needed when all {n_folds} fold "
                          f"models may vote, so 1 to {n_folds}")
    if len(folds) < n_folds:  # a run of some folds (--folds=0): the votes needed scale with it
        print(f"{src_dir.name} has {len(folds)} of {n_folds} fold models: a window needs "
              f"ceil(min_votes x allowed models / {n_folds}) votes", flush=True)
    trained = pd.read_csv(src_dir / "trained_on.csv", dtype={"recording_id": str})
    seen = {f: set(trained.loc[trained["fold"] == f, "recording_id"]) for f in folds}
    annotated = set(prep.annotations["recording_id"])
    window_s = float(mcfg["crop_seconds"])
    window = int(round(window_s * prep.sample_rate))
    plan = voting_plan(cfg, prep, window_s)
    clean = {k: provenance.clean_voters(seen, prep.folds, k) for k in folds}
    may = {j: {rid for rid in plan if provenance.may_vote(seen[j] & annotated, rid,
                                                          cfg.vote_on_trained)}
           for j in sorted(set().union(*clean.values()))}
    thresholds = oof_thresholds(cfg, src_dir, prep)
    inputs = {"preprocess": prep.run_dir.name, "source": f"{cfg.source}/{src_dir.name}"}
    run_dir, resumed = runs.begin_run(cfg.work_dir, "pseudo", cfg_dict(cfg), inputs, cfg.tag,
                                      cfg.resume, cfg.fresh)
    probs, kept = predict_all(cfg, src_dir, sorted(may), prep, plan, may, window, device, run_dir)
    if resumed:
        print(f"pseudo {run_dir.name} (resumed): " + ", ".join(
            f"fold {j} votes {'kept' if j in kept else 'made now'}" for j in sorted(may)), flush=True)
    table = build_table(cfg, prep, plan, probs, window_s, n_folds,
                        thresholds["threshold"].to_numpy(float), clean)
    runs.save_csv(run_dir / "pseudo_labels.csv", table)
    summary, thresholds = summarise(cfg, prep, table, probs, plan, n_folds, thresholds)
    runs.save_csv(run_dir / "thresholds.csv", thresholds)
    print_thresholds(thresholds)
    summary["clean_voters"] = {int(k): v for k, v in clean.items()}
    summary["seconds"] = round(time.time() - tic, 1)
    runs.save_json(run_dir / "summary.json", summary)
    runs.write_manifest(run_dir, "pseudo", cfg_dict(cfg), inputs,
                        ["pseudo_labels.csv", "thresholds.csv", "summary.json"], summary,
                        finished=True)
    runs.drop_partials(run_dir)
    headline = {k: summary[k] for k in ("positives", "negatives", "soft_windows", "recall_vs_tp",
                                         "fp_rate_vs_fp", "seconds")}
    checked = summary.get("precision_vs_events", {})
    for name, part in checked.items():  # demo: flat figures for summary.json
        headline[f"precision_vs_events_{name}"] = part["precision"]
    headline.update({f"positives_{k}": v for k, v in summary["positives_on"].items()})
    runs.update_summary(cfg.work_dir, "pseudo", {**headline, "tag": run_dir.name})
    events = "".join(f", {name} {part['windows']} windows {part['precision']:.2f} right vs calls"
                     for name, part in checked.items() if part["windows"])
    on = summary["positives_on"]
    soft = (f", {summary['soft_windows']} soft windows ({summary['soft_entries']} entries "
            f">= {cfg.soft_floor})" if cfg.soft else "")
    print(f"pseudo {run_dir.name}: {summary['positives']} positive windows ({on['test']} test, "
          f"{on['train_tp']} train with TP, {on['unlabeled']} unlabeled, "
          f"{on['train_fp_only']} FP-only; per fold "
          f"{summary['positives_per_fold']}, voters per fold {summary['clean_voters']}) from "
          f"{cfg.source}/{src_dir.name}{soft}; {len(summary['species_without_labels'])} species below "
          f"the target precision; recall vs TP {summary['recall_vs_tp']:.3f}, "
          f"FP rate vs FP {summary['fp_rate_vs_fp']:.3f}{events} [{summary['seconds']:.0f}s]",
          flush=True)
    return summary


if __name__ == "__main__":
    run(main, CFG, "pseudo")
