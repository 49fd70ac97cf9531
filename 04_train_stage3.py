"""Stages 2 and 3: fine-tune each fold's model on TP + FP (+ pseudo) labels.

Stage 2 (`--stage=stage2`): TP/FP rows, positive + negative focal terms (weight 1 each), no
pseudo labels, no zero term, no mixup; its models make the pseudo labels (03_pseudo_label.py).
Stage 3 (default): TP/FP rows plus pseudo windows (a pseudo positive turns an FP entry
unknown and an unknown one +1; a pseudo negative only marks unknown entries -1),
2 x positive focal + negative focal + zero term (BCE against 0.45 on unknown entries),
last-layer mixup. `--neg_focal=false` makes the negative term plain BCE. Soft pseudo rows
(03 --soft, unlabeled soundscapes: a target in [0, 1] per class) anchor exact crops of their
window in the TP stream like pseudo positives and add w_soft x BCE(z, target) on their
entries (common/soft_labels.py). Both use the TwoStream sampler (8 TP + 8 FP rows per
batch) for 5 epochs.
`--w_rank` (off in the recipe, on in the demo profile) adds stage 1's LSEP on the +1 entries,
so fine-tuning with the sigmoid terms keeps the within-crop ranking stage 1 learned.

Reads  the fold checkpoints of an earlier run (--init_from=stage1 --init=latest; a later
       pseudo-label round starts from --init_from=stage3), WORK_DIR/pseudo/<tag>/ (stage 3),
       and the preprocessing run the initial run used.
Writes WORK_DIR/<stage>/<tag>/ shaped like stage 1 (fold{k}.pth, oof.csv, test_pred.csv,
       history.csv, curves.png, metrics.json, trained_on.csv, manifest.json), a row of the
       experiments table and <stage>.* figures in summary.json.

Examples:
    python 04_train_stage3.py --stage=stage2 --cfg_file=profiles/demo.json
    python 04_train_stage3.py --cfg_file=profiles/demo.json            # stage 3, latest pseudo
    python 04_train_stage3.py --init_from=stage3 --pseudo=latest --memo="round 2"
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from common import bands, dist, paths, provenance, runs, soft_labels, stage
from common.cli import cfg_dict, run
from common.data import CropDataset, split_fold
from common.losses import frame_loss, masked_focal_loss
from common.sampling import TwoStreamSampler
from common.sed import build_model, load_checkpoint, to_device

# stage 2: no pseudo labels, no zero term, no mixup; positive weight 1 (the seed's focal
# loss with alpha 1; the weight 2 belongs to stage 3)
STAGE2_DEFAULTS = {"pseudo": "", "w_zero": 0.0, "mixup": False, "w_pos": 1.0}


@dataclass
class CFG:
    input_dir: str = field(default_factory=paths.default_input_dir)  # for test_truth.csv (demo)
    work_dir: str = field(default_factory=paths.default_work_dir)
    stage: str = "stage3"          # stage3 | stage2 (stage2 switches pseudo, zero term, mixup off)
    init_from: str = "stage1"      # stage whose fold checkpoints we start from
    init: str = "latest"           # that run's tag
    pseudo: str = "latest"         # pseudo-label run tag; "" = no pseudo labels
    tag: str = ""
    resume: str = ""               # tag of a crashed run to continue; "" = the newest one of this config
    fresh: bool = False            # true: a new run even when a crashed one of this config exists
    memo: str = ""
    # sampler
    tp_per_batch: int = 8          # TP-stream rows per batch (TP rows, plus pseudo windows)
    fp_per_batch: int = 8          # FP rows per batch
    pseudo_in_tp_stream: bool = True  # pseudo-positive windows also anchor crops
    real_tp_share: float = 0.5     # share of the TP stream that stays real TP rows when pseudo
                                   # windows join it (2nd place: real crops half of the time)
    pseudo_overlap: float = 0.5    # a pseudo window labels a crop it covers this share of
    # loss (common.losses.masked_focal_loss)
    gamma: float = 2.0             # focal exponent of the positive (and negative) term
    neg_focal: bool = True         # negative term BCE(z, 0) * p^gamma (focal, the seed's);
                                   # false: plain BCE(z, 0) on the -1 entries
    w_pos: float = 2.0             # stage 3 (recipe); stage 2 defaults to 1.0
    w_neg: float = 1.0
    w_zero: float = 1.0            # unknown entries; 0 turns the term off (stage 2)
    zero_target: float = -1.0      # "zero label smoothing" target of the unknown entries;
                                   # -1 = from the labels: 0.45 for timed events, 0 for clips
    w_rank: float = 0.0            # + w_rank * LSEP (+1 above the rest): keeps stage 1's ranking
    w_soft: float = 1.0            # + w_soft * BCE(z, target) on the soft pseudo entries
    w_frame: float = 0.0           # + w_frame * masked frame BCE on the TP/FP boxes (pseudo
                                   # windows give no frame targets); 0 = off
    mixup: bool = True             # last-layer mixup on the encoder feature map
    mixup_alpha: float = 1.0       # lambda ~ Beta(alpha, alpha)
    mix_negative: bool = False     # also mix the negative term by lambda
    # model
    band_head: bool = False        # true: the fold models get the per-class frequency band head
                                   # (02's band_head; bands from the fold's training TP boxes)
                                   # even when the initial ones have none; an initial model with
                                   # it keeps it (and its bands) either way
    # schedule
    epochs: int = 5
    min_epoch_steps: int = 0       # floor on batches per epoch (an epoch is #real TP rows //
                                   # tp_per_batch batches, at least this); 0 = off, the recipe
    lr: float = 1e-3
    t_max: int = 10
    min_overlap: float = 0.5
    folds: list[int] = field(default_factory=list)
    crop_seconds: float = 0.0      # 0 = the initial checkpoint's crop length
    val_stride_seconds: float = 0.0
    infer_stride_seconds: float = 0.0  # stride of the best epoch's OOF and test scores; 0 = val
    infer_batch: int = 64
    num_workers: int = -1          # DataLoader processes; -1 = auto (0 on CPU, up to 4 on a GPU)
    device: str = "auto"
    amp: str = "none"              # none | bf16 | fp16 | auto (bf16 where native; common/precision.py)
    seed: int = 42

    @property
    def batch_size(self) -> int:
        return self.tp_per_batch + self.fp_per_batch


def load_pseudo(cfg: CFG) -> tuple[pd.DataFrame | None, str, dict]:
    """Pseudo rows as annotation-table rows (class, t_min, t_max, label, voters), the pseudo
    run's tag and what its voters trained on ({fold: recording ids}, from the voting run's
    trained_on.csv: 04 checks the provenance itself, see common/provenance.py)."""
    if not cfg.pseudo:
        return None, "", {}
    run_dir = runs.find_run(cfg.work_dir, "pseudo", cfg.pseudo)
    table = pd.read_csv(run_dir / "pseudo_labels.csv", dtype={"recording_id": str, "voters": str})
    table = table.rename(columns={"t_start": "t_min", "t_end": "t_max"})
    source = runs.read_manifest(run_dir)["inputs"]["source"]
    stage_name, _, tag = source.partition("/")
    trained = pd.read_csv(runs.find_run(cfg.work_dir, stage_name, tag) / "trained_on.csv",
                          dtype={"recording_id": str})
    seen = {int(f): set(g["recording_id"]) for f, g in trained.groupby("fold")}
    keep = [c for c in ("recording_id", "class", "t_min", "t_max", "label", "voters", "target")
            if c in table.columns]
    return table[keep], run_dir.name, seen


def make_fold(cfg: CFG, prep, fold: int, init_dir, pseudo, voters_seen: dict, device):
    train_ids, _ = split_fold(prep.folds, fold)
    ann = prep.annotations[prep.annotations["recording_id"].isin(train_ids)]
    tp_rows = ann[ann["label"] > 0]
    fp_rows = ann[ann["label"] < 0]
    fold_pseudo, soft, n_real_tp = None, None, len(tp_rows)
    if pseudo is not None:  # only rows whose voters never saw fold k's validation labels
        clean = provenance.clean_voters(voters_seen, prep.folds, fold)
        fold_pseudo, dropped = provenance.clean_rows(pseudo, fold, clean, prep.folds)
        fold_pseudo, soft = soft_labels.split_soft(fold_pseudo)
        n_soft = 0 if soft is None else len(soft_labels.windows_of(soft))
        print(f"fold {fold}: {int((fold_pseudo['label'] > 0).sum())} pseudo-positive windows"
              f"{f', {n_soft} soft windows' if n_soft else ''} from clean voters {clean}; "
              f"{dropped} rows dropped (voted by a model that trained on this fold's "
              "validation recordings, or on its own recordings)", flush=True)
        if cfg.pseudo_in_tp_stream:
            windows = fold_pseudo[fold_pseudo["label"] > 0]
            if n_soft:
                windows = pd.concat([windows, soft_labels.windows_of(soft)], ignore_index=True)
            tp_rows = tp_stream(tp_rows, windows, cfg.real_tp_share)
    rows = pd.concat([tp_rows, fp_rows], ignore_index=True)
    model = initial_model(cfg, init_dir / f"fold{fold}.pth", prep, train_ids, fold, device)
    n_frames = stage.frame_targets(cfg.w_frame, cfg.crop_seconds, prep, model)
    dataset = CropDataset(rows, ann, prep.cache, prep.classes, prep.sample_rate, cfg.crop_seconds,
                          prep.durations, seed=cfg.seed + fold, min_overlap=cfg.min_overlap,
                          pseudo=fold_pseudo, pseudo_overlap=cfg.pseudo_overlap,
                          n_frames=n_frames, soft=soft)
    sampler = TwoStreamSampler(len(tp_rows), len(fp_rows), cfg.tp_per_batch, cfg.fp_per_batch,
                               seed=cfg.seed + fold, tp_epoch_rows=n_real_tp,
                               min_batches=cfg.min_epoch_steps)

    rng = {}  # mixup draws: a pure function of (seed, fold, epoch), so a resumed run repeats them

    def make_loader(epoch):
        dataset.set_epoch(epoch)
        sampler.set_epoch(epoch)
        rng["gen"] = np.random.default_rng([cfg.seed, fold, 7, epoch])
        return dist.loader(dataset, sampler, device, cfg.num_workers)

    def step(model, batch):
        wave, labels = batch[0], batch[1]
        soft = batch[-1] if dataset.with_soft else None  # (B, K), NaN: no soft target
        if not cfg.mixup:
            out = model(wave)
            loss = masked_focal_loss(out["clip_logit"].float(), labels, soft=soft, **loss_kw(cfg))
            if n_frames:
                loss = loss + cfg.w_frame * frame_loss(out["frame_logit"].float(), batch[2])
            return loss
        perm = torch.from_numpy(rng["gen"].permutation(len(wave))).to(wave.device)
        lam = float(rng["gen"].beta(cfg.mixup_alpha, cfg.mixup_alpha))
        out = model(wave, mix=(perm, lam))
        loss = masked_focal_loss(out["clip_logit"].float(), labels, labels[perm], lam, soft=soft,
                                 soft_b=None if soft is None else soft[perm], **loss_kw(cfg))
        if n_frames:  # mixed by lam, as the positive term: each component's boxes
            frames = out["frame_logit"].float()
            loss = loss + cfg.w_frame * (lam * frame_loss(frames, batch[2]) +
                                         (1 - lam) * frame_loss(frames, batch[2][perm]))
        return loss

    init_seen = pd.read_csv(init_dir / "trained_on.csv", dtype={"recording_id": str})
    trained_on = set(rows["recording_id"]) | set(init_seen.loc[init_seen["fold"] == fold, "recording_id"])
    return model, make_loader, step, trained_on


def initial_model(cfg: CFG, path, prep, train_ids, fold: int, device):
    """The fold's initial checkpoint; with `band_head` on and an initial model without it,
    rebuilt with the band head (bands from the TP boxes of the fold's training recordings)
    and the checkpoint's weights, which the band head's parameters share."""
    model, ckpt = load_checkpoint(path, device)
    if not cfg.band_head or model.model_cfg["band_head"]:
        return model
    mcfg = bands.for_fold({**model.model_cfg, "band_head": True}, prep.annotations,
                          prep.classes, train_ids, fold)
    model = build_model(mcfg)
    model.load_state_dict(ckpt["state_dict"])
    return to_device(model, device)


def tp_stream(tp_rows: pd.DataFrame, windows: pd.DataFrame, real_share: float) -> pd.DataFrame:
    """The TP stream of stage 3: real TP rows repeated so that they make up about
    `real_share` of it, then the pseudo-positive windows (cropped exactly, `exact`)."""
    if len(windows) == 0 or len(tp_rows) == 0:
        return pd.concat([tp_rows, windows.assign(exact=True)], ignore_index=True)
    repeat = max(1, int(round(real_share / max(1 - real_share, 1e-6) * len(windows) / len(tp_rows))))
    real = tp_rows.loc[tp_rows.index.repeat(repeat)]
    return pd.concat([real.assign(exact=False), windows.assign(exact=True)], ignore_index=True)


def zero_target_for(value: float, prep) -> float:
    """The zero term's target: as set, or (value < 0) from what the rows label. Timed events
    (RFCx, boxes): an entry no row names may be an unannotated call, so it is pulled towards
    0.45 (the recipe's zero label smoothing). Clip labels (BirdCLEF): a clip's labels name its
    species, so the others target 0; with 0.45 stage 3 fell from stage 1's held-out macro
    ROC-AUC 0.883 to 0.796 on the BirdCLEF 2023 demo, with 0 it rose to 0.894-0.905 (2 seeds)."""
    if value >= 0:
        return float(value)
    return 0.0 if prep.clips else 0.45


def loss_kw(cfg: CFG) -> dict:
    return {"gamma": cfg.gamma, "w_pos": cfg.w_pos, "w_neg": cfg.w_neg, "w_zero": cfg.w_zero,
            "zero_target": cfg.zero_target, "mix_negative": cfg.mix_negative, "w_rank": cfg.w_rank,
            "neg_focal": cfg.neg_focal, "w_soft": cfg.w_soft}


def main(cfg: CFG) -> dict:
    tic = time.time()
    device = dist.setup(cfg.device)  # under torchrun: joins the process group, one GPU per rank
    init_dir, _, prep, mcfg, init_folds = stage.open_run(cfg.work_dir, cfg.init_from, cfg.init)
    cfg.crop_seconds = cfg.crop_seconds or mcfg["crop_seconds"]
    stage.check_crop(cfg.crop_seconds, prep)
    cfg.zero_target = zero_target_for(cfg.zero_target, prep)
    folds = stage.fold_list(cfg.folds or init_folds, int(prep.folds["fold"].max()) + 1)
    pseudo, pseudo_tag, voters_seen = load_pseudo(cfg)
    inputs = {"preprocess": prep.run_dir.name, "init": f"{cfg.init_from}/{init_dir.name}",
              "pseudo": pseudo_tag}
    run_dir, resumed = dist.from_main(lambda: runs.begin_run(
        cfg.work_dir, cfg.stage, cfg_dict(cfg), inputs, cfg.tag, cfg.resume, cfg.fresh))
    n_pseudo = 0 if pseudo is None else int((pseudo["label"] > 0).sum())
    print(f"{cfg.stage} {run_dir.name}{' (resumed)' if resumed else ''}: from {cfg.init_from}/"
          f"{init_dir.name}, {n_pseudo} pseudo-positive windows, folds {folds}", flush=True)
    results = stage.train_folds(cfg, prep, folds, run_dir, device,
                                lambda fold: make_fold(cfg, prep, fold, init_dir, pseudo, voters_seen,
                                                          device))
    if not dist.is_main():
        return {}  # rank 0 scores the test set and writes every artifact
    out = stage.finish_run(cfg, prep, cfg.stage, run_dir, results, mcfg, inputs, device, tic,
                           "focal" + ("+mixup" if cfg.mixup else ""))
    init_cv = runs.read_manifest(init_dir).get("metrics", {}).get("cv_lwlrap")
    note = ""
    if init_cv is not None and out["cv_lwlrap"] < init_cv:  # a stage that does not help says so
        note = (f"{cfg.stage} CV {out['cv_lwlrap']:.4f} is below the {cfg.init_from} run it "
                f"started from ({init_cv:.4f}): on honest CV this stage does not help here")
        print(f"NOTE: {note}", flush=True)
    runs.update_summary(cfg.work_dir, cfg.stage, {"below_init": note})
    line = f"{cfg.stage} CV LWLRAP {out['cv_lwlrap']:.4f}  CV F1@0.5 {out['cv_f1']:.4f}"
    if "test_lwlrap" in out:
        line += f"  | demo test LWLRAP {out['test_lwlrap']:.4f}"
    if "cv_lwlrap_calibrated" in out:
        line += (f"  | calibrated: CV {out['cv_lwlrap_calibrated']:.4f}"
                 + (f" test {out['test_lwlrap_calibrated']:.4f}" if "test_lwlrap_calibrated" in out else ""))
    print(f"{line}  [{out['seconds']:.0f}s] -> {run_dir}", flush=True)
    return out


def stage_of(argv: list[str]) -> str:
    for arg in argv:
        if arg.startswith("--stage="):
            return arg.split("=", 1)[1]
    return "stage3"


if __name__ == "__main__":
    name = stage_of(sys.argv[1:])
    if name not in ("stage2", "stage3"):
        raise SystemExit(f"error: --stage={name}: choose stage2 or stage3")
    run(main, CFG, name, defaults=STAGE2_DEFAULTS if name == "stage2" else None)
