"""The BirdCLEF layout: secondary_labels parsing, the rows it adds to the annotation table,
errors that name the file and row, and the demo generator's layout."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from common.data import clip_anchors
from common.layouts import birdclef2021 as birdclef
from common.cli import ConfigError


@pytest.mark.parametrize("text,expected", [
    ("['amerob', 'norcar']", ["amerob", "norcar"]), ("[]", []), ("", []), (float("nan"), []),
    ('["rewbla"]', ["rewbla"]), ("'solo'", ["solo"]), ("[' sp01 ', '']", ["sp01"])])
def test_parse_secondary(text, expected):
    assert birdclef.parse_secondary(text) == expected


@pytest.mark.parametrize("text", ["[amerob]", "__import__('os').system('true')", "[1, 2]",
                                  "{'a': 1}"])
def test_parse_secondary_rejects_non_lists_without_evaluating(text):
    with pytest.raises(ConfigError, match="train_metadata.csv row 7"):
        birdclef.parse_secondary(text, "train_metadata.csv row 7")


def write_layout(root, secondary="['b']"):
    pd.DataFrame({"primary_label": ["a", "b", "c"], "secondary_labels": [secondary, "[]", "['zzz']"],
                  "filename": ["XC1.ogg", "XC2.ogg", "XC3.ogg"]}).to_csv(root / "train_metadata.csv",
                                                                     index=False)
    pd.DataFrame({"row_id": ["11_COR_5", "11_COR_10", "11_COR_15"], "site": "COR",
                  "audio_id": 11, "seconds": [5, 10, 15], "birds": ["a c", "nocall", "b"]}
                 ).to_csv(root / "train_soundscape_labels.csv", index=False)
    (root / "train_soundscapes").mkdir()
    (root / "train_soundscapes" / "11_COR_20190904.ogg").write_bytes(b"")


def test_annotation_rows_of_clips_and_soundscape_segments(tmp_path):
    write_layout(tmp_path)
    assert birdclef.detect(tmp_path)
    meta = birdclef.read_metadata(tmp_path)
    assert meta["path"].iloc[0].endswith("train_short_audio/a/XC1.ogg")
    segments, files = birdclef.read_soundscapes(tmp_path)
    assert files == [("11_COR_20190904", str(tmp_path / "train_soundscapes" / "11_COR_20190904.ogg"))]
    assert segments[["t_min", "t_max"]].to_numpy().tolist() == [[0, 5], [5, 10], [10, 15]]
    classes = birdclef.classes_of(meta)
    durations = {"XC1": 7.5, "XC2": 12.0, "XC3": 3.0, "11_COR_20190904": 15.0}
    ann = birdclef.annotations(meta, segments, durations, classes, 32000)
    clip = ann[ann["source"] != "soundscape"]
    assert clip[["recording_id", "class", "t_min", "t_max", "label", "source"]].values.tolist() == [
        ["XC1", "a", 0.0, 7.5, 1, "primary"], ["XC2", "b", 0.0, 12.0, 1, "primary"],
        ["XC3", "c", 0.0, 3.0, 1, "primary"], ["XC1", "b", 0.0, 7.5, 1, "secondary"],
        ["XC3", "zzz", 0.0, 3.0, 1, "secondary"]]  # zzz is no class: 01 drops and counts it
    scape = ann[ann["source"] == "soundscape"]
    pos = scape[scape["label"] > 0]
    assert sorted(zip(pos["class"], pos["t_min"], pos["t_max"])) == [
        ("a", 0, 5), ("b", 10, 15), ("c", 0, 5)]
    neg = scape[scape["label"] < 0]  # nocall: a -1 row for every class
    assert sorted(neg["class"]) == classes and set(zip(neg["t_min"], neg["t_max"])) == {(5, 10)}
    assert np.allclose(ann["f_max"], 16000.0)
    no_sec = birdclef.annotations(meta, segments, durations, classes, 32000, secondary=False)
    assert "secondary" not in set(no_sec["source"])
    without_xc2 = birdclef.annotations(meta, segments, {"XC1": 7.5}, classes, 32000)
    assert set(without_xc2["recording_id"]) == {"XC1"}  # undecodable files add no rows


def test_bad_metadata_cell_names_file_and_row(tmp_path):
    write_layout(tmp_path, secondary="[oops")
    with pytest.raises(ConfigError, match=r"train_metadata.csv row 2: secondary_labels"):
        birdclef.read_metadata(tmp_path)


def test_soundscape_without_file_names_the_audio_id(tmp_path):
    write_layout(tmp_path)
    (tmp_path / "train_soundscapes" / "11_COR_20190904.ogg").unlink()
    with pytest.raises(ConfigError, match=r"audio_id \['11'\]"):
        birdclef.read_soundscapes(tmp_path)


def test_duplicate_clip_names_are_refused(tmp_path):
    pd.DataFrame({"primary_label": ["a", "b"], "secondary_labels": "[]",
                  "filename": ["XC1.ogg", "XC1.ogg"]}).to_csv(tmp_path / "train_metadata.csv",
                                                              index=False)
    with pytest.raises(ConfigError, match="more than once"):
        birdclef.read_metadata(tmp_path)


def test_cap_per_class_keeps_at_most_n_recordings_per_class():
    from common.data import cap_per_class
    rows = pd.DataFrame({"recording_id": [f"r{i}" for i in range(30)],
                         "class": ["a"] * 20 + ["b"] * 10, "t_min": 0.0, "t_max": 5.0})
    capped = cap_per_class(rows, 8, seed=1)
    assert capped.groupby("class")["recording_id"].nunique().to_dict() == {"a": 8, "b": 8}
    assert capped.equals(cap_per_class(rows, 8, seed=1))          # fixed for a run
    assert cap_per_class(rows, 0, seed=1).equals(rows)            # 0 = all
    assert len(cap_per_class(rows, 28, seed=1)) == 30


def test_clip_anchors_cover_the_clip():
    rows = pd.DataFrame({"recording_id": ["x", "y"], "class": ["a", "b"], "t_min": 0.0,
                         "t_max": [23.0, 4.0], "label": 1})
    anchors = clip_anchors(rows, 5.0, 4)
    x = anchors[anchors["recording_id"] == "x"]
    assert len(x) == 4 and x["t_min"].iloc[0] == 0 and x["t_max"].iloc[-1] == 23.0
    assert np.allclose(x["t_max"].to_numpy() - x["t_min"].to_numpy(), 23.0 / 4)
    assert len(anchors[anchors["recording_id"] == "y"]) == 1


def test_input_mixup_mixes_waves_and_unites_labels():
    import torch
    from common.noise import input_mixup
    torch.manual_seed(0)
    wave = torch.stack([torch.ones(100), -torch.ones(100), torch.zeros(100)])
    targets = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 0]])
    mixed, united = input_mixup(wave, targets, 0.4)
    torch.manual_seed(0)  # the same draws: lam first, then the permutation
    lam = torch.distributions.Beta(0.4, 0.4).sample()
    perm = torch.randperm(3)
    assert torch.allclose(mixed, lam * wave + (1 - lam) * wave[perm])
    assert torch.equal(united, torch.maximum(targets, targets[perm]))
    assert (united >= targets).all()
    frames = torch.tensor([[[1, -1]], [[-1, -1]], [[0, -1]]], dtype=torch.int8)  # (B, T=1, K=2)
    torch.manual_seed(0)
    _, _, framed = input_mixup(wave, targets, 0.4, frames)
    for i, j in enumerate(perm.tolist()):  # +1 where either is +1; -1 only where both are -1
        a, b = frames[i, 0].tolist(), frames[j, 0].tolist()
        want = [1 if 1 in (x, y) else -1 if x == y == -1 else 0 for x, y in zip(a, b)]
        assert framed[i, 0].tolist() == want
