"""Stage 1 under torchrun with two CPU processes (gloo): each rank gets a disjoint shard of
every batch, the shards together are the single-process batches, only rank 0 writes, and the
checkpoint loads."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd
import pytest

from common import dist, runs, stage
from common.cli import parse_cfg
from common.demos.rfcx import DemoSpec, write_rfcx_demo
from common.prepared import load_prepared
from common.sampling import TwoStreamSampler
from common.sed import load_checkpoint
from tests.conftest import ROOT
from tests.ddp_probe import TWO_STREAM

STAGE1 = ["--cfg_file=profiles/demo.json", "--folds=0", "--epochs=1", "--batch_size=4",
          "--crops_per_row=1", "--device=cpu", "--tag=ddp"]


def assert_sharded(single: list, ranks: list) -> None:
    """Batch b of every rank: disjoint, and together the single-process batch b."""
    world = len(ranks)
    assert all(len(r) == len(single) for r in ranks)  # the same number of steps everywhere
    for b, batch in enumerate(single):
        parts = [r[b] for r in ranks]
        assert all(len(p) >= 1 for p in parts)
        flat = [i for p in parts for i in p]
        assert len(flat) == len(set(flat)), f"batch {b}: ranks share rows {parts}"
        assert sorted(flat) == sorted(batch), f"batch {b}: shards {parts} != batch {batch}"
    assert world == 2


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory, scripts):
    root = tmp_path_factory.mktemp("ddp")
    data, work = root / "data", root / "work"
    write_rfcx_demo(data, DemoSpec(seed=4, n_train=24, n_test=2, duration=5.0,
                                   sample_rate=32000), workers=1)
    pre = scripts("01_preprocess")
    pre.main(parse_cfg(pre.CFG, "preprocess", ["--cfg_file=profiles/demo.json", f"--input_dir={data}",
                                               f"--work_dir={work}", "--n_folds=2", "--workers=1"]))
    args = [*STAGE1, f"--input_dir={data}", f"--work_dir={work}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node=2", str(ROOT / "tests" / "ddp_probe.py"), *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"torchrun failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return work, args, proc


def test_every_batch_stream_is_split_into_disjoint_complete_shards(ddp_run, scripts):
    work, args, _ = ddp_run
    shards = json.loads((work / "shards.json").read_text())
    s1 = scripts("02_train_stage1")
    cfg = parse_cfg(s1.CFG, "stage1", args)
    prep = load_prepared(work, "latest")
    mcfg = stage.model_cfg(cfg, prep.classes, prep.sample_rate)
    _, make_loader, _, _ = s1.make_fold(cfg, prep, 0, mcfg, dist.setup("cpu"))
    single = [list(b) for b in make_loader(1).batch_sampler]  # this process: world size 1
    assert len(single) >= 2
    assert_sharded(single, [r["stage1"] for r in shards["ranks"]])
    sampler = TwoStreamSampler(**TWO_STREAM)
    sampler.set_epoch(1)
    ranks = [r["two_stream"] for r in shards["ranks"]]
    assert_sharded(list(sampler), ranks)
    for r in ranks:  # each rank keeps TP and FP rows of every batch (2 + 2 of 4 + 4)
        assert all(sum(i < 20 for i in b) == 2 and len(b) == 4 for b in r)


def test_only_rank_zero_writes_and_the_checkpoint_loads(ddp_run):
    work, _, proc = ddp_run
    run_dir = work / "stage1" / "ddp"
    assert runs.read_manifest(run_dir)["finished"]
    assert [p.name for p in (work / "stage1").iterdir()] == ["ddp"]  # one run, not one per rank
    history = pd.read_csv(run_dir / "history.csv")
    assert list(history["epoch"]) == [0]
    assert proc.stdout.count("stage1 CV LWLRAP") == 1  # the summary line of rank 0 only
    model, ckpt = load_checkpoint(run_dir / "fold0.pth")
    assert ckpt["fold"] == 0 and ckpt["epoch"] == 0
    assert len(pd.read_csv(work / "experiments.csv")) == 1
