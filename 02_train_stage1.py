"""Stage 1: SED pre-training on TP annotations (LSEP or BCE), one model per fold.

Reads  WORK_DIR/preprocess/<tag>/ (the latest finished run unless --preprocess=<tag>).
Writes WORK_DIR/stage1/<tag>/: fold{k}.pth (self-describing checkpoints), oof.csv
       (recording x species logits of the best epoch), test_pred.csv, history.csv,
       curves.png, metrics.json, manifest.json; a row of WORK_DIR/experiments.csv/.md;
       stage1.* figures in WORK_DIR/summary.json.

Whole-clip labels (label_unit "clips" in classes.json): validated by local F1 (5 s segments
of the validation clips) and scored by soundscape F1 on the held-out labelled soundscapes
(BirdCLEF 2021 row-wise F1).

Examples:
    python 02_train_stage1.py                                  # recipe: b2, 10 s, 128 mels, 30 ep
    python 02_train_stage1.py --cfg_file=profiles/demo.json    # the CPU demo profile
    python 02_train_stage1.py --folds=0 --epochs=2 --backbone=resnet18 --loss=bce   # quick
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from common import auto_frontend, bands, dist, paths, runs, stage
from common.cli import cfg_dict, run
from common.data import CropDataset, cap_per_class, clip_anchors, split_fold
from common.losses import frame_loss, get_loss
from common.noise import input_mixup
from common.prepared import load_prepared
from common.sed import build_model, to_device


@dataclass
class CFG:
    input_dir: str = field(default_factory=paths.default_input_dir)  # for test_truth.csv (demo)
    work_dir: str = field(default_factory=paths.default_work_dir)
    preprocess: str = "latest"     # preprocessing run tag
    tag: str = ""                  # this run's tag; default: a timestamp
    resume: str = ""               # tag of a crashed run to continue; "" = the newest one of this config
    fresh: bool = False            # true: a new run even when a crashed one of this config exists
    memo: str = ""                 # free text for the experiments table
    # model
    backbone: str = "tf_efficientnet_b2"  # any timm name, or the kit's cnn14 | cnn10 | wavenet
    in_chans: int = 3              # 1, or 3 (the mel image repeated, as ImageNet weights expect)
    pretrained_path: str = ""      # local backbone weights (nothing is downloaded)
    dropout: float = 0.5           # before and after the per-frame Linear
    # front end (crop_seconds, n_fft, hop_length, fmax 0 or fmin -1: from the data, see
    # common/auto_frontend.py)
    crop_seconds: float = 10.0     # training crop and inference window, s
    n_fft: int = 2048
    hop_length: int = 512          # samples; frames = crop * sr / hop + 1
    n_mels: int = 128
    fmin: float = 80.0             # Hz
    fmax: float = 15000.0          # Hz
    image_size: str = "224x400"    # resize the mel image to MELSxFRAMES; "" = no resize
    freq_coord: bool = False       # extra input channel: mel-bin index 0..1 (2nd place RFCx)
    band_head: bool = False        # per-class frequency band head: each class pools the encoder's
                                   # frequency rows by its band (the fold's training TP boxes,
                                   # common/bands.py) instead of their mean; off = the recipe
    spec_masks: int = 0            # SpecAugment: time and frequency masks per example (0 = off)
    noise_white: float = 0.0       # probability of adding white noise to a training wave
    noise_pink: float = 0.0        # ... pink noise (-3 dB/octave)
    noise_brown: float = 0.0       # ... brown noise (-6 dB/octave)
    noise_snr_min: float = 5.0     # dB, range of the random signal-to-noise ratio
    noise_snr_max: float = 30.0    # dB
    mixup: float = 0.0             # input mixup on the waveform, Beta(a, a); labels united; 0 = off
    # training
    loss: str = "lsep"             # lsep | bce
    w_frame: float = 0.0           # weight of the frame loss on the TP/FP boxes (masked BCE on
                                   # the frame logits; 0 = off; not for clip labels)
    epochs: int = 30
    batch_size: int = 20
    lr: float = 1e-3               # Adam
    t_max: int = 10                # CosineAnnealingLR period, epochs
    crops_per_row: int = 1         # crops drawn per TP row per epoch (at least)
    min_epoch_steps: int = 0       # floor on optimizer steps per epoch: rows are drawn more
                                   # often when the data is small (0 = off, the recipe)
    min_overlap: float = 0.5       # s of an event inside a crop for it to label the crop
    max_per_class: int = 0         # data ablation: training recordings per class at most; 0 = all
    clip_chunks: int = 4           # BirdCLEF: anchors per clip, spread over it (x crops_per_row)
    folds: list[int] = field(default_factory=list)  # [] = every fold; e.g. --folds=0,2
    val_stride_seconds: float = 0.0  # sliding-window stride for whole recordings; 0 = crop
    infer_stride_seconds: float = 0.0  # stride of the best epoch's OOF and test scores; 0 = val
    val_from: int = 0              # first epoch validated; earlier ones are skipped (time)
    infer_batch: int = 64
    num_workers: int = -1          # DataLoader processes; -1 = auto (0 on CPU, up to 4 on a GPU)
    device: str = "auto"           # auto | cpu | cuda | cuda:1
    amp: str = "none"              # none | bf16 | fp16 | auto (bf16 where native; common/precision.py)
    seed: int = 42


def stage1_targets(labels: torch.Tensor) -> torch.Tensor:
    """Stage 1 learns from TP only: +1 -> 1, everything else (FP, unknown) -> 0."""
    return (labels > 0).float()


def crops_per_row(cfg: CFG, n_rows: int, fold: int) -> int:
    """crops_per_row, raised so that an epoch has at least min_epoch_steps batches: 200 and
    5,000 TP rows both get enough optimizer steps over the same number of epochs."""
    need = math.ceil(cfg.min_epoch_steps * cfg.batch_size / max(n_rows, 1))
    if need > cfg.crops_per_row:
        print(f"fold {fold}: {n_rows} anchor rows, {need} crops per row per epoch "
              f"(min_epoch_steps={cfg.min_epoch_steps} at batch {cfg.batch_size})", flush=True)
    return max(cfg.crops_per_row, need)


def make_fold(cfg: CFG, prep, fold: int, mcfg: dict, device):
    train_ids, _ = split_fold(prep.folds, fold)
    ann = prep.annotations
    rows = ann[(ann["label"] > 0) & ann["recording_id"].isin(train_ids)]
    if prep.clips:  # anchors: the primary-label clips (secondary rows label only)
        rows = rows[rows["source"] == "primary"]
    rows = cap_per_class(rows, cfg.max_per_class, cfg.seed + fold)
    if prep.clips:
        rows = clip_anchors(rows, cfg.crop_seconds, cfg.clip_chunks)
    rows = rows.loc[rows.index.repeat(crops_per_row(cfg, len(rows), fold))]
    stage.seed_everything(cfg.seed + fold)
    trained_on = set(rows["recording_id"])
    mcfg = bands.for_fold(mcfg, ann, prep.classes, trained_on, fold)  # band_head: this fold's
    model = to_device(build_model(mcfg, cfg.pretrained_path), device)
    n_frames = stage.frame_targets(cfg.w_frame, cfg.crop_seconds, prep, model)
    dataset = CropDataset(rows, ann[ann["label"] > 0], prep.cache, prep.classes, prep.sample_rate,
                          cfg.crop_seconds, prep.durations, seed=cfg.seed + fold,
                          min_overlap=cfg.min_overlap, n_frames=n_frames,
                          frame_events=ann[ann["recording_id"].isin(train_ids)])
    loss_fn = get_loss(cfg.loss)

    def make_loader(epoch):
        dataset.set_epoch(epoch)
        gen = torch.Generator().manual_seed(cfg.seed * 1000 + fold * 100 + epoch)
        # a 1-example last batch breaks BatchNorm (SE blocks)
        return dist.shuffled_loader(dataset, cfg.batch_size, gen, device, cfg.num_workers,
                                    drop_last=len(dataset) % cfg.batch_size == 1)

    def step(model, batch):
        wave, targets = batch[0], stage1_targets(batch[1])
        frames = batch[2] if n_frames else None
        if cfg.mixup > 0:
            wave, targets, *frames = input_mixup(wave, targets, cfg.mixup, frames)
            frames = frames[0] if frames else None
        out = model(wave)
        loss = loss_fn(out["clip_logit"].float(), targets)
        if n_frames:
            loss = loss + cfg.w_frame * frame_loss(out["frame_logit"].float(), frames)
        return loss

    return model, make_loader, step, trained_on


def main(cfg: CFG) -> dict:
    tic = time.time()
    device = dist.setup(cfg.device)  # under torchrun: joins the process group, one GPU per rank
    prep = load_prepared(cfg.work_dir, cfg.preprocess)
    auto_frontend.follow_data(cfg, prep)
    mcfg = stage.model_cfg(cfg, prep.classes, prep.sample_rate)
    stage.check_crop(cfg.crop_seconds, prep)
    get_loss(cfg.loss)
    folds = stage.fold_list(cfg.folds, int(prep.folds["fold"].max()) + 1)
    inputs = {"preprocess": prep.run_dir.name}
    run_dir, resumed = dist.from_main(lambda: runs.begin_run(
        cfg.work_dir, "stage1", cfg_dict(cfg), inputs, cfg.tag, cfg.resume, cfg.fresh))
    print(f"stage1 {run_dir.name}{' (resumed)' if resumed else ''}: {mcfg['backbone']} "
          f"{stage.resolution(mcfg)} on {device}, folds {folds}", flush=True)
    results = stage.train_folds(cfg, prep, folds, run_dir, device,
                                lambda fold: make_fold(cfg, prep, fold, mcfg, device))
    if not dist.is_main():
        return {}  # rank 0 scores the test set and writes every artifact
    out = stage.finish_run(cfg, prep, "stage1", run_dir, results, mcfg, inputs, device, tic, cfg.loss)
    line = f"stage1 CV LWLRAP {out['cv_lwlrap']:.4f}  CV F1@0.5 {out['cv_f1']:.4f}"
    if "test_lwlrap" in out:
        line += (f"  | demo test LWLRAP {out['test_lwlrap']:.4f} (prevalence baseline "
                 f"{out['test_prevalence_baseline']:.4f})")
    if "cv_lwlrap_calibrated" in out:
        line += (f"  | calibrated: CV {out['cv_lwlrap_calibrated']:.4f}"
                 + (f" test {out['test_lwlrap_calibrated']:.4f}" if "test_lwlrap_calibrated" in out else ""))
    if "local_f1" in out:
        line += (f"  | local F1 {out['local_f1']:.4f}  ROC-AUC {out['local_roc_auc']:.4f}  "
                 f"padded cmAP {out['local_cmap']:.4f}"
                 + (f"  soundscape F1 {out['soundscape_f1']:.4f}" if "soundscape_f1" in out else ""))
    print(f"{line}  [{out['seconds']:.0f}s] -> {run_dir}", flush=True)
    return out


if __name__ == "__main__":
    run(main, CFG, "stage1")
