"""Ensemble: test inference of every run and fold, blending, submission, detections, report.

Per run (a finished stage1/2/3 run): each fold model scores every test recording in windows
of its training crop (max over windows of the clip logit); folds are averaged weighted by
their CV LWLRAP, as the recipe. Runs are blended (`blend`, see common/blend.py): `align`
(logits standardised per run, then averaged: 5th place RFCx), `rank` (mean per-class rank)
or `oof` (align with weights fitted on the runs' common OOF recordings). Optional prior
rescaling per species (odds' = f * odds) is applied to each run before blending; the report
shows the test score with and without it. The framewise outputs (mean over folds and runs,
on the first run's frame grid) give the event table and Raven selection tables.

Reads  the runs' folders (fold{k}.pth, oof.csv, metrics.json, manifest.json), their
       preprocessing runs, INPUT_DIR/sample_submission.csv and test_truth.csv (demo).
Writes WORK_DIR/ensemble/<tag>/: submission.csv, test_<stage>_<run>.csv (fold-blended test
       logits per run), detections.csv, raven/<rid>.Table.1.selections.txt, pictures/*.png,
       report.md, report.json, manifest.json; ensemble.* in WORK_DIR/summary.json.

Examples:
    python 05_ensemble.py                                         # latest stage-3 run
    python 05_ensemble.py --runs=stage3/latest,stage1/latest --blend=oof --prior_scaling=estimate
    python 05_ensemble.py --runs=stage1/latest --detect=false --n_pictures=0   # quick
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from common import blend, class_figures, detect, metrics, paths, plots, report, runs, stage
from common.cli import ConfigError, cfg_dict, run
from common.infer import frame_count, predict_frames, resample_frames, resolve_device
from common.prepared import load_prepared
from common.sed import load_checkpoint

CHUNK = 128  # recordings per inference call: bounds the memory of their frame tracks


@dataclass
class CFG:
    input_dir: str = field(default_factory=paths.default_input_dir)  # sample_submission.csv
    work_dir: str = field(default_factory=paths.default_work_dir)
    runs: list[str] = field(default_factory=list)  # "stage/tag", e.g. stage3/latest;
    #                                 [] = the latest stage3 run, else the latest stage1 run
    tag: str = ""                  # this run's tag; default: a timestamp
    blend: str = "align"           # align | rank | oof
    oof_steps: int = 10            # oof: weights are multiples of 1/oof_steps
    prior_scaling: str = "none"    # none | estimate (test prior = mean test prediction)
    #                                | path of a CSV with columns class,prior
    stride_seconds: float = 0.0    # test window stride, s; 0 = each run's crop (no overlap)
    detect: bool = True            # framewise tracks of all test recordings -> detections, Raven
    event_threshold: float = 0.5   # frame probability an event must reach
    min_event_seconds: float = 0.3  # shorter events are dropped, s
    n_pictures: int = 4            # test recordings drawn (spectrogram + frame scores)
    top_species: int = 3           # species curves under each spectrogram
    infer_batch: int = 64          # windows per forward pass
    device: str = "auto"           # auto | cpu | cuda


# ----------------------------------------------------------------------------- runs
def resolve_runs(cfg: CFG) -> list[Path]:
    if not cfg.runs:
        stage_name = "stage3" if runs.list_runs(cfg.work_dir, "stage3") else "stage1"
        return [runs.find_run(cfg.work_dir, stage_name, "latest")]
    out = []
    for spec in cfg.runs:
        stage_name, _, tag = spec.partition("/")
        if not stage_name or not tag:
            raise ConfigError(f"--runs entry {spec!r}: write stage/tag, e.g. stage3/latest")
        out.append(runs.find_run(cfg.work_dir, stage_name, tag))
    if len(set(out)) < len(out):
        raise ConfigError(f"--runs names a run twice: {[str(p) for p in out]}")
    return out


def load_run(run_dir: Path) -> dict:
    """What the ensemble needs of one run: name, model config, folds and their weights, OOF."""
    manifest = runs.read_manifest(run_dir)
    result = json.loads((run_dir / "metrics.json").read_text())
    folds = [int(f) for f in result["folds"]]
    missing = [f for f in folds if not (run_dir / f"fold{f}.pth").is_file()]
    if missing:
        raise ConfigError(f"{run_dir}: checkpoints of folds {missing} are missing")
    ckpt = torch.load(run_dir / f"fold{folds[0]}.pth", map_location="cpu", weights_only=False)
    fold_cv = {int(k): float(v) for k, v in result.get("fold_lwlrap", {}).items()}
    oof = pd.read_csv(run_dir / "oof.csv", dtype={"recording_id": str})
    return {"dir": run_dir, "name": f"{manifest['stage']}/{run_dir.name}",
            "mcfg": ckpt["model_cfg"], "preprocess": manifest["inputs"]["preprocess"],
            "folds": folds, "fold_weights": [fold_cv.get(f, 1.0) for f in folds],
            "cv_lwlrap": result.get("cv_lwlrap"), "oof": oof.set_index("recording_id")}


def get_prep(cfg: CFG, cache: dict, tag: str):
    if tag not in cache:
        cache[tag] = load_prepared(cfg.work_dir, tag)
    return cache[tag]


# ----------------------------------------------------------------------------- OOF blend
def fit_blend(cfg: CFG, infos: list, prep) -> dict:
    """Run weights (fitted for `oof`, else equal) and the blend's OOF LWLRAP on the
    recordings common to every run's oof.csv."""
    common = sorted(set.intersection(*(set(i["oof"].index) for i in infos)))
    oofs = [i["oof"].loc[common, prep.classes].to_numpy(np.float64) for i in infos]
    truth = prep.tp_matrix(common)
    for info, oof in zip(infos, oofs):
        info["oof_common"] = metrics.lwlrap(truth, oof) if common else float("nan")
    weights = np.full(len(infos), 1.0 / len(infos))
    if cfg.blend == "oof":
        if not truth.any():
            raise ConfigError("blend=oof: no OOF recording with a TP label is common to all runs "
                              f"({[i['name'] for i in infos]}); use --blend=align")
        weights, _ = blend.fit_oof_weights(oofs, truth, cfg.oof_steps)
    cv = metrics.lwlrap(truth, blend.blend(cfg.blend, oofs, weights)) if common else float("nan")
    return {"weights": weights, "cv_lwlrap": cv, "n_common": len(common)}


# ----------------------------------------------------------------------------- inference
def infer_run(cfg: CFG, info: dict, prep, ids: list, tracks: dict, grid: dict,
              run_weight: float, device) -> np.ndarray:
    """Fold-blended test logits (N, K); adds run_weight x the fold-mean frame track of every
    recording in `tracks` (on `grid`) into `tracks` in place."""
    mcfg = info["mcfg"]
    window = int(round(mcfg["crop_seconds"] * prep.sample_rate))
    stride = int(round((cfg.stride_seconds or mcfg["crop_seconds"]) * prep.sample_rate))
    hop_s = mcfg["hop_length"] / prep.sample_rate
    logits = 0.0
    weights = np.asarray(info["fold_weights"]) / np.sum(info["fold_weights"])
    for fold, w in zip(info["folds"], weights):
        model, _ = load_checkpoint(info["dir"] / f"fold{fold}.pth", device)
        parts = []
        for b in range(0, len(ids), CHUNK):
            chunk = ids[b:b + CHUNK]
            scores, frames = predict_frames(model, prep.cache, chunk, window, stride,
                                            cfg.infer_batch, device, progress=None)
            parts.append(scores)
            for rid, track in zip(chunk, frames):
                if rid in tracks:  # float32 throughout: a full RFCx test set is ~1 GB of tracks
                    track = resample_frames(track, hop_s, grid["n"][rid], grid["hop_s"])
                    tracks[rid] += float(run_weight * w) * track
        logits = logits + w * np.concatenate(parts)
        print(f"  {info['name']} fold {fold}: {len(ids)} test recordings scored", flush=True)
    return logits


# ----------------------------------------------------------------------------- scoring
def score_test(found, ids: list, scores: np.ndarray, probs: np.ndarray | None = None) -> dict:
    """Test LWLRAP (and F1@0.5 of `probs`) where test truth exists (the demo), else {}."""
    if found is None:
        return {}
    truth_ids, truth = found
    order = {rid: i for i, rid in enumerate(ids)}
    rows = [order[r] for r in truth_ids]
    out = {"test_lwlrap": metrics.lwlrap(truth, scores[rows])}
    if probs is not None:
        out["test_f1"] = metrics.f1_at(truth, probs[rows])["f1"]
    return out


def write_detections(cfg: CFG, run_dir: Path, tracks: dict, prep, grid: dict) -> pd.DataFrame:
    table = detect.detection_table(tracks, prep.classes, grid["hop_s"], cfg.event_threshold,
                                   cfg.min_event_seconds, prep.durations)
    runs.save_csv(run_dir / "detections.csv", table)
    bands = detect.species_bands(prep.annotations, prep.classes, prep.sample_rate)
    detect.write_raven_tables(run_dir / "raven", table, list(tracks), bands)
    return table


def write_pictures(cfg: CFG, run_dir: Path, prep, infos: list, tracks: dict, pic_ids: list,
                   found, blend_scores: np.ndarray, ids: list, weights) -> list:
    out, mcfg = [], {**infos[0]["mcfg"], "sample_rate": prep.sample_rate}
    truth = dict(zip(found[0], found[1])) if found is not None else {}
    for rid in pic_ids:
        spec = plots.mel_db(prep.cache.get(rid), mcfg)
        names = [c for c, v in zip(prep.classes, truth[rid]) if v > 0] if rid in truth else None
        out.append(plots.recording_picture(
            run_dir / "pictures" / f"{rid}.png", spec, tracks[rid],
            mcfg["hop_length"] / prep.sample_rate, prep.classes, mcfg["fmin"], mcfg["fmax"],
            cfg.top_species, names, cfg.event_threshold, title=f"{rid} ({cfg.blend} blend)"))
    if found is not None:
        order = {rid: i for i, rid in enumerate(ids)}
        ap = metrics.per_class_ap(found[1], blend_scores[[order[r] for r in found[0]]])
        out.append(plots.bar_chart(run_dir / "pictures" / "species_ap.png", prep.classes, ap,
                                   "per-species AP of the blend (demo test truth)", "AP", (0, 1.1)))
    out.append(plots.bar_chart(run_dir / "pictures" / "blend_weights.png",
                               [i["name"] for i in infos], weights, f"blend weights ({cfg.blend})",
                               "weight", (0, 1.1)))
    return [str(p.relative_to(run_dir)) for p in out]


# ----------------------------------------------------------------------------- report
def report_rows(cfg: CFG, infos: list, fitted: dict, found, ids: list, out: dict) -> list:
    rows = []
    for info, w in zip(infos, fitted["weights"]):
        row = {"run": info["name"], "backbone": info["mcfg"]["backbone"],
               "resolution": stage.resolution(info["mcfg"]), "folds": len(info["folds"]),
               "weight": float(w), "cv_lwlrap": info["cv_lwlrap"],
               "oof_common": info["oof_common"],
               **score_test(found, ids, info["test"], metrics.sigmoid(info["test"]))}
        if cfg.prior_scaling != "none" and found is not None:
            row["test_lwlrap_prior"] = score_test(found, ids, info["test_prior"])["test_lwlrap"]
        rows.append(row)
    row = {"run": f"blend ({cfg.blend})", "weight": 1.0, "resolution": "",
           "backbone": "+".join(sorted({r["backbone"] for r in rows})),
           "folds": sum(r["folds"] for r in rows if r["weight"] > 0),
           "cv_lwlrap": fitted["cv_lwlrap"], "oof_common": fitted["cv_lwlrap"],
           **score_test(found, ids, out["plain"], out["probs"])}
    if cfg.prior_scaling != "none" and found is not None:
        row["test_lwlrap_prior"] = score_test(found, ids, out["scaled"])["test_lwlrap"]
    return rows + [row]


def render_report(cfg: CFG, rows: list, facts: dict) -> str:
    cols = [c for c in ("run", "backbone", "resolution", "folds", "weight", "cv_lwlrap",
                        "oof_common", "test_lwlrap", "test_lwlrap_prior", "test_f1")
            if any(c in r for r in rows)]
    fmt = lambda v: f"{v:.4f}" if isinstance(v, float) else "" if v is None else str(v)  # noqa
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows]
    notes = [f"- blend: {cfg.blend}; prior scaling: {cfg.prior_scaling}",
             f"- oof_common: OOF LWLRAP on the {facts['n_common']} recordings in every run's "
             "oof.csv (the blend's CV); cv_lwlrap of a run: its own metrics.json",
             "- test_f1: F1@0.5 of sigmoid(logits); for the blend, of the weighted mean of the "
             "runs' probabilities (blended z-scores or ranks are no probabilities)"]
    if cfg.blend == "rank" and cfg.prior_scaling != "none":
        notes.append("- a per-class factor does not change per-class ranks: no prior effect")
    if "test_prevalence_baseline" in facts:
        notes.append(f"- test prevalence baseline LWLRAP: {facts['test_prevalence_baseline']:.4f}")
    if facts.get("filled"):
        notes.append(f"- {len(facts['filled'])} sample ids had no prediction and got column "
                     f"means: {facts['filled'][:10]}")
    return "# Ensemble report\n\n" + "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n"


# ----------------------------------------------------------------------------- main
def check_cfg(cfg: CFG) -> None:
    if cfg.blend not in blend.BLENDS:
        raise ConfigError(f"blend={cfg.blend!r}: choose one of {', '.join(blend.BLENDS)}")
    if cfg.prior_scaling not in ("none", "estimate") and not Path(cfg.prior_scaling).is_file():
        raise ConfigError(f"prior_scaling={cfg.prior_scaling!r}: use none, estimate, or the path "
                          "of a CSV with columns class,prior")
    if not 0 < cfg.event_threshold < 1 or cfg.oof_steps < 1:
        raise ConfigError("event_threshold must lie in (0, 1) and oof_steps be >= 1")


def blend_test(cfg: CFG, infos: list, weights, classes: list) -> dict:
    """Blended test scores without and with prior rescaling, and blended probabilities."""
    for info in infos:
        factor = blend.prior_factor_of(cfg.prior_scaling, info["oof"][classes].to_numpy(),
                                       info["test"], classes)
        info["test_prior"] = blend.rescale_logits(info["test"], factor)
    return {"plain": blend.blend(cfg.blend, [i["test"] for i in infos], weights),
            "scaled": blend.blend(cfg.blend, [i["test_prior"] for i in infos], weights),
            "probs": blend.weighted_mean([metrics.sigmoid(i["test"]) for i in infos], weights)}


def load_inputs(cfg: CFG) -> tuple:
    """(run infos, the first run's Prepared, {tag: Prepared}); every run must share the
    classes and test recordings."""
    infos, preps = [load_run(d) for d in resolve_runs(cfg)], {}
    prep = get_prep(cfg, preps, infos[0]["preprocess"])
    for info in infos:
        other = get_prep(cfg, preps, info["preprocess"])
        if other.classes != prep.classes or sorted(other.ids("test")) != sorted(prep.ids("test")):
            raise ConfigError(f"{info['name']} was trained on other classes or test recordings "
                              f"than {infos[0]['name']}; blend runs of one dataset")
    return infos, prep, preps


def write_outputs(cfg: CFG, run_dir: Path, prep, infos: list, fitted: dict, tracks: dict,
                  grid: dict) -> tuple:
    """Submission, detections, pictures, report; returns (report rows, facts, files)."""
    ids = prep.ids("test")
    out = blend_test(cfg, infos, fitted["weights"], prep.classes)
    final = out["plain"] if cfg.prior_scaling == "none" else out["scaled"]
    sample = blend.read_sample(Path(cfg.input_dir) / "sample_submission.csv", ids, prep.classes)
    sub, filled = blend.make_submission(ids, final, prep.classes, sample)
    blend.check_submission(sub, sample)
    runs.save_csv(run_dir / "submission.csv", sub)
    found = prep.test_truth(cfg.input_dir)
    rows = report_rows(cfg, infos, fitted, found, ids, out)
    facts = {"n_common": fitted["n_common"], "filled": filled}
    if found is not None:
        facts["test_prevalence_baseline"] = metrics.prevalence_baseline(found[1])
    files = ["submission.csv", "report.md", "report.json"] + \
        [f"test_{i['name'].replace('/', '_')}.csv" for i in infos]
    if cfg.detect:
        facts["events"] = len(write_detections(cfg, run_dir, tracks, prep, grid))
        files += ["detections.csv", "raven/"]
    per_class, more = class_figures.write(run_dir, prep, found, ids, out["probs"], tracks,
                                          grid["hop_s"], infos[0]["mcfg"]["crop_seconds"])
    files += more
    files += write_pictures(cfg, run_dir, prep, infos, tracks, ids[:max(cfg.n_pictures, 0)],
                            found, final, ids, fitted["weights"])
    runs.save_json(run_dir / "report.json", {"rows": rows, **facts, "blend": cfg.blend,
                                             "prior_scaling": cfg.prior_scaling,
                                             "weights": dict(zip([i["name"] for i in infos],
                                                                 fitted["weights"]))})
    runs.atomic_write(run_dir / "report.md",
                      lambda f: f.write(render_report(cfg, rows, facts) + per_class))
    return rows, facts, files


def main(cfg: CFG) -> dict:
    tic = time.time()
    check_cfg(cfg)
    device = resolve_device(cfg.device)
    infos, prep, preps = load_inputs(cfg)
    fitted = fit_blend(cfg, infos, prep)
    run_dir = runs.start_run(cfg.work_dir, "ensemble", cfg.tag)
    inputs = {"runs": [i["name"] for i in infos],
              "preprocess": sorted({i["preprocess"] for i in infos})}
    runs.write_manifest(run_dir, "ensemble", cfg_dict(cfg), inputs, [], {}, finished=False)
    ids = prep.ids("test")
    print(f"ensemble {run_dir.name}: {len(infos)} runs, {len(ids)} test recordings, blend "
          f"{cfg.blend}, weights {np.round(fitted['weights'], 3).tolist()}", flush=True)
    keep = ids if cfg.detect else ids[:max(cfg.n_pictures, 0)]
    hop = infos[0]["mcfg"]["hop_length"]  # frame tracks live on the first run's frame grid
    grid = {"hop_s": hop / prep.sample_rate,
            "n": {r: frame_count(prep.cache.length(r), hop) for r in keep}}
    tracks = {r: np.zeros((grid["n"][r], len(prep.classes)), np.float32) for r in keep}
    run_weights = np.asarray(fitted["weights"]) / np.sum(fitted["weights"])
    for info, w in zip(infos, run_weights):
        info["test"] = infer_run(cfg, info, get_prep(cfg, preps, info["preprocess"]), ids,
                                 tracks, grid, w, device)
        runs.save_csv(run_dir / f"test_{info['name'].replace('/', '_')}.csv",
                      stage.score_frame(ids, info["test"], prep.classes))
    rows, facts, files = write_outputs(cfg, run_dir, prep, infos, fitted, tracks, grid)
    summary = {"cv_lwlrap": fitted["cv_lwlrap"], "submission": str(run_dir / "submission.csv"),
               "seconds": round(time.time() - tic, 1), "tag": run_dir.name}
    if "test_lwlrap" in rows[-1]:  # the submission's score (with prior scaling when on)
        summary["test_lwlrap"] = rows[-1].get("test_lwlrap_prior", rows[-1]["test_lwlrap"])
        summary["test_lwlrap_no_prior"] = rows[-1]["test_lwlrap"]
    runs.update_summary(cfg.work_dir, "ensemble", summary)
    runs.write_manifest(run_dir, "ensemble", cfg_dict(cfg), inputs, files,
                        {**summary, "rows": rows}, finished=True)
    report.main(report.CFG(work_dir=cfg.work_dir))
    print(render_report(cfg, rows, facts))
    where = f"submission {run_dir / 'submission.csv'}\nreport     {run_dir / 'report.md'}\n" \
            f"pictures   {run_dir / 'pictures'}"
    if cfg.detect:
        where += f"\nevents     {facts['events']} in {run_dir / 'detections.csv'} and raven/"
    print(where, flush=True)
    return {"summary": summary, "rows": rows, "run_dir": run_dir}


if __name__ == "__main__":
    run(main, CFG, "ensemble")
