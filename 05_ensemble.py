"""Ensemble: test inference of every run and fold, blending, submission, detections, report.

Per run (a finished stage1/2/3 run): each fold model scores every test recording in windows
of its training crop every `infer_stride_seconds` (default: the stride of the run's own OOF
scores, so OOF and test scores are alike); max over windows of the clip logit; folds are
averaged weighted by their CV LWLRAP, as the recipe. With `calibrate` (default) each run's
logits are Platt-scaled per class on its OOF predictions (common/calibration.py), so the
classes of one recording compare on one scale; the CV figures use calibrators fitted on the
other folds. Runs are blended (`blend`, see common/blend.py): `align` (averaged; without
calibration standardised per run first: 5th place RFCx), `rank` (mean per-class rank) or
`oof` (align with weights fitted on the runs' common OOF recordings). The test prior is
estimated by EM (Saerens et al. 2002) on the calibrated blend and applied when a simulation
on skewed resamples of the OOF recordings says it helps (`prior_scaling=auto`); priors.csv
lists it next to the training prior. Before it, a class-frequency term (weight x log share of
train recordings with a TP row of the class, common/prior_term.py) is added where its weight,
chosen on the cross-fitted OOF blend, lifts the OOF LWLRAP (`frequency_term=auto`); when it
is on, the EM prior is not applied. A run whose CV is below the best run's is named in
the report. The framewise outputs (mean over folds and runs, on the first run's frame
grid) give the event table and Raven selection tables (per class, with its species).
Calibration, the prior and the blend work on the model's classes; the submission (the
sample's columns, in its order), the CV and test figures, per-species AP and pictures are per
species: with RFCx song-type classes (01's classes=species_songtype) a species' score is the
max over its classes (common/species.py).
BirdCLEF layouts with test soundscapes submit a row per 5 s segment instead
(common/segment_submission.py: `row_id,birds` for 2021 with the threshold chosen on held-out
segments' F1, one probability column per class for 2023-2025), shape-checked.
With no test recordings (BirdCLEF layouts without test soundscapes, an RFCx test/ empty or
missing) the runs are blended on their OOF predictions only: report, summary (with the
blend's soundscape F1 where the layout has labelled soundscapes) and pictures of held-out
recordings, no submission.

Reads  the runs' folders (fold{k}.pth, oof.csv, metrics.json, manifest.json), their
       preprocessing runs, INPUT_DIR/sample_submission.csv and test_truth.csv (demo).
Writes WORK_DIR/ensemble/<tag>/: submission.csv, test_<stage>_<run>.csv (fold-blended test
       logits per run), detections.csv, raven/<rid>.Table.1.selections.txt, pictures/*.png,
       report.md, report.json, manifest.json; ensemble.* in WORK_DIR/summary.json (with
       infer_speed: seconds per hour of test audio, projected test-set time); with
       --runtime=onnx|openvino, fold{k}.onnx beside each checkpoint. The same command run again
       continues a crashed run, keeping the test scores of the folds it had inferred (partial/).

Examples:
    python 05_ensemble.py                                         # latest stage-3 run
    python 05_ensemble.py --runs=stage3/latest,stage1/latest --blend=oof --prior_scaling=auto
    python 05_ensemble.py --runs=stage1/latest --detect=false --n_pictures=0   # quick
    python 05_ensemble.py --runtime=onnx      # test inference by ONNX Runtime on the CPU
    python 05_ensemble.py --runtime=openvino  # the same graph compiled by OpenVINO
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from common import (blend, calibration, class_figures, detect, event_rule, heldout, metrics,
                    paths, plots, prior_term, report, runs, segment_submission, stage)
from common.cli import ConfigError, cfg_dict, run
from common.ensemble_report import blend_facts, render_report, report_rows
from common.infer import (InferenceClock, frame_count, predict_frames, resample_frames,
                          resolve_device, speed_line)
from common.onnx_runtime import check_runtime, load_fold_model, runtime_label
from common.prepared import load_prepared

PRIOR_MODES = ("auto", "em", "none")
CHUNK = 128  # recordings per inference call: bounds the memory of their frame tracks
SCORED = "test_scores.pth"  # partial result: the folds' test logits and the tracks so far


@dataclass
class CFG:
    input_dir: str = field(default_factory=paths.default_input_dir)  # sample_submission.csv
    work_dir: str = field(default_factory=paths.default_work_dir)
    runs: list[str] = field(default_factory=list)  # "stage/tag", e.g. stage3/latest;
    #                                 [] = the latest stage3 run, else the latest stage1 run
    tag: str = ""                  # this run's tag; default: a timestamp
    resume: str = ""               # tag of a crashed run to continue; "" = the newest one of this config
    fresh: bool = False            # true: a new run even when a crashed one of this config exists
    blend: str = "align"           # align | rank | oof
    oof_steps: int = 10            # oof: weights are multiples of 1/oof_steps
    calibrate: str = "auto"        # per-class Platt scaling of each run on its OOF predictions:
    #   auto (kept when, on skewed resamples of the OOF recordings, the calibrated blend, with
    #   or without the EM prior, scores above the raw one) | true | false
    prior_scaling: str = "auto"    # test prior by EM (Saerens 2002) on calibrated scores:
    #   auto (applied only when the skewed-OOF simulation says it helps) | em | none
    #   | path of a CSV with columns class,prior
    frequency_term: str = "auto"   # weight x log(class share of train recordings) added to the
    #   blend (common/prior_term.py): auto (weight chosen on the OOF blend; 0 unless it gains;
    #   replaces the EM prior when on) | none | a number
    infer_stride_seconds: float = 0.0  # test window stride, s; 0 = each run's own OOF stride
    detect: bool = True            # framewise tracks of all test recordings -> detections, Raven
    event_threshold: float = 0.0   # frame probability an event must reach; 0 = chosen with
                                   # min_event_seconds on OOF recordings (common/event_rule.py)
    min_event_seconds: float = 0.3  # shorter events are dropped, s (chosen when the threshold is)
    n_pictures: int = 4            # test recordings drawn (spectrogram + frame scores)
    top_species: int = 3           # species curves under each spectrogram
    infer_batch: int = 64          # windows per forward pass
    device: str = "auto"           # auto | cpu | cuda
    runtime: str = "torch"         # test inference by torch | onnx | openvino (each fold model
    #   exported once to fold{k}.onnx beside its checkpoint, checked against torch, run by
    #   onnxruntime or compiled by OpenVINO on the CPU with torch's thread count, in bf16
    #   where the CPU has it natively (openvino:f32 | openvino:bf16 force one);
    #   common/onnx_runtime.py; README "CPU-only test inference" has the measured speeds)
    test_audio_hours: float = 0.0  # hours of test audio to project the inference time for
    #                                (a hidden test set's); 0 = this run's test recordings


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
    config = manifest.get("config", {})  # the stride its OOF scores were made at
    oof_stride = config.get("infer_stride_seconds") or config.get("val_stride_seconds") or 0.0
    oof = pd.read_csv(run_dir / "oof.csv", dtype={"recording_id": str})
    return {"dir": run_dir, "name": f"{manifest['stage']}/{run_dir.name}",
            "mcfg": ckpt["model_cfg"], "preprocess": manifest["inputs"]["preprocess"],
            "folds": folds, "fold_weights": [fold_cv.get(f, 1.0) for f in folds],
            "cv_lwlrap": result.get("cv_lwlrap"), "oof": oof.set_index("recording_id"),
            "oof_stride": float(oof_stride),
            "segment_f1": {k: result[k] for k in ("local_f1", "soundscape_f1", "local_roc_auc",
                                                  "local_cmap") if k in result}}


def get_prep(cfg: CFG, cache: dict, tag: str):
    if tag not in cache:
        cache[tag] = load_prepared(cfg.work_dir, tag)
    return cache[tag]


# ----------------------------------------------------------------------------- OOF blend
def fit_blend(cfg: CFG, infos: list, prep) -> dict:
    """Per run: its calibrator (fitted on all its OOF) and cross-fitted calibrated OOF logits
    (each fold calibrated by the other folds: an honest CV). Then run weights (fitted for
    `oof`, else equal), the blend's OOF LWLRAP on the recordings common to every run's
    oof.csv, and the skewed-prior simulation that decides the EM prior correction. Scores
    are per class (what calibration and the prior fit), every LWLRAP per species (prep.species)."""
    common = sorted(set.intersection(*(set(i["oof"].index) for i in infos)))
    truth, species = prep.tp_matrix(common), prep.species
    fold_of = dict(zip(prep.folds["recording_id"], prep.folds["fold"]))
    groups = np.array([fold_of.get(r, -1) for r in common])
    raws, cals = [], []
    for info in infos:
        raw = info["oof"].loc[common, prep.classes].to_numpy(np.float64)
        info["oof_common"] = species.lwlrap(truth, raw) if common else float("nan")
        raws.append(raw)
        if cfg.calibrate != "false" and truth.any():
            own = info["oof"][prep.classes].to_numpy(np.float64)
            info["calibrator"] = calibration.fit(own, prep.tp_matrix(list(info["oof"].index)))
            cals.append(calibration.cross_fit(raw, truth, groups))
            info["oof_common_cal"] = species.lwlrap(truth, cals[-1])
    plain = weigh(cfg, raws, truth, species, calibrated=False)
    out = {**plain, "n_common": len(common), "calibrated": False, "common": common,
           "oof_truth": truth, "oof_groups": groups, "oof_found": (common, species.to_species(truth)) if common else None,
           "cv_uncalibrated": plain["cv_lwlrap"]}
    if cals:
        cal = weigh(cfg, cals, truth, species, calibrated=True)
        out["cv_calibrated"] = cal["cv_lwlrap"]
        sim = calibration.simulate_shift(cal["blended"], truth, raw_logits=plain["blended"],
                                         to_species=species.to_species)
        out["shift_simulation"] = sim
        if cfg.calibrate == "true" or sim.get("best", "raw") != "raw":
            out.update(cal, calibrated=True, train_prior=metrics.sigmoid(cal["blended"]).mean(axis=0))
    # the frequency term, for test recordings scored per recording (clip labels submit 5 s
    # segments, which never take it); when on, its OOF LWLRAP is the blend's CV
    setting = "none" if prep.clips else cfg.frequency_term
    out["term"] = prior_term.for_blend(setting, out["blended"], truth, groups, species.lwlrap)
    if out["term"]["weight"] and out["calibrated"] and cfg.calibrate == "auto":
        # calibration was taken for the EM prior, which the term replaces: it stays only if
        # the calibrated blend with its term beats the raw blend (with the raw blend's term)
        raw_term = prior_term.for_blend(setting, plain["blended"], truth, groups, species.lwlrap)
        if (raw_term["cv"] or plain["cv_lwlrap"]) >= out["term"]["cv"]:
            out.update(plain, calibrated=False, term=raw_term)
            out.pop("train_prior", None)
    if not out["calibrated"]:
        for info in infos:
            info.pop("calibrator", None)
    if out["term"]["weight"]:
        out["cv_without_term"], out["cv_lwlrap"] = out["cv_lwlrap"], out["term"]["cv"]
    if out["term"]["note"] != "off":
        print(f"frequency term: {out['term']['note']}", flush=True)
    return out


def weigh(cfg: CFG, oofs: list, truth: np.ndarray, species, calibrated: bool) -> dict:
    """Run weights (fitted for `oof`, else equal), the blended OOF logits (per class) and
    their LWLRAP (per species: `species`, a common.species.SpeciesMap)."""
    weights = np.full(len(oofs), 1.0 / len(oofs))
    if cfg.blend == "oof":
        if not truth.any():
            raise ConfigError("blend=oof: no OOF recording with a TP label is common to all runs; "
                              "use --blend=align")
        weights, _ = blend.fit_oof_weights(oofs, truth, cfg.oof_steps, calibrated=calibrated,
                                           to_species=species.to_species)
    blended = blend.blend(cfg.blend, oofs, weights, calibrated=calibrated)
    cv = species.lwlrap(truth, blended) if len(truth) else float("nan")
    return {"weights": weights, "blended": blended, "cv_lwlrap": cv}


# ----------------------------------------------------------------------------- inference
def scored_so_far(run_dir: Path, ids: list, tracks: dict, n_classes: int) -> dict:
    """What infer_run stored of a crashed run of this config: {"ids", "logits": {"<run> fold
    k": (N, K) logits}, "tracks": frame tracks summed so far}; else a start with `tracks`."""
    def fits(got):
        return got["ids"] == ids and got["tracks"].keys() == tracks.keys() and all(
            got["tracks"][r].shape == t.shape for r, t in tracks.items()) and all(
            v.shape == (len(ids), n_classes) for v in got["logits"].values())
    got = runs.load_partial(runs.partial_path(run_dir, SCORED), fits)
    return got if got is not None else {"ids": list(ids), "logits": {}, "tracks": tracks}


def infer_run(cfg: CFG, info: dict, prep, ids: list, scored: dict, grid: dict,
              run_weight: float, device, run_dir: Path, clock: InferenceClock) -> np.ndarray:
    """Fold-blended test logits (N, K); adds run_weight x the fold-mean frame track of every
    recording in scored["tracks"] (on `grid`) into them in place. After each fold, its
    logits and the tracks so far are stored (runs.save_partial); a fold whose logits a
    crashed run stored is not inferred again. `clock` times each fold model (cfg.runtime)."""
    mcfg = info["mcfg"]
    window = int(round(mcfg["crop_seconds"] * prep.sample_rate))
    stride_s = cfg.infer_stride_seconds or info["oof_stride"] or mcfg["crop_seconds"]
    stride = int(round(stride_s * prep.sample_rate))
    hop_s = mcfg["hop_length"] / prep.sample_rate
    logits = 0.0
    weights = np.asarray(info["fold_weights"]) / np.sum(info["fold_weights"])
    tracks = scored["tracks"]
    audio_s = sum(prep.cache.length(r) for r in ids) / prep.sample_rate
    for fold, w in zip(info["folds"], weights):
        key = f"{info['name']} fold {fold}"
        if key in scored["logits"]:
            logits = logits + w * scored["logits"][key]
            continue
        with clock.loading():
            model = load_fold_model(info["dir"] / f"fold{fold}.pth", device, cfg.runtime,
                                    run_dir / "onnx")
        parts = []
        with clock.scoring(audio_s):
            for b in range(0, len(ids), CHUNK):
                chunk = ids[b:b + CHUNK]
                scores, frames = predict_frames(model, prep.cache, chunk, window, stride,
                                                cfg.infer_batch, device, progress=None)
                parts.append(scores)
                for rid, track in zip(chunk, frames):
                    if rid in tracks:  # float32 throughout: a full RFCx test set is ~1 GB of tracks
                        track = resample_frames(track, hop_s, grid["n"][rid], grid["hop_s"])
                        tracks[rid] += float(run_weight * w) * track
        scored["logits"][key] = np.concatenate(parts) if parts else np.zeros((0, len(prep.classes)))
        runs.save_partial(runs.partial_path(run_dir, SCORED), scored)
        logits = logits + w * scored["logits"][key]
        print(f"  {key}: {len(ids)} test recordings scored", flush=True)
    info["test_raw"] = np.asarray(logits, np.float64)
    # the calibration is affine per class, so calibrating the fold mean equals averaging
    # the calibrated folds: the OOF (one model) and test (fold mean) scores stay alike
    return info["calibrator"].apply(logits) if "calibrator" in info else info["test_raw"]


def event_rule_of(cfg: CFG, infos: list, prep, preps: dict, weights, hop: int, device) -> dict:
    """The event threshold and minimum duration: as set, or chosen on OOF recordings."""
    if cfg.event_threshold > 0 or not cfg.detect:
        return {"threshold": cfg.event_threshold, "min_seconds": cfg.min_event_seconds,
                "chosen": "set"}
    stride = cfg.infer_stride_seconds or infos[0]["oof_stride"] or infos[0]["mcfg"]["crop_seconds"]
    rule = event_rule.choose(infos, prep, preps, weights, hop, device, stride)
    if not rule:
        print("event rule: no OOF recording with a TP box; threshold 0.5, min duration "
              f"{cfg.min_event_seconds} s", flush=True)
        return {"threshold": 0.5, "min_seconds": cfg.min_event_seconds, "chosen": "default"}
    print(f"event rule chosen on {rule['recordings']} OOF recordings (their boxes): threshold "
          f"{rule['threshold']:.2f}, min duration {rule['min_seconds']:.3f} s, OOF event F1 "
          f"(IoU >= 0.3, where labels are known) {rule['oof_f1']:.3f}", flush=True)
    return {**{k: rule[k] for k in ("threshold", "min_seconds", "oof_f1", "recordings")},
            "chosen": "oof", "grid": rule["grid"]}


def write_detections(cfg: CFG, run_dir: Path, tracks: dict, prep, grid: dict) -> pd.DataFrame:
    rule = grid["event_rule"]
    table = detect.detection_table(tracks, prep.classes, grid["hop_s"], rule["threshold"],
                                   rule["min_seconds"], prep.durations, prep.species.of_class)
    if "grid" in rule:
        runs.save_csv(run_dir / "event_rule_oof.csv", rule["grid"])
    runs.save_csv(run_dir / "detections.csv", table)
    bands = detect.species_bands(prep.annotations, prep.classes, prep.sample_rate)
    detect.write_raven_tables(run_dir / "raven", table, list(tracks), bands)
    return table


def write_pictures(cfg: CFG, run_dir: Path, prep, infos: list, tracks: dict, pic_ids: list,
                   found, blend_scores: np.ndarray, ids: list, weights,
                   truth_what: str = "test truth", event_threshold: float = 0.5) -> list:
    """Per recording its spectrogram and species tracks; per-species AP of `blend_scores`
    (per class) against `found` (ids, per-species truth); the blend weights."""
    out, mcfg = [], {**infos[0]["mcfg"], "sample_rate": prep.sample_rate}
    truth = dict(zip(found[0], found[1])) if found is not None else {}
    species, to_species = prep.species.columns, prep.species.to_species
    for rid in pic_ids:
        spec = plots.mel_db(prep.cache.get(rid), mcfg)
        names = [c for c, v in zip(species, truth[rid]) if v > 0] if rid in truth else None
        out.append(plots.recording_picture(
            run_dir / "pictures" / f"{rid}.png", spec, to_species(tracks[rid]),
            mcfg["hop_length"] / prep.sample_rate, species, mcfg["fmin"], mcfg["fmax"],
            cfg.top_species, names, event_threshold, title=f"{rid} ({cfg.blend} blend)"))
    if found is not None:
        order = {rid: i for i, rid in enumerate(ids)}
        ap = metrics.per_class_ap(found[1], to_species(blend_scores[[order[r] for r in found[0]]]))
        out.append(plots.bar_chart(run_dir / "pictures" / "species_ap.png", species, ap,
                                   f"per-species AP of the blend ({truth_what})", "AP", (0, 1.1)))
    out.append(plots.bar_chart(run_dir / "pictures" / "blend_weights.png",
                               [i["name"] for i in infos], weights, f"blend weights ({cfg.blend})",
                               "weight", (0, 1.1)))
    return [str(p.relative_to(run_dir)) for p in out]


# ----------------------------------------------------------------------------- main
def check_cfg(cfg: CFG) -> None:
    if cfg.blend not in blend.BLENDS:
        raise ConfigError(f"blend={cfg.blend!r}: choose one of {', '.join(blend.BLENDS)}")
    if cfg.prior_scaling not in PRIOR_MODES and not Path(cfg.prior_scaling).is_file():
        raise ConfigError(f"prior_scaling={cfg.prior_scaling!r}: use {', '.join(PRIOR_MODES)}, "
                          "or the path of a CSV with columns class,prior")
    if cfg.calibrate not in ("auto", "true", "false"):
        raise ConfigError(f"calibrate={cfg.calibrate!r}: choose auto, true or false")
    if cfg.prior_scaling != "none" and (cfg.calibrate == "false" or cfg.blend == "rank"):
        raise ConfigError(f"prior_scaling={cfg.prior_scaling!r} needs calibrated probabilities: "
                          "use --calibrate=auto|true and blend align or oof, or --prior_scaling=none")
    prior_term.check_setting(cfg.frequency_term)
    check_runtime(cfg.runtime)
    if cfg.test_audio_hours < 0:
        raise ConfigError("test_audio_hours must be >= 0 (0: this run's test recordings)")
    if not 0 <= cfg.event_threshold < 1 or cfg.oof_steps < 1:
        raise ConfigError("event_threshold must lie in [0, 1) (0: chosen on OOF recordings) "
                          "and oof_steps be >= 1")


def blend_test(cfg: CFG, infos: list, fitted: dict, classes: list) -> dict:
    """Blended test scores without (`plain`) and with (`scaled`) the correction for class
    frequencies (the frequency term fit_blend chose, or else the EM test prior), blended
    probabilities, and the facts (the estimated prior next to the training prior)."""
    weights = fitted["weights"]
    plain = blend.blend(cfg.blend, [i["test"] for i in infos], weights,
                        calibrated=fitted["calibrated"])
    out = {"plain": plain, "scaled": plain, "prior_applied": None, "prior_note": "off",
           "probs": blend.weighted_mean([metrics.sigmoid(i["test"]) for i in infos], weights)}
    if fitted["term"]["weight"]:
        out["scaled"] = prior_term.apply(plain, fitted["oof_truth"], fitted["term"]["weight"])
        out["prior_applied"] = True
        out["prior_note"] = "not applied: the frequency term is on"
        return out
    if cfg.prior_scaling == "none" or not len(plain) or "train_prior" not in fitted:
        return out
    train_prior = fitted["train_prior"]
    if cfg.prior_scaling in ("auto", "em"):
        test_prior = calibration.em_prior(metrics.sigmoid(plain), train_prior)
    else:
        test_prior = blend.load_priors(cfg.prior_scaling, classes)
    sim = fitted.get("shift_simulation", {})
    apply = cfg.prior_scaling != "auto" or bool(sim.get("apply"))
    out["scaled"] = calibration.shift_logits(plain, train_prior, test_prior) if apply else plain
    out["prior_applied"] = apply
    out["priors"] = pd.DataFrame({"class": classes, "train_prior": train_prior,
                                  "test_prior": test_prior})
    gain = sim.get("em_gain", float("nan"))
    out["prior_note"] = (f"{'applied' if apply else 'not applied'}; on skewed OOF resamples "
                         f"EM changed LWLRAP by {gain:+.4f}, prior error "
                         f"{sim.get('prior_error', float('nan')):.4f} vs "
                         f"{sim.get('prior_error_train', float('nan')):.4f} for the training prior")
    return out


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
    out = blend_test(cfg, infos, fitted, prep.classes)
    final = out["scaled"]
    if "priors" in out:
        runs.save_csv(run_dir / "priors.csv", out["priors"])
        top = out["priors"].sort_values("test_prior", ascending=False).head(8)
        print("test prior (EM) vs training prior, top species: " + ", ".join(
            f"{c} {t:.3f}/{p:.3f}" for c, t, p in zip(top["class"], top["test_prior"],
                                                      top["train_prior"])), flush=True)
        print(f"prior correction: {out['prior_note']}", flush=True)
    species = prep.species  # the submission's columns: max over each species' classes
    sample = blend.read_sample(Path(cfg.input_dir) / "sample_submission.csv", ids, species.columns)
    sub, filled = blend.make_submission(ids, species.to_species(final), species.columns, sample)
    blend.check_submission(sub, sample)
    runs.save_csv(run_dir / "submission.csv", sub)
    found = prep.test_truth(cfg.input_dir)
    rows = report_rows(cfg, infos, fitted, found, ids, out, species.to_species)
    facts = {**blend_facts(infos, fitted), "filled": filled, "prior_note": out["prior_note"]}
    if found is not None:
        facts["test_prevalence_baseline"] = metrics.prevalence_baseline(found[1])
    files = ["submission.csv", "report.md", "report.json"] + \
        [f"test_{i['name'].replace('/', '_')}.csv" for i in infos]
    if cfg.detect:
        facts["events"] = len(write_detections(cfg, run_dir, tracks, prep, grid))
        facts["event_rule"] = {k: v for k, v in grid["event_rule"].items() if k != "grid"}
        files += ["detections.csv", "raven/"] + \
            (["event_rule_oof.csv"] if "grid" in grid["event_rule"] else [])
    per_class, more, facts["event_f1"] = class_figures.write(
        run_dir, prep, found, ids, out["probs"], tracks, grid["hop_s"],
        infos[0]["mcfg"]["crop_seconds"], cfg.input_dir)
    files += more
    files += write_pictures(cfg, run_dir, prep, infos, tracks, ids[:max(cfg.n_pictures, 0)],
                            found, final, ids, fitted["weights"],
                            event_threshold=grid["event_rule"]["threshold"])
    save_report(cfg, run_dir, infos, fitted, rows, facts, per_class)
    return rows, facts, files


def save_report(cfg: CFG, run_dir: Path, infos: list, fitted: dict, rows: list, facts: dict,
                extra: str = "") -> None:
    runs.save_json(run_dir / "report.json", {"rows": rows, **facts, "blend": cfg.blend,
                                             "prior_scaling": cfg.prior_scaling,
                                             "weights": dict(zip([i["name"] for i in infos],
                                                                 fitted["weights"]))})
    runs.atomic_write(run_dir / "report.md",
                      lambda f: f.write(render_report(cfg, rows, facts) + extra))


def close_run(cfg: CFG, run_dir: Path, infos: list, fitted: dict, inputs: dict, files: list,
              rows: list, facts: dict, tic: float, extra: dict, extra_md: str = "") -> dict:
    """The summary of a run without per-recording test scores (no test recordings, or
    BirdCLEF segment rows): summary.json, the finished manifest, the stage report, printed."""
    summary = {"cv_lwlrap": fitted["cv_lwlrap"], **fitted["segment_f1"], **extra,
               "seconds": round(time.time() - tic, 1), "tag": run_dir.name,
               "calibrated": fitted["calibrated"],
               "weights": {i["name"]: float(w) for i, w in zip(infos, fitted["weights"])},
               "weaker_runs": facts["weaker"]}
    runs.update_summary(cfg.work_dir, "ensemble", summary)
    runs.write_manifest(run_dir, "ensemble", cfg_dict(cfg), inputs, files,
                        {**summary, "rows": rows}, finished=True)
    report.main(report.CFG(work_dir=cfg.work_dir))
    print(render_report(cfg, rows, facts) + extra_md)
    return summary


def finish_without_test(cfg: CFG, run_dir: Path, prep, preps: dict, infos: list, fitted: dict,
                        inputs: dict, tic: float, device) -> dict:
    """No test recordings: report, summary and pictures of held-out recordings from the OOF
    blend, one line saying why there is nothing to submit; no submission.csv."""
    why = heldout.no_test_reason(prep)
    weights = np.asarray(fitted["weights"]) / np.sum(fitted["weights"])
    pic_ids = heldout.pick_recordings(infos, cfg.n_pictures)
    tracks = heldout.heldout_tracks(infos, prep, preps, pic_ids, weights,
                                    infos[0]["mcfg"]["hop_length"], device)
    found = fitted["oof_found"]
    files = ["report.md", "report.json"] + write_pictures(
        cfg, run_dir, prep, infos, tracks, pic_ids, found, fitted["blended"], fitted["common"],
        fitted["weights"], truth_what="OOF recordings, TP labels")
    rows = report_rows(cfg, infos, fitted, None, [], {})
    facts = {**blend_facts(infos, fitted), "filled": [], "no_test": why}
    save_report(cfg, run_dir, infos, fitted, rows, facts)
    summary = close_run(cfg, run_dir, infos, fitted, inputs, files, rows, facts, tic,
                        {"submission": None, "nothing_to_submit": why})
    scape = f", soundscape F1 {summary['soundscape_f1']:.4f}" if "soundscape_f1" in summary else ""
    what = f"{len(infos)} runs" if len(infos) > 1 else "1 run"
    print(f"nothing to submit: {why}; blended {what} on their OOF predictions (CV "
          f"LWLRAP {fitted['cv_lwlrap']:.4f}{scape}), no submission.csv -> {run_dir / 'report.md'}",
          flush=True)
    return {"summary": summary, "rows": rows, "run_dir": run_dir}


def finish_with_segments(cfg: CFG, run_dir: Path, prep, preps: dict, infos: list, fitted: dict,
                         inputs: dict, tic: float, device) -> dict:
    """BirdCLEF test soundscapes: submission.csv with a row per 5 s segment
    (common/segment_submission.py); report, summary and pictures of held-out clips."""
    weights = np.asarray(fitted["weights"]) / np.sum(fitted["weights"])
    clock = InferenceClock(runtime_label(cfg.runtime))
    sub = segment_submission.write(run_dir, prep, preps, infos, weights, fitted["segment_f1"],
                                   cfg.input_dir, cfg.infer_batch, inference_device(cfg, device),
                                   cfg.runtime, clock)
    speed = infer_speed(cfg, clock, infos, prep)
    pic_ids = heldout.pick_recordings(infos, cfg.n_pictures)
    tracks = heldout.heldout_tracks(infos, prep, preps, pic_ids, weights,
                                    infos[0]["mcfg"]["hop_length"], device)
    found = fitted["oof_found"]
    files = ["submission.csv", "test_segments_pred.csv", "report.md", "report.json"] + \
        write_pictures(cfg, run_dir, prep, infos, tracks, pic_ids, found, fitted["blended"],
                       fitted["common"], fitted["weights"], "OOF recordings, TP labels")
    rows = report_rows(cfg, infos, fitted, None, [], {})
    facts = {**blend_facts(infos, fitted), "filled": [], "submission": sub}
    save_report(cfg, run_dir, infos, fitted, rows, facts, segment_submission.report_md(sub))
    summary = close_run(cfg, run_dir, infos, fitted, inputs, files, rows, facts, tic,
                        {"submission": str(run_dir / "submission.csv"),
                         "submission_kind": sub["kind"], "threshold": sub["threshold"],
                         "infer_speed": speed, **sub["test"]}, segment_submission.report_md(sub))
    runs.drop_partials(run_dir)
    print(f"submission {run_dir / 'submission.csv'}\nreport     {run_dir / 'report.md'}",
          flush=True)
    return {"summary": summary, "rows": rows, "run_dir": run_dir}


def inference_device(cfg: CFG, device):
    """The test inference's device: onnxruntime and OpenVINO run on the CPU whatever
    --device says."""
    if cfg.runtime != "torch" and device.type != "cpu":
        print(f"runtime {cfg.runtime}: test inference on the CPU (device {device} for the rest)", flush=True)
        return torch.device("cpu")
    return device


def infer_speed(cfg: CFG, clock: InferenceClock, infos: list, prep) -> dict:
    """Seconds per hour of test audio and the projected test-set time, printed."""
    seconds = sum(prep.cache.length(r) for r in prep.ids("test")) / prep.sample_rate
    figures = clock.figures(sum(len(i["folds"]) for i in infos), seconds, cfg.test_audio_hours)
    print(speed_line(figures), flush=True)
    return figures


def main(cfg: CFG) -> dict:
    tic = time.time()
    check_cfg(cfg)
    device = resolve_device(cfg.device)
    infos, prep, preps = load_inputs(cfg)
    fitted = fit_blend(cfg, infos, prep)
    fitted["segment_f1"] = {k: v for name in ("local", "soundscape") for k, v in
                            heldout.blended_segment_f1(infos, fitted["weights"], prep, name).items()}
    inputs = {"runs": [i["name"] for i in infos],
              "preprocess": sorted({i["preprocess"] for i in infos})}
    run_dir, resumed = runs.begin_run(cfg.work_dir, "ensemble", cfg_dict(cfg), inputs, cfg.tag,
                                      cfg.resume, cfg.fresh)
    ids = prep.ids("test")
    if ids and segment_submission.applies(prep):  # BirdCLEF test soundscapes: 5 s segment rows
        print(f"ensemble {run_dir.name}: {len(infos)} runs, {len(ids)} test soundscapes, blend "
              f"{cfg.blend}, weights {np.round(fitted['weights'], 3).tolist()}", flush=True)
        return finish_with_segments(cfg, run_dir, prep, preps, infos, fitted, inputs, tic, device)
    keep = ids if cfg.detect else ids[:max(cfg.n_pictures, 0)]
    hop = infos[0]["mcfg"]["hop_length"]  # frame tracks live on the first run's frame grid
    grid = {"hop_s": hop / prep.sample_rate,
            "n": {r: frame_count(prep.cache.length(r), hop) for r in keep}}
    scored = scored_so_far(run_dir, ids, {r: np.zeros((grid["n"][r], len(prep.classes)),
                                                      np.float32) for r in keep}, len(prep.classes))
    kept = f"; test scores kept: {', '.join(scored['logits']) or 'none'}" if resumed else ""
    print(f"ensemble {run_dir.name}{' (resumed)' if resumed else ''}: {len(infos)} runs, "
          f"{len(ids)} test recordings, blend {cfg.blend}, weights "
          f"{np.round(fitted['weights'], 3).tolist()}{kept}", flush=True)
    if not ids:
        return finish_without_test(cfg, run_dir, prep, preps, infos, fitted, inputs, tic, device)
    run_weights = np.asarray(fitted["weights"]) / np.sum(fitted["weights"])
    grid["event_rule"] = event_rule_of(cfg, infos, prep, preps, run_weights, hop, device)
    clock, on = InferenceClock(runtime_label(cfg.runtime)), inference_device(cfg, device)
    for info, w in zip(infos, run_weights):
        info["test"] = infer_run(cfg, info, get_prep(cfg, preps, info["preprocess"]), ids,
                                 scored, grid, w, on, run_dir, clock)
        runs.save_csv(run_dir / f"test_{info['name'].replace('/', '_')}.csv",
                      stage.score_frame(ids, info["test"], prep.classes))
    speed = infer_speed(cfg, clock, infos, prep)
    rows, facts, files = write_outputs(cfg, run_dir, prep, infos, fitted, scored["tracks"], grid)
    for line in facts["weaker"]:
        print(f"NOTE: weaker than the best run on CV: {line}", flush=True)
    summary = {"cv_lwlrap": fitted["cv_lwlrap"], **fitted["segment_f1"],
               "submission": str(run_dir / "submission.csv"),
               "seconds": round(time.time() - tic, 1), "tag": run_dir.name,
               "calibrated": fitted["calibrated"], "prior": facts["prior_note"],
               "frequency_term": facts["frequency_term"],
               "weights": {i["name"]: float(w) for i, w in zip(infos, fitted["weights"])},
               "weaker_runs": facts["weaker"], "infer_speed": speed}
    if facts.get("event_f1"):
        summary["event_f1"] = facts["event_f1"]
    if facts.get("event_rule"):
        summary["event_rule"] = facts["event_rule"]
    if "test_lwlrap" in rows[-1]:  # the submission's score (with prior scaling when on)
        summary["test_lwlrap"] = rows[-1].get("test_lwlrap_prior", rows[-1]["test_lwlrap"])
        summary["test_lwlrap_no_prior"] = rows[-1]["test_lwlrap"]
    runs.update_summary(cfg.work_dir, "ensemble", summary)
    runs.write_manifest(run_dir, "ensemble", cfg_dict(cfg), inputs, files,
                        {**summary, "rows": rows}, finished=True)
    runs.drop_partials(run_dir)
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
