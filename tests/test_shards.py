"""Preprocessing split into shards (--shard=i/n) and merged (--shard=merge) gives the run
that one unsplit preprocessing run gives; a missing or stale shard stops the merge."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from common import shards
from common.cli import ConfigError, parse_cfg
from common.demos.rfcx import DemoSpec, write_rfcx_demo


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    data = tmp_path_factory.mktemp("shards") / "data"
    write_rfcx_demo(data, DemoSpec(seed=5, n_train=14, n_test=4, duration=4.0,
                                   sample_rate=32000), workers=1)
    return data


def preprocess(scripts, data, work, *args):
    pre = scripts("01_preprocess")
    argv = [f"--input_dir={data}", f"--work_dir={work}", "--sample_rate=16000", "--n_folds=2",
            "--workers=1", *args]
    return pre.main(parse_cfg(pre.CFG, "preprocess", argv))


def test_three_shards_merge_into_the_unsplit_run(scripts, demo, tmp_path):
    whole = preprocess(scripts, demo, tmp_path / "a", "--tag=whole")
    for i in range(3):
        out = preprocess(scripts, demo, tmp_path / "b", "--tag=split", f"--shard={i}/3")
        assert out.name == f"{i}-of-3.json"
    parts = [json.loads(p.read_text()) for p in sorted((tmp_path / "b/preprocess/split/shards").iterdir())]
    paths = [f[2] for p in parts for f in p["files"]]
    assert len(paths) == len(set(paths)) == 18  # disjoint and complete: 14 train + 4 test
    merged = preprocess(scripts, demo, tmp_path / "b", "--tag=split", "--shard=merge")
    for name in ("recordings.csv", "annotations.csv", "folds.csv"):
        pd.testing.assert_frame_equal(pd.read_csv(merged / name), pd.read_csv(whole / name))
    for wave in sorted((whole / "waves").glob("*.npy")):
        np.testing.assert_array_equal(np.load(merged / "waves" / wave.name), np.load(wave))
    assert json.loads((merged / "manifest.json").read_text())["finished"]


def test_merge_names_the_missing_shard_and_a_shard_needs_a_tag(scripts, demo, tmp_path):
    preprocess(scripts, demo, tmp_path, "--tag=t", "--shard=0/2")
    with pytest.raises(ConfigError, match=r"shards \[1\] of 2 are missing.*--shard=1/2"):
        preprocess(scripts, demo, tmp_path, "--tag=t", "--shard=merge")
    with pytest.raises(ConfigError, match="needs --tag"):
        preprocess(scripts, demo, tmp_path, "--shard=1/2")


def test_merge_rejects_a_shard_made_from_other_files(tmp_path):
    files = [(f"r{i}", "train", f"/in/r{i}.flac") for i in range(4)]
    for i in range(2):
        mine = shards.select(files, i, 2)
        results = [{"recording_id": r, "split": s, "path": p, "ok": True} for r, s, p in mine]
        shards.runs.save_json(shards.shard_file(tmp_path, i, 2),
                              {"index": i, "count": 2, "files": mine, "results": results})
    assert [r["recording_id"] for r in shards.merge(tmp_path, files)] == ["r0", "r1", "r2", "r3"]
    with pytest.raises(ConfigError, match="0-of-2.json lists other files"):
        shards.merge(tmp_path, files + [("r9", "test", "/in/r9.flac")])


@pytest.mark.parametrize("text", ["3/3", "1", "a/b", "-1/2", "0/0"])
def test_bad_shard_text_is_rejected(text):
    with pytest.raises(ConfigError, match="shard="):
        shards.parse_shard(text)
