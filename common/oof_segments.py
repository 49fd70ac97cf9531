"""Segment-level OOF figures of a training run: each fold model scores the frame tracks of
its own validation recordings, cut into segments one crop long (common/class_figures.py);
the truth is the +1 boxes of the annotation table.

Where every recording holds nearly every class (a finch's song: bird0_raven), recording-level
CV LWLRAP saturates near 1 and cannot choose settings; the segment level can. The truth is
complete only for fully annotated data (elsewhere unboxed calls count as absent).

    python -m common.oof_segments --work_dir=work --run=stage1/latest
Writes <run>/oof_segments_per_class.csv and prints mean AP and ROC-AUC over classes.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from common import class_figures, runs
from common.cli import ConfigError, parse_cfg
from common.data import split_fold
from common.infer import predict_frames, resolve_device
from common.sed import load_checkpoint


@dataclass
class CFG:
    work_dir: str = "work"
    run: str = "stage1/latest"     # stage/tag of a finished training run
    segment_seconds: float = 0.0   # 0 = the run's crop length
    infer_batch: int = 64
    device: str = "auto"


def main(cfg: CFG) -> dict:
    from common.stage import open_run
    stage_name, _, tag = cfg.run.partition("/")
    if not tag:
        raise ConfigError(f"--run={cfg.run!r}: write stage/tag, e.g. stage1/latest")
    run_dir, _, prep, mcfg, folds = open_run(cfg.work_dir, stage_name, tag)
    device = resolve_device(cfg.device)
    seg_s = cfg.segment_seconds or mcfg["crop_seconds"]
    window = int(round(mcfg["crop_seconds"] * prep.sample_rate))
    truth, scores = [], []
    events = prep.annotations[prep.annotations["label"] > 0]
    for fold in folds:
        _, val = split_fold(prep.folds, fold)
        ids = sorted(val)
        model, _ = load_checkpoint(run_dir / f"fold{fold}.pth", device)
        _, tracks = predict_frames(model, prep.cache, ids, window, window // 2, cfg.infer_batch,
                                   device)
        hop_s = mcfg["hop_length"] / prep.sample_rate
        y, s = class_figures.segment_level(dict(zip(ids, tracks)), hop_s,
                                           events[events["recording_id"].isin(val)],
                                           prep.durations, seg_s, prep.classes)
        truth.append(y)
        scores.append(s)
    rows, _ = class_figures.class_rows(f"oof segment ({seg_s:g} s)", np.concatenate(truth),
                                       np.concatenate(scores), prep.classes)
    table = pd.DataFrame(rows)
    runs.save_csv(run_dir / "oof_segments_per_class.csv", table)
    n_segments = int(table["positives"].iloc[0] + table["negatives"].iloc[0]) if len(table) else 0
    out = {"oof_segment_map": float(table["ap"].mean()),
           "oof_segment_roc_auc": float(table["roc_auc"].mean()),
           "oof_segment_best_f1": float(table["best_f1"].mean()), "segments": n_segments}
    print(f"{cfg.run} ({run_dir.name}): OOF segments of {seg_s:g} s: mean AP "
          f"{out['oof_segment_map']:.4f}, mean ROC-AUC {out['oof_segment_roc_auc']:.4f}, mean best "
          f"F1 {out['oof_segment_best_f1']:.4f} ({n_segments} segments) -> "
          f"{run_dir / 'oof_segments_per_class.csv'}", flush=True)
    return out


if __name__ == "__main__":
    main(parse_cfg(CFG, "oof_segments"))
