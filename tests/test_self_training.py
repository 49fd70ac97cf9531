"""Issue 19 part 3, self-training on unlabeled soundscapes (BirdCLEF 2023-2025 layout): 01
caches them as recordings without annotations and outside every fold; 03 votes on their 5 s
segments and, with --soft, writes the allowed voters' mean probability ** soft_power; fold
k's rows come from fold k's own model only, and 04's provenance re-check keeps them; 04's
crops and loss take the soft targets."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from common import layouts, provenance, segments, soft_labels
from common.data import CropDataset, split_fold
from common.losses import masked_focal_loss
from common.prepared import load_prepared
from tests.conftest import ArrayCache, load_script, run_script
from tests.test_birdclef_submission import cfg_of, layout_2023, tone

PRE = load_script("01_preprocess")
PL = load_script("03_pseudo_label")
CLASSES = ["s0", "s1", "s2"]
FREE = ["u0", "u1", "u2"]


# ----------------------------------------------------------------------------- 01
def test_01_caches_unlabeled_soundscapes_without_annotations_and_outside_the_folds(tmp_path):
    data = tmp_path / "data"
    layout_2023(data)
    tone(data / "unlabeled_soundscapes" / "u_a.ogg", 10.0)
    tone(data / "unlabeled_soundscapes" / "u_b.ogg", 7.5)
    tone(data / "train_soundscapes" / "t_c.ogg", 10.0)
    off = layouts.read(data, cfg_of(data))  # the default, 0: none is used, all are counted
    assert "unlabeled" not in {s for _, s, _ in off.files}
    assert off.notes["unlabeled_soundscapes_found"] == 2 and off.notes["unlabeled_used"] == 0
    two = layouts.read(data, cfg_of(data, "--max_unlabeled=2"))
    picked = [rid for rid, s, _ in two.files if s == "unlabeled"]
    assert len(picked) == 2 and set(picked) < {"u_a", "u_b", "t_c"}
    again = layouts.read(data, cfg_of(data, "--max_unlabeled=2")).files
    assert picked == [rid for rid, s, _ in again if s == "unlabeled"]  # seeded: the same files

    run_dir = PRE.main(cfg_of(data, "--max_unlabeled=-1", "--n_folds=2", "--workers=1",
                              f"--work_dir={tmp_path / 'work'}"))
    prep = load_prepared(tmp_path / "work", run_dir.name)
    assert sorted(prep.ids("unlabeled")) == ["t_c", "u_a", "u_b"]
    assert prep.durations["u_b"] == pytest.approx(7.5, abs=0.05)
    assert not set(prep.annotations["recording_id"]) & {"t_c", "u_a", "u_b"}
    assert not set(prep.folds["recording_id"]) & {"t_c", "u_a", "u_b"}
    assert len(prep.folds) == 6  # the six clips, each validated once
    for fold in (0, 1):
        train, val = split_fold(prep.folds, fold)
        assert not (train | val) & {"t_c", "u_a", "u_b"}
    segments = pd.read_csv(run_dir / "test_segments.csv")
    assert set(segments["recording_id"]) == {"sc_1"}  # no submission row for them


# ----------------------------------------------------------------------------- 03
def test_segment_windows_are_centred_on_the_5_s_segments_inside_the_recording():
    assert segments.segment_starts(20.0, 5.0).tolist() == [0.0, 5.0, 10.0, 15.0]
    assert segments.segment_starts(62.5, 5.0).tolist()[-2:] == [55.0, 57.5]  # last: flush
    assert segments.segment_starts(20.0, 10.0).tolist() == [0.0, 2.5, 7.5, 10.0]
    assert segments.segment_starts(3.0, 5.0).tolist() == [0.0]


class Prep:
    """What build_table reads of a preprocessing run: 3 folds of 2 clips, 3 unlabeled
    soundscapes and a test recording."""
    classes = CLASSES
    folds = pd.DataFrame({"recording_id": ["c0", "c1", "c2", "c3", "c4", "c5"],
                          "fold": [0, 0, 1, 1, 2, 2], "has_tp": True})
    splits = {"train": ["c0", "c1", "c2", "c3", "c4", "c5"], "unlabeled": FREE, "test": ["t0"]}

    def ids(self, split):
        return self.splits.get(split, [])


def table_of(probs, clean, plan, **cfg):
    cfg = PL.CFG(min_votes=1, **cfg)
    return PL.build_table(cfg, Prep(), plan, probs, 5.0, 3, np.full(3, 0.5), clean)


def test_soft_targets_are_the_mean_of_the_allowed_voters_to_the_power():
    # two windows of u0; models 0 and 1 both clean for fold 0 (a hand-made case: in one
    # level of k-fold CV each fold has one clean voter), model 2 clean for fold 2
    p0 = np.array([[0.9, 0.2, 0.05], [0.1, 0.1, 0.2]])
    p1 = np.array([[0.7, 0.4, 0.05], [0.1, 0.2, 0.2]])
    p2 = np.array([[0.3, 0.6, 0.05], [0.9, 0.1, 0.1]])
    probs = {j: {"u0": p, "t0": p} for j, p in enumerate((p0, p1, p2))}
    plan = {"u0": np.array([0.0, 5.0]), "t0": np.array([0.0, 5.0])}
    table = table_of(probs, {0: [0, 1], 2: [2]}, plan, soft=True, soft_power=2.0,
                     soft_floor=0.05)
    soft = table[table["target"].notna()]
    assert (soft["recording_id"] == "u0").all() and (soft["label"] == 0).all()
    fold0 = soft[soft["fold"] == 0].set_index(["window", "class"])
    # means: window 0 (0.8, 0.3, 0.05), window 1 (0.1, 0.15, 0.2); squared, floor 0.05:
    # s2 of window 0 (0.0025) is zeroed and window 1 (0.01, 0.0225, 0.04) left out
    mean = (p0 + p1) / 2
    assert fold0["target"].to_dict() == pytest.approx({(0, "s0"): mean[0, 0] ** 2,
                                                       (0, "s1"): mean[0, 1] ** 2})
    assert fold0["target"].to_dict() == pytest.approx({(0, "s0"): 0.64, (0, "s1"): 0.09})
    assert fold0["score"].to_dict() == pytest.approx({(0, "s0"): 0.8, (0, "s1"): 0.3})
    assert set(fold0["voters"]) == {"0;1"} and set(fold0["n_models"]) == {2}
    fold2 = soft[soft["fold"] == 2].set_index(["window", "class"])
    assert fold2["target"].to_dict() == pytest.approx({(0, "s0"): 0.09, (0, "s1"): 0.36,
                                                       (1, "s0"): 0.81})
    assert fold2.loc[(1, "s0"), "t_start"] == 5.0 and fold2.loc[(1, "s0"), "t_end"] == 10.0
    # the test recording keeps its 0/1 votes (no target), as without --soft
    hard = table[table["target"].isna()]
    assert set(hard["recording_id"]) == {"t0"} and (hard["label"] == 1).all()
    # a window whose targets all fall below the floor is left out
    high = table_of(probs, {2: [2]}, plan, soft=True, soft_power=1.0, soft_floor=0.5)
    assert high.loc[high["target"].notna(), "window"].tolist() == [0, 1]
    assert high.loc[high["target"].notna(), "target"].tolist() == [0.6, 0.9]
    none = table_of(probs, {2: [2]}, plan, soft=True, soft_power=1.0, soft_floor=0.95)
    assert none["target"].notna().sum() == 0
    # without --soft the unlabeled windows are voted on like any other
    voted = table_of(probs, {2: [2]}, plan)
    assert voted["target"].isna().all() and set(voted["recording_id"]) == {"u0", "t0"}


def test_fold_k_soft_rows_come_from_fold_k_model_only_and_04_keeps_them(tmp_path):
    """Each fold model (a stand-in whose probability is its fold's constant) trained on the
    clips outside its fold; the clean voter of fold k is model k alone, so fold k's rows of
    the unlabeled soundscapes carry model k's probability, and 04's re-check (from the
    voters' trained_on) keeps exactly fold k's rows."""
    level = {0: 0.9, 1: 0.6, 2: 0.3}

    class Model(torch.nn.Module):
        def __init__(self, fold):
            super().__init__()
            self.fold = fold

        def forward(self, wave):
            logit = math.log(level[self.fold] / (1 - level[self.fold]))
            return {"clip_logit": torch.full((wave.shape[0], 3), logit)}

    prep = Prep()
    prep.sample_rate = 100
    prep.cache = ArrayCache({rid: np.zeros(1000, np.float32) for rid in FREE})
    seen = {j: set(prep.folds.loc[prep.folds["fold"] != j, "recording_id"]) for j in range(3)}
    clean = {k: provenance.clean_voters(seen, prep.folds, k) for k in range(3)}
    assert clean == {0: [0], 1: [1], 2: [2]}
    plan = {rid: segments.segment_starts(10.0, 5.0) for rid in FREE}
    may = {j: set(plan) for j in range(3)}  # no annotation on them: every model may vote
    original = PL.load_checkpoint
    PL.load_checkpoint = lambda path, device: (Model(int(path.stem[4:])), {})
    try:
        probs, _ = PL.predict_all(PL.CFG(), tmp_path, [0, 1, 2], prep, plan, may, 500, "cpu",
                                  tmp_path / "pseudo" / "run")
    finally:
        PL.load_checkpoint = original
    table = PL.build_table(PL.CFG(soft=True, soft_power=1.5), prep, plan, probs, 5.0, 3,
                           np.full(3, 0.5), clean)
    assert len(table) == 3 * 3 * 2 * 3  # folds x soundscapes x segments x classes
    for k in range(3):
        rows = table[table["fold"] == k]
        assert set(rows["voters"]) == {str(k)}
        assert rows["target"].to_numpy() == pytest.approx(np.full(len(rows), level[k] ** 1.5))
        pseudo = table.rename(columns={"t_start": "t_min", "t_end": "t_max"})
        kept, dropped = provenance.clean_rows(pseudo, k, clean[k], prep.folds)
        assert len(kept) == len(rows) and dropped == len(table) - len(rows)
        assert set(kept["voters"]) == {str(k)}
        hard, soft = soft_labels.split_soft(kept)
        assert len(hard) == 0 and len(soft) == len(rows)
        assert len(soft_labels.windows_of(soft)) == 6
        # a voter that trained on fold k's validation clips is never clean for fold k
        leaky = provenance.clean_rows(pseudo.assign(voters=str((k + 1) % 3)), k, clean[k],
                                      prep.folds)[0]
        assert len(leaky) == 0


# ----------------------------------------------------------------------------- 04
def soft_table(rows):
    return pd.DataFrame(rows, columns=["recording_id", "t_min", "t_max", "class", "target"])


def test_crops_carry_the_soft_targets_of_the_window_they_lie_in():
    cache = ArrayCache({"u": np.zeros(2000, np.float32), "c": np.zeros(2000, np.float32)})
    soft = soft_table([("u", 5.0, 10.0, "s0", 0.8), ("u", 5.0, 10.0, "s2", 0.3),
                       ("u", 10.0, 15.0, "s1", 0.6)])
    rows = pd.DataFrame({"recording_id": ["u", "u", "u", "c"], "t_min": [5.0, 10.0, 6.0, 0.0],
                         "t_max": [10.0, 15.0, 11.0, 5.0], "exact": True})
    ann = pd.DataFrame({"recording_id": ["c", "u"], "class": ["s1", "s2"], "t_min": [0.0, 12.0],
                        "t_max": [5.0, 13.0], "label": [1, -1]})
    ds = CropDataset(rows, ann, cache, CLASSES, 100, 5.0, {"u": 20.0, "c": 20.0}, soft=soft)
    assert ds[0][2].tolist() == pytest.approx([0.8, 0.0, 0.3])  # unlisted classes: 0
    # an annotation row (here an FP of s2 at 12-13 s) wins over the soft target of its entry
    assert ds[1][1].tolist() == [0.0, 0.0, -1.0]
    assert ds[1][2][:2].tolist() == pytest.approx([0.0, 0.6]) and ds[1][2][2].isnan()
    assert ds[2][2].tolist() == pytest.approx([0.8, 0.0, 0.3])  # 6-11 s: 4 s of 5-10
    assert np.isnan(ds[3][2].numpy()).all() and ds[3][1].tolist() == [0.0, 1.0, 0.0]
    assert len(CropDataset(rows, ann, cache, CLASSES, 100, 5.0, {"u": 20.0, "c": 20.0})[0]) == 2


def test_the_loss_trains_soft_entries_on_bce_to_their_target():
    z = torch.tensor([[1.5, -0.5, 0.2], [0.3, -1.0, 2.0]])
    labels = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    nan = float("nan")
    soft = torch.tensor([[nan, nan, nan], [0.8, 0.0, 0.3]])
    p = torch.sigmoid(z)
    pos = -torch.log(p[0, 0]) * (1 - p[0, 0]) ** 2
    zero = F.binary_cross_entropy_with_logits(z[0, 1:], torch.full((2,), 0.45))  # row 0 only
    bce = F.binary_cross_entropy_with_logits(z[1], soft[1])
    got = masked_focal_loss(z, labels, soft=soft, w_soft=0.5)
    assert got.item() == pytest.approx((2 * pos + zero + 0.5 * bce).item(), rel=1e-5)
    # without soft targets row 1 is unknown: pulled to 0.45 by the zero term instead
    plain = F.binary_cross_entropy_with_logits(
        torch.cat([z[0, 1:], z[1]]), torch.full((5,), 0.45))
    assert masked_focal_loss(z, labels).item() == pytest.approx((2 * pos + plain).item(), rel=1e-5)
    # mixup: the soft term is mixed by lambda like the positive term
    perm, lam = torch.tensor([1, 0]), 0.3
    mixed = masked_focal_loss(z, labels, labels[perm], lam, soft=soft, soft_b=soft[perm])
    a = masked_focal_loss(z, labels, soft=soft)
    b = masked_focal_loss(z, labels[perm], soft=soft[perm])
    assert mixed.item() == pytest.approx(lam * a.item() + (1 - lam) * b.item(), rel=1e-5)
    z.requires_grad_(True)
    masked_focal_loss(z, labels, soft=soft).backward()
    assert torch.isfinite(z.grad).all() and z.grad[1].abs().sum() > 0


# ----------------------------------------------------------------------------- end to end
def test_01_to_04_trains_each_fold_on_its_own_soft_rows_of_the_unlabeled_soundscapes(tmp_path):
    """The demo with 3 unlabeled soundscapes: 01 (--max_unlabeled=-1) -> 02 (2 folds, 1
    epoch) -> 03 --soft on the unlabeled soundscapes -> 04 stage 3 (1 epoch)."""
    from common.demos.birdclef2023 import Bird2023DemoSpec, write_birdclef2023_demo
    data, work = tmp_path / "data", tmp_path / "work"
    write_birdclef2023_demo(data, Bird2023DemoSpec(
        seed=1, n_classes=3, clips_per_class=6, clip_seconds=(5.0,), n_soundscapes=1,
        soundscape_seconds=10.0, n_unlabeled=3), workers=2)
    io = ["--cfg_file=profiles/birdclef2023_demo.json", f"--input_dir={data}", f"--work_dir={work}"]
    run_script("01_preprocess", *io, "--workers=2", "--n_folds=2", "--max_unlabeled=-1")
    run_script("02_train_stage1", *io, "--folds=0,1", "--epochs=1", "--batch_size=8")
    run_script("03_pseudo_label", *io, "--source=stage1", "--vote_splits=unlabeled",
               "--soft=true", "--soft_power=2", "--soft_floor=0", "--min_votes=2")
    out = run_script("04_train_stage3", *io, "--init_from=stage1", "--epochs=1",
                     "--tp_per_batch=4").stdout
    free = {f"soundscape_{200000 + 37 * j}" for j in range(3)}
    table = pd.read_csv(next((work / "pseudo").iterdir()) / "pseudo_labels.csv",
                        dtype={"voters": str})
    assert set(table["recording_id"]) == free and table["target"].notna().all()
    assert len(table) == 2 * 3 * 2 * 3  # folds x soundscapes x segments x classes (floor 0)
    assert (table["voters"] == table["fold"].astype(str)).all()
    for fold in (0, 1):
        assert f"fold {fold}: 0 pseudo-positive windows, 6 soft windows from clean voters " \
               f"[{fold}]; 18 rows dropped" in out
    trained = pd.read_csv(next((work / "stage3").iterdir()) / "trained_on.csv")
    assert all(free <= set(trained.loc[trained["fold"] == f, "recording_id"]) for f in (0, 1))
