"""What every training stage does around its loss: folds, validation, OOF, test scores,
and the artifacts (checkpoints, oof.csv, test_pred.csv, history, metrics, experiments row).

A stage script supplies, per fold, a model, a loader factory and a step function; this
module runs the shared loop (common.train.fit) for each fold and scores the run.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from common import calibration, dist, metrics, runs, segments
from common.backbones import match_backbone_weights
from common.cli import ConfigError, cfg_dict
from common.data import split_fold
from common.infer import predict_recordings
from common.sed import build_model, load_checkpoint, save_checkpoint
from common.train import fit, save_history

MODEL_FIELDS = ("backbone", "in_chans", "n_fft", "hop_length", "n_mels", "fmin", "fmax",
                "dropout", "crop_seconds", "freq_coord", "spec_masks", "band_head", "noise_white",
                "noise_pink", "noise_brown", "noise_snr_min", "noise_snr_max")


def frame_targets(w_frame: float, crop_seconds: float, prep, model) -> int:
    """Frames of the frame loss's targets (the model's frame grid for one training crop),
    0 when the loss is off. Clip labels (BirdCLEF) carry no call times: never for them."""
    if w_frame <= 0:
        return 0
    if prep.clips:
        print("w_frame: clip labels carry no call times; the frame loss is off", flush=True)
        return 0
    return model.frames(int(round(crop_seconds * prep.sample_rate)))


def parse_size(text: str) -> tuple[int, int] | None:
    """'224x400' -> (224, 400) (mels x frames); '' -> None (no resize)."""
    if not text:
        return None
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ConfigError(f"image_size={text!r}: write it as MELSxFRAMES, e.g. 224x400") from None
    return h, w


def model_cfg(cfg, classes: list, sample_rate: int) -> dict:
    out = {k: getattr(cfg, k) for k in MODEL_FIELDS}
    out.update(n_classes=len(classes), sample_rate=sample_rate, image_size=parse_size(cfg.image_size))
    if out["fmax"] > sample_rate / 2:
        raise ConfigError(f"fmax={cfg.fmax} Hz is above half the cache's sample rate "
                          f"({sample_rate} Hz); lower fmax or preprocess at a higher rate")
    weights = getattr(cfg, "pretrained_path", "")
    if weights and not Path(weights).is_file():
        raise ConfigError(f"pretrained_path {weights} does not exist; give a local weights file")
    try:  # a dry build on the meta device (no memory, no time): bad settings fail before a run starts
        with torch.device("meta"):
            dry = build_model(out)
    except ValueError as err:  # ConfigError included: unknown backbone, n_mels > STFT bins, ...
        raise ConfigError(f"model settings: {err}") from None
    if weights:  # a weights file that fits less than half of the backbone stops here, too
        target = getattr(dry.backbone, "vit", dry.backbone)  # a ViT loads before its wrapper
        chans = out["in_chans"] + bool(out["freq_coord"])
        match_backbone_weights(target.state_dict(), weights, chans, out["backbone"])
    return out


def check_crop(crop_seconds: float, prep) -> None:
    """A crop longer than every training recording is a configuration mistake; longer than
    some of them is fine (their crops are zero-padded), but said."""
    durations = prep.recordings.loc[prep.recordings["split"] == "train", "duration"]
    if len(durations) and crop_seconds > durations.max() + 1e-6:
        raise ConfigError(f"crop_seconds={crop_seconds} is longer than every training recording "
                          f"(the longest is {durations.max():.2f} s); lower crop_seconds")
    short = int((durations < crop_seconds - 1e-6).sum())
    if short:
        print(f"WARNING: {short} of {len(durations)} training recordings are shorter than "
              f"crop_seconds={crop_seconds}; their crops are zero-padded", flush=True)


def resolution(mcfg: dict) -> str:
    """'mels x frames' of the backbone input, as in the seed's tables."""
    if mcfg.get("image_size"):
        return "{}x{}".format(*mcfg["image_size"])
    frames = int(round(mcfg["crop_seconds"] * mcfg["sample_rate"])) // mcfg["hop_length"] + 1
    return f"{mcfg['n_mels']}x{frames}"


def fold_list(folds: list, n_folds: int) -> list[int]:
    chosen = list(folds) if folds else list(range(n_folds))
    bad = [f for f in chosen if f not in range(n_folds)]
    if bad:
        raise ConfigError(f"folds {bad} do not exist; the preprocessing run has folds 0..{n_folds - 1}")
    return chosen


def windows(cfg, sample_rate: int, final: bool = False) -> tuple[int, int]:
    """(window, stride) in samples for whole-recording scoring: the validation stride while
    training (per epoch, so cheap), the `infer_stride_seconds` for the best epoch's OOF and
    test scores (`final`; denser windows catch calls cut by a window edge)."""
    window = int(round(cfg.crop_seconds * sample_rate))
    seconds = cfg.val_stride_seconds or cfg.crop_seconds
    if final:
        seconds = getattr(cfg, "infer_stride_seconds", 0.0) or seconds
    return window, int(round(seconds * sample_rate))


def run_fold(cfg, prep, fold: int, model, make_loader, step, run_dir: Path, device,
             trained_on: set) -> dict:
    """Train one fold; returns its history, best row and the OOF scores of the best epoch.
    `trained_on` (the recordings the fold's training crops come from) is recorded in
    trained_on.csv, so pseudo labelling can use only models that never saw a recording."""
    _, val = split_fold(prep.folds, fold)
    val_ids = sorted(val)
    to_species = prep.species.to_species  # scored per species, as submitted (common/species.py)
    truth = to_species(prep.tp_matrix(val_ids))
    window, stride = windows(cfg, prep.sample_rate)
    holder = {}
    seg = segments.for_validation(prep, val_ids, cfg.crop_seconds)  # BirdCLEF: 5 s segments
    select = "val_local_f1" if seg is not None else "val_lwlrap"

    def validate(m):
        if seg is not None:  # recording scores from the segments' logits: one pass
            holder["last_seg"] = seg.logits(m, prep.cache, cfg.infer_batch, device)
            scores = seg.per_recording(holder["last_seg"])
        else:
            scores = dist.map_split(lambda ids: predict_recordings(  # ranks split the recordings
                m, prep.cache, ids, window, stride, cfg.infer_batch, device), val_ids)
        holder["last"] = scores
        local = {"val_local_f1": seg.f1(holder["last_seg"])} if seg is not None else {}
        scores = to_species(scores)
        return {"val_lwlrap": metrics.lwlrap(truth, scores),
                "val_f1": metrics.f1_at(truth, metrics.sigmoid(scores))["f1"], **local}

    def save_best(m, row):
        holder["best"], holder["best_seg"] = holder["last"], holder.get("last_seg")
        if dist.is_main():
            save_checkpoint(run_dir / f"fold{fold}.pth", m, {"fold": fold, "epoch": row["epoch"],
                                                             "val_lwlrap": row["val_lwlrap"]})

    if set(trained_on) & set(val_ids):
        raise RuntimeError(f"fold {fold}: a validation recording is in its training data")
    history, best = fit(model, make_loader, step, validate, epochs=cfg.epochs, lr=cfg.lr,
                        t_max=cfg.t_max, device=device, metric=select, ckpt_fn=save_best,
                        amp=cfg.amp, desc=f"fold {fold}", state_path=fold_state(run_dir, fold),
                        extra=holder, val_from=int(getattr(cfg, "val_from", 0)))
    history.insert(0, "fold", fold)
    final = windows(cfg, prep.sample_rate, final=True)[1]
    if seg is None and final != stride:  # the best epoch's OOF scores at the denser stride
        dist.barrier()  # rank 0 has written the best checkpoint
        best_model, _ = load_checkpoint(run_dir / f"fold{fold}.pth", device)
        holder["best"] = dist.map_split(lambda ids: predict_recordings(
            best_model, prep.cache, ids, window, final, cfg.infer_batch, device), val_ids)
    result = {"history": history, "best": best, "val_ids": val_ids, "oof": holder["best"],
              "seg_logits": holder.get("best_seg"), "trained_on": sorted(trained_on)}
    # the fold's training state gives way to its result: a re-run skips the fold
    if dist.is_main():
        runs.save_partial(fold_state(run_dir, fold), result)
    dist.barrier()
    return result


def fold_state(run_dir: Path, fold: int) -> Path:
    """Per-fold resume file: the training state after each epoch, the result once done."""
    return Path(run_dir) / f"fold{fold}.state.pth"


def finished_fold(run_dir: Path, fold: int) -> dict | None:
    """The stored result of a fold a crashed run already finished (see run_fold), else None."""
    path = fold_state(run_dir, fold)
    result = runs.load_partial(path)
    if result is not None:
        print(f"fold {fold}: finished before the restart, result loaded from {path}", flush=True)
    return result


def train_folds(cfg, prep, folds: list[int], run_dir: Path, device, make_fold) -> list[dict]:
    """run_fold for each fold; a fold that a crashed run already finished is loaded, not
    trained again. make_fold(fold) -> (model, make_loader, step, trained_on)."""
    results = []
    for fold in folds:
        result = finished_fold(run_dir, fold)
        if result is None:
            model, make_loader, step, trained_on = make_fold(fold)
            result = run_fold(cfg, prep, fold, model, make_loader, step, run_dir, device, trained_on)
        results.append(result)
    return results


def predict_test(run_dir: Path, folds: list[int], prep, cfg, device,
                 weights: dict | None = None) -> tuple[list, np.ndarray]:
    """Test scores: each fold's best checkpoint, max over windows, mean over folds weighted
    by each fold's validation LWLRAP (the recipe's fold blend)."""
    ids = prep.ids("test")
    window, stride = windows(cfg, prep.sample_rate, final=True)
    total, weight_sum = 0.0, 0.0
    for fold in folds:
        model, ckpt = load_checkpoint(run_dir / f"fold{fold}.pth", device)
        w = (weights or {}).get(fold, ckpt.get("val_lwlrap", 1.0))
        total = total + w * predict_recordings(model, prep.cache, ids, window, stride,
                                               cfg.infer_batch, device)
        weight_sum += w
    return ids, total / weight_sum


def score_frame(ids: list, scores: np.ndarray, classes: list) -> pd.DataFrame:
    frame = pd.DataFrame(scores, columns=classes)
    frame.insert(0, "recording_id", ids)
    return frame


def finish_run(cfg, prep, stage: str, run_dir: Path, fold_results: list, mcfg: dict,
               inputs: dict, device, tic: float, loss_name: str) -> dict:
    """Write oof.csv, test_pred.csv, history, metrics.json, the experiments row, summary and
    the finished manifest; returns the metrics."""
    folds = [r["history"]["fold"].iloc[0] for r in fold_results]
    oof_ids = [rid for r in fold_results for rid in r["val_ids"]]
    oof = np.concatenate([r["oof"] for r in fold_results])
    truth = prep.tp_matrix(oof_ids)  # per class: what the calibration fits
    to_species = prep.species.to_species  # every figure is per species (common/species.py)
    species_truth = to_species(truth)
    runs.save_csv(run_dir / "oof.csv", score_frame(oof_ids, oof, prep.classes))
    runs.save_csv(run_dir / "trained_on.csv", pd.DataFrame(
        [(int(f), rid) for f, r in zip(folds, fold_results) for rid in r["trained_on"]],
        columns=["fold", "recording_id"]))
    history = pd.concat([r["history"] for r in fold_results], ignore_index=True)
    save_history(history, run_dir, "val_lwlrap")
    result = {"cv_lwlrap": metrics.lwlrap(species_truth, to_species(oof)),
              "cv_f1": metrics.f1_at(species_truth, metrics.sigmoid(to_species(oof)))["f1"],
              "fold_lwlrap": {int(r["history"]["fold"].iloc[0]): r["best"]["val_lwlrap"]
                              for r in fold_results},
              "folds": [int(f) for f in folds]}
    if not prep.species.identity:  # the same OOF scores ranked over the model's classes
        result["cv_lwlrap_classes"] = metrics.lwlrap(truth, oof)
        print(f"{stage}: CV LWLRAP {result['cv_lwlrap_classes']:.4f} over the "
              f"{len(prep.classes)} classes, {result['cv_lwlrap']:.4f} over the "
              f"{len(prep.species.columns)} species (max over song types; the figure reported)",
              flush=True)
    if prep.clips:  # local F1 and soundscape F1 (BirdCLEF 2021 rule)
        result.update(segments.score_run(run_dir, fold_results, prep, cfg, device, lambda f:
                                         load_checkpoint(run_dir / f"fold{f}.pth", device)[0]))
    ids, test = predict_test(run_dir, folds, prep, cfg, device) if prep.ids("test") else \
        ([], np.zeros((0, len(prep.classes))))  # clips + labelled soundscapes: no test split
    runs.save_csv(run_dir / "test_pred.csv", score_frame(ids, test, prep.classes))
    # scores comparable across classes (common/calibration.py): CV with each fold calibrated
    # on the others, test with the calibrator of all OOF recordings (what 05 submits)
    fold_of = dict(zip(prep.folds["recording_id"], prep.folds["fold"]))
    if truth.any():
        result["cv_lwlrap_calibrated"] = metrics.lwlrap(species_truth, to_species(
            calibration.cross_fit(oof, truth, np.array([fold_of.get(r, -1) for r in oof_ids]))))
    found = prep.test_truth(cfg.input_dir)
    if found is not None:
        truth_ids, test_truth = found
        order = {rid: i for i, rid in enumerate(ids)}
        aligned = test[[order[r] for r in truth_ids]]
        result["test_lwlrap"] = metrics.lwlrap(test_truth, to_species(aligned))
        if truth.any():
            result["test_lwlrap_calibrated"] = metrics.lwlrap(
                test_truth, to_species(calibration.fit(oof, truth).apply(aligned)))
        result["test_prevalence_baseline"] = metrics.prevalence_baseline(test_truth)
        result["test_f1"] = metrics.f1_at(test_truth, metrics.sigmoid(to_species(aligned)))["f1"]
    result["seconds"] = round(time.time() - tic, 1)
    runs.save_json(run_dir / "metrics.json", result)
    runs.append_experiment(cfg.work_dir, {
        "run": run_dir.name, "stage": stage, "backbone": mcfg["backbone"],
        "resolution": resolution(mcfg), "batch_size": cfg.batch_size, "loss": loss_name,
        "cv_lwlrap": result["cv_lwlrap"], "cv_f1": result["cv_f1"],
        "test_lwlrap": result.get("test_lwlrap"),
        **{k: result[k] for k in ("local_f1", "soundscape_f1") if k in result},
        "memo": f"hop={mcfg['hop_length']} epochs={cfg.epochs} folds={len(folds)} "
                f"{segments.best_memo(result)}{cfg.memo}".strip()})
    summary = {k: result[k] for k in ("cv_lwlrap", "cv_f1", "test_lwlrap", "local_f1", "soundscape_f1",
                                      "local_roc_auc", "local_cmap",
                                      "cv_lwlrap_calibrated", "test_lwlrap_calibrated",
                                      "cv_lwlrap_classes",
                                      "test_prevalence_baseline", "seconds") if k in result}
    runs.update_summary(cfg.work_dir, stage, {**summary, "tag": run_dir.name})
    runs.write_manifest(run_dir, stage, cfg_dict(cfg), inputs,
                        [f"fold{f}.pth" for f in folds] + ["oof.csv", "test_pred.csv", "trained_on.csv",
                                                           "history.csv", "curves.png", "metrics.json"],
                        result, finished=True)
    return result


def open_run(work_dir, stage: str, tag: str):
    """An upstream training run: (run_dir, manifest, its preprocessing run, model_cfg of its
    first fold checkpoint, its folds)."""
    run_dir = runs.find_run(work_dir, stage, tag)
    manifest = runs.read_manifest(run_dir)
    from common.prepared import load_prepared
    prep = load_prepared(work_dir, manifest["inputs"]["preprocess"])
    folds = manifest["metrics"]["folds"]
    _, ckpt = load_checkpoint(run_dir / f"fold{folds[0]}.pth")
    return run_dir, manifest, prep, ckpt["model_cfg"], folds


def seed_everything(seed: int) -> None:
    import random
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)
