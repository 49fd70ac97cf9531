"""Stage 2/3 pieces: label assembly with pseudo labels, the TwoStream sampler, the masked
focal loss and its mixup rule, and pseudo-label voting that never uses a model on a
recording it trained on."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from common import provenance
from common.data import CropDataset, window_labels
from common.losses import masked_focal_loss, masked_focal_terms
from common.sampling import TwoStreamSampler, endless_slice
from tests.conftest import ArrayCache

LN2 = math.log(2.0)
CLASSES = ["s0", "s1", "s2"]
INDEX = {c: i for i, c in enumerate(CLASSES)}




def ann(rows):
    return pd.DataFrame(rows, columns=["recording_id", "class", "t_min", "t_max", "label"])


# ----------------------------------------------------------------------------- labels
def test_window_labels_tp_fp_unknown():
    events = ann([("r", "s0", 1.0, 2.0, 1), ("r", "s1", 1.5, 2.5, -1), ("r", "s2", 8.0, 9.0, 1)])
    labels = window_labels(events, 0.0, 5.0, INDEX)
    assert labels.tolist() == [1.0, -1.0, 0.0]  # s2 lies outside the window: unknown


def test_pseudo_positive_over_fp_becomes_unknown_and_over_nothing_positive():
    base = ann([("r", "s0", 1.0, 2.0, 1), ("r", "s1", 1.0, 2.0, -1)])
    pseudo = ann([("r", "s1", 0.0, 5.0, 1), ("r", "s2", 0.0, 5.0, 1), ("r", "s0", 0.0, 5.0, 1)])
    cache = ArrayCache({"r": np.zeros(10 * 100, dtype=np.float32)})
    rows = pd.DataFrame({"recording_id": ["r"], "t_min": [1.0], "t_max": [2.0]})
    ds = CropDataset(rows, base, cache, CLASSES, 100, 5.0, {"r": 10.0}, pseudo=pseudo)
    ds_plain = CropDataset(rows, base, cache, CLASSES, 100, 5.0, {"r": 10.0})
    _, with_pseudo = ds[0]
    _, without = ds_plain[0]
    assert without.tolist() == [1.0, -1.0, 0.0]
    # common.data.combine_pseudo: TP+pseudo -> 1, FP+pseudo -> 0 (unknown), unknown+pseudo -> 1
    assert with_pseudo.tolist() == [1.0, 0.0, 1.0]


# ----------------------------------------------------------------------------- sampler
def test_two_stream_sampler_counts_and_epoch_length():
    n_tp, n_fp = 21, 50
    sampler = TwoStreamSampler(n_tp, n_fp, tp_per_batch=4, fp_per_batch=3, seed=1)
    assert len(sampler) == 21 // 4
    seen_fp = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == 5
        tp_in_epoch = []
        for batch in batches:
            tp = [i for i in batch if i < n_tp]
            fp = [i for i in batch if i >= n_tp]
            assert len(tp) == 4 and len(fp) == 3
            assert all(n_tp <= i < n_tp + n_fp for i in fp)
            tp_in_epoch += tp
            seen_fp += fp
        assert len(set(tp_in_epoch)) == 20  # a permutation: no TP row twice in an epoch
    # the FP stream continues across epochs: 45 draws from 50 rows, none repeated yet
    assert len(seen_fp) == 45 and len(set(seen_fp)) == 45


def test_two_stream_sampler_tp_permuted_each_epoch_and_reproducible():
    a = TwoStreamSampler(40, 10, 8, 8, seed=3)
    b = TwoStreamSampler(40, 10, 8, 8, seed=3)
    a.set_epoch(0)
    first = list(a)
    a.set_epoch(1)
    second = list(a)
    b.set_epoch(1)
    assert list(b) == second
    assert [i for bt in first for i in bt if i < 40] != [i for bt in second for i in bt if i < 40]


def test_endless_stream_reshuffles_after_each_pass():
    draws = endless_slice(5, 0, 15, seed=0)
    for k in range(3):
        assert sorted(draws[5 * k:5 * k + 5].tolist()) == [0, 1, 2, 3, 4]
    assert np.array_equal(endless_slice(5, 7, 4, seed=0), draws[7:11])


def test_sampler_min_batches_lengthens_a_small_epoch():
    """10 TP rows at 4 per batch make 2 batches; a floor of 5 draws the TP stream endlessly
    (every row used before any repeats) and keeps batches reproducible per epoch."""
    sampler = TwoStreamSampler(10, 6, 4, 2, seed=5, min_batches=5)
    assert len(sampler) == 5
    batches = list(sampler)
    tp = np.concatenate([b[:4] for b in batches])
    assert len(batches) == 5 and all(len(b) == 6 for b in batches)
    assert sorted(tp[:10]) == list(range(10))  # one full pass first
    assert all(i >= 10 for b in batches for i in b[4:])
    assert list(sampler) == batches
    assert len(TwoStreamSampler(40, 6, 4, 2, min_batches=5)) == 10  # the floor only raises


def test_sampler_without_fp_rows_gives_tp_only_batches():
    sampler = TwoStreamSampler(10, 0, 4, 4)
    assert all(len(b) == 4 and max(b) < 10 for b in sampler)


# ----------------------------------------------------------------------------- loss
def test_masked_focal_terms_hand_computed():
    z = torch.zeros(1, 3)
    terms = masked_focal_terms(z, torch.tensor([[1.0, -1.0, 0.0]]), gamma=2.0, zero_target=0.45)
    assert terms["pos"].tolist()[0] == pytest.approx([LN2 * 0.25, 0, 0], abs=1e-6)
    assert terms["neg"].tolist()[0] == pytest.approx([0, LN2 * 0.25, 0], abs=1e-6)  # focal: p^2
    assert terms["zero"].tolist()[0] == pytest.approx([0, 0, LN2], abs=1e-6)
    z = torch.tensor([[2.0, 2.0, 2.0]])
    p = 1 / (1 + math.exp(-2.0))
    terms = masked_focal_terms(z, torch.tensor([[1.0, -1.0, 0.0]]), gamma=2.0, zero_target=0.45)
    assert terms["pos"][0, 0].item() == pytest.approx(-math.log(p) * (1 - p) ** 2, rel=1e-5)
    assert terms["neg"][0, 1].item() == pytest.approx(-math.log(1 - p) * p ** 2, rel=1e-5)
    assert terms["zero"][0, 2].item() == pytest.approx(
        -(0.45 * math.log(p) + 0.55 * math.log(1 - p)), rel=1e-5)


def test_masked_focal_loss_weights_and_stage2_zero_off():
    z = torch.zeros(1, 3)
    y = torch.tensor([[1.0, -1.0, 0.0]])
    assert masked_focal_loss(z, y).item() == pytest.approx(2 * 0.25 * LN2 + 0.25 * LN2 + LN2, rel=1e-5)
    assert masked_focal_loss(z, y, w_zero=0.0).item() == pytest.approx(0.5 * LN2 + 0.25 * LN2, rel=1e-5)


def test_each_term_is_a_mean_over_its_entries():
    # 1 positive, 1 negative and 10 unknown entries: the unknowns weigh like one term
    z = torch.tensor([[2.0, -1.0] + [0.5] * 10])
    y = torch.tensor([[1.0, -1.0] + [0.0] * 10])
    p = torch.sigmoid(z[0])
    pos = -torch.log(p[0]) * (1 - p[0]) ** 2
    neg = -torch.log(1 - p[1]) * p[1] ** 2
    zero = -(0.45 * torch.log(p[2]) + 0.55 * torch.log(1 - p[2]))
    expected = (2 * pos + neg + zero).item()
    assert masked_focal_loss(z, y).item() == pytest.approx(expected, rel=1e-5)
    assert masked_focal_loss(torch.zeros(1, 3), torch.zeros(1, 3), w_zero=0.0).item() == 0.0


def test_mixup_rule_positive_and_zero_mixed_negative_not():
    z = torch.zeros(1, 3)
    a = torch.tensor([[-1.0, 0.0, 0.0]])
    b = torch.tensor([[0.0, 0.0, 0.0]])
    lam = 0.25
    # neg of a counts fully (b is not positive there; focal at p = 0.5: LN2 / 4); zero terms
    # (means) mixed by lambda
    expected = LN2 * (0.25 + lam * 1 + (1 - lam) * 1)
    assert masked_focal_loss(z, a, b, lam).item() == pytest.approx(expected, rel=1e-5)
    # switch: the negative term mixed by lambda as well (b has no negative entry)
    expected_mixed = LN2 * (lam * 0.25 + lam * 1 + (1 - lam) * 1)
    assert masked_focal_loss(z, a, b, lam, mix_negative=True).item() == \
        pytest.approx(expected_mixed, rel=1e-5)
    # a class absent in one component but present in the other is not pushed down
    a2 = torch.tensor([[1.0, -1.0, 0.0]])
    b2 = torch.tensor([[-1.0, 1.0, 0.0]])
    lam = 0.3
    expected2 = lam * (2 * 0.25 * LN2 + LN2) + (1 - lam) * (2 * 0.25 * LN2 + LN2)
    assert masked_focal_loss(z, a2, b2, lam).item() == pytest.approx(expected2, rel=1e-5)


def test_rank_term_adds_lsep_of_the_positives_over_every_other_entry():
    # +1 on class 0 (f=2), -1 on class 1 (f=-1), unknown class 2 (f=0.5): the LSEP pairs are
    # (0 over 1) and (0 over 2), unknowns count as negatives as in stage 1
    z = torch.tensor([[2.0, -1.0, 0.5]])
    y = torch.tensor([[1.0, -1.0, 0.0]])
    lsep = math.log(1 + math.exp(-1.0 - 2.0) + math.exp(0.5 - 2.0))
    base = masked_focal_loss(z, y).item()
    assert masked_focal_loss(z, y, w_rank=0.5).item() == pytest.approx(base + 0.5 * lsep, rel=1e-5)
    # a crop with no positive (FP-only) gets no rank term
    y_fp = torch.tensor([[0.0, -1.0, 0.0]])
    assert masked_focal_loss(z, y_fp, w_rank=3.0).item() == pytest.approx(
        masked_focal_loss(z, y_fp).item(), rel=1e-6)
    # with mixup the rank term of each component is weighted by its lambda
    b = torch.tensor([[0.0, 0.0, 1.0]])
    lsep_b = math.log(1 + math.exp(2.0 - 0.5) + math.exp(-1.0 - 0.5))
    lam = 0.3
    expected = masked_focal_loss(z, y, b, lam).item() + lam * lsep + (1 - lam) * lsep_b
    assert masked_focal_loss(z, y, b, lam, w_rank=1.0).item() == pytest.approx(expected, rel=1e-5)


# ----------------------------------------------------------------------------- pseudo labels
def test_vote_scales_with_allowed_models(scripts):
    pl = scripts("03_pseudo_label")
    probs = np.array([[[0.9, 0.1]], [[0.6, 0.7]], [[0.2, 0.8]], [[0.7, 0.1]], [[0.1, 0.1]]])
    pos, votes = pl.vote(probs, 0.5, 3, 5)
    assert votes.tolist() == [[3, 2]] and pos.tolist() == [[True, False]]
    pos1, _ = pl.vote(probs[2:3], 0.5, 3, 5)  # one allowed model: ceil(3/5) = 1 vote
    assert pos1.tolist() == [[False, True]]


def test_vote_takes_a_threshold_per_species(scripts):
    pl = scripts("03_pseudo_label")
    probs = np.array([[[0.65, 0.9]], [[0.7, 0.6]], [[0.8, 0.9]]])
    pos, votes = pl.vote(probs, np.array([0.6, 0.95]), 3, 3)
    assert votes.tolist() == [[3, 0]] and pos.tolist() == [[True, False]]


def test_class_thresholds_reach_the_target_precision_on_oof(scripts):
    pl = scripts("03_pseudo_label")
    # species 0: scores 0.9 (pos) 0.8 (pos) 0.7 (neg) 0.6 (pos) 0.5 (neg) 0.4 (neg)
    # precision at >=0.8: 1.0, at >=0.6: 0.75 -> target 0.9: threshold 0.8
    # species 1: the top score is a negative, precision never reaches 0.9 -> no labels
    # species 2: one positive (< min_positives 2): the pooled threshold
    oof = np.array([[0.9, 0.9, 0.1], [0.8, 0.2, 0.95], [0.7, 0.3, 0.1],
                    [0.6, 0.4, 0.1], [0.5, 0.5, 0.1], [0.4, 0.6, 0.1]])
    truth = np.array([[1, 0, 0], [1, 1, 1], [0, 0, 0], [1, 0, 0], [0, 0, 0], [0, 1, 0]])
    table = pl.class_thresholds(oof, truth, 0.9, 0.3, 2)
    assert table["threshold"][0] == pytest.approx(0.8)
    assert table["oof_precision"][0] == pytest.approx(1.0)
    assert not np.isfinite(table["threshold"][1])
    assert table["rule"][2] == "pooled"
    # pooled over all 18 entries: 0.95+, then 0.9+ tied with 0.9- (2/3): threshold 0.95
    assert table["threshold"][2] == pytest.approx(0.95)
    fixed = pl.class_thresholds(oof, truth, 0.0, 0.5, 2)
    assert (fixed["threshold"] == 0.5).all()


@pytest.mark.parametrize("duration,window,stride", [(20.0, 5.0, 2.5), (60.0, 10.0, 3.0),
                                                    (7.3, 5.0, 2.5), (4.0, 5.0, 2.5),
                                                    (61.0, 60.0, 30.0)])
def test_window_plan_covers_the_whole_recording(scripts, duration, window, stride):
    pl = scripts("03_pseudo_label")
    starts = pl.window_plan(duration, window, stride)
    assert starts[0] == 0.0
    assert starts[-1] + window >= min(duration, window) - 1e-9
    assert starts[-1] == pytest.approx(max(duration - window, 0.0))
    assert (np.diff(starts) <= stride + 1e-9).all()


def test_precision_vs_events_splits_by_voting_models(scripts, tmp_path):
    pl = scripts("03_pseudo_label")
    pd.DataFrame({"split": ["test", "train"], "recording_id": ["a", "b"], "kind": ["call", "call"],
                  "species_id": [1, 2], "t_min": [1.0, 10.0], "t_max": [2.0, 11.0]}
                 ).to_csv(tmp_path / "demo_events.csv", index=False)
    table = pd.DataFrame({"recording_id": ["a", "a", "b", "b"], "class": ["s1", "s2", "s2", "s2"],
                          "t_start": [0.0, 0.0, 9.0, 20.0], "t_end": [5.0, 5.0, 14.0, 25.0],
                          "n_models": [3, 3, 1, 1], "label": [1, 1, 1, 1]})
    out = pl.precision_vs_events(table, tmp_path, 3)
    # a/s1 covers its call, a/s2 has no s2 call, b/s2 at 9-14 s covers it, at 20-25 s does not
    assert out == {"all_models": {"windows": 2, "precision": 0.5},
                   "fewer_models": {"windows": 2, "precision": 0.5}}
    assert pl.precision_vs_events(table, tmp_path / "nowhere", 3) is None


def test_pseudo_labels_never_from_a_model_that_trained_on_the_recording(scripts, tmp_path):
    pl = scripts("03_pseudo_label")

    class Recorder(torch.nn.Module):
        def __init__(self, fold):
            super().__init__()
            self.fold = fold

        def forward(self, wave):
            # the recording id is encoded in the wave's first sample
            calls.append((self.fold, int(round(wave[0, 0].item()))))
            return {"clip_logit": torch.full((wave.shape[0], 2), 5.0)}

    calls = []
    waves = {f"r{i}": np.full(400, float(i), dtype=np.float32) for i in range(6)}
    seen = {0: {"r0", "r1", "r2"}, 1: {"r2", "r3"}, 2: {"r4"}}

    class Prep:
        sample_rate = 100
        cache = ArrayCache(waves)

    original = pl.load_checkpoint
    pl.load_checkpoint = lambda path, device: (Recorder(int(path.stem[4:])), {})
    try:
        cfg = pl.CFG(work_dir=str(tmp_path))
        plan = {rid: np.array([0.0, 2.0]) for rid in waves}
        may = {j: {rid for rid in plan if provenance.may_vote(seen[j], rid)} for j in seen}
        probs, kept = pl.predict_all(cfg, tmp_path, [0, 1, 2], Prep(), plan, may, 200, "cpu",
                                     tmp_path / "pseudo" / "run")
    finally:
        pl.load_checkpoint = original
    for fold, rec in calls:
        assert f"r{rec}" not in seen[fold], f"fold {fold} voted on r{rec}, which it trained on"
    assert set(probs[0]) == {"r3", "r4", "r5"} and "r2" not in probs[1]
    assert all("r5" in probs[j] for j in (0, 1, 2)) and kept == []


# ----------------------------------------------------------------------------- pseudo windows
def test_pseudo_window_labels_a_crop_only_where_it_covers_half_of_it():
    pseudo = ann([("r", "s2", 5.0, 10.0, 1)])
    cache = ArrayCache({"r": np.zeros(20 * 100, dtype=np.float32)})
    rows = pd.DataFrame({"recording_id": ["r", "r"], "t_min": [2.0, 4.0], "t_max": [7.0, 9.0],
                         "exact": [True, True]})
    ds = CropDataset(rows, ann([]), cache, CLASSES, 100, 5.0, {"r": 20.0}, pseudo=pseudo,
                     pseudo_overlap=0.5)
    assert ds[0][1].tolist() == [0.0, 0.0, 0.0]  # crop 2-7 s: 2 s of the window, < 2.5 s
    assert ds[1][1].tolist() == [0.0, 0.0, 1.0]  # crop 4-9 s: 4 s of the window


def test_exact_rows_are_cropped_at_their_start_and_others_around_the_event():
    ramp = np.arange(20 * 100, dtype=np.float32)
    cache = ArrayCache({"r": ramp})
    rows = pd.DataFrame({"recording_id": ["r", "r"], "t_min": [3.0, 3.0], "t_max": [8.0, 4.0],
                         "exact": [True, False]})
    ds = CropDataset(rows, ann([]), cache, CLASSES, 100, 5.0, {"r": 20.0})
    for epoch in range(3):
        ds.set_epoch(epoch)
        assert ds[0][0][0].item() == 300.0  # the voted window itself, every epoch
        start = ds[1][0][0].item() / 100
        assert 1.0 <= start < 3.5  # recipe crop: start in [centre - 2.5 s, centre)


def test_tp_stream_keeps_the_real_tp_share(scripts):
    stage3 = scripts("04_train_stage3")
    tp = ann([("a", "s0", 1.0, 2.0, 1)] * 20)
    windows = ann([("b", "s1", 0.0, 5.0, 1)] * 180)
    stream = stage3.tp_stream(tp, windows, 0.5)
    assert len(stream) == 360 and (stream["recording_id"] == "a").sum() == 180
    assert stream.loc[stream["recording_id"] == "b", "exact"].all()
    assert not stream.loc[stream["recording_id"] == "a", "exact"].any()
    quarter = stage3.tp_stream(tp, windows, 0.25)
    assert (quarter["recording_id"] == "a").sum() == 60  # 20 rows x 3 = 1/4 of 240
    assert len(stage3.tp_stream(tp, windows.iloc[:0], 0.5)) == 20


def test_clean_rows_of_an_empty_pseudo_table():
    """03 may pass no window at all (weak models, high thresholds): 04 then trains on the
    real rows alone instead of failing on the empty table."""
    folds = pd.DataFrame({"recording_id": ["a", "b"], "fold": [0, 1]})
    empty = pd.DataFrame(columns=["recording_id", "t_min", "t_max", "class", "label", "voters"])
    kept, dropped = provenance.clean_rows(empty, 0, [0], folds)
    assert len(kept) == 0 and dropped == 0 and isinstance(dropped, int)


def test_zero_target_follows_what_the_rows_label(scripts):
    """zero_target -1 (default): 0.45 where rows are timed events (an unnamed entry may be an
    unannotated call), 0 where they label whole clips (a clip names its species); a value set
    by the user is kept either way."""
    from types import SimpleNamespace
    stage3 = scripts("04_train_stage3")
    events, clips = SimpleNamespace(clips=False), SimpleNamespace(clips=True)
    assert stage3.CFG().zero_target < 0
    assert stage3.zero_target_for(-1.0, events) == 0.45
    assert stage3.zero_target_for(-1.0, clips) == 0.0
    assert stage3.zero_target_for(0.3, clips) == 0.3
    assert stage3.zero_target_for(0.0, events) == 0.0
