"""Launched by tests/test_ddp.py under torchrun (2 CPU processes, gloo): every rank records
its shard of the stage-1 and TwoStream batch streams (rank 0 writes them all to
WORK_DIR/shards.json), then 02_train_stage1 runs for real under DistributedDataParallel.

    torchrun --standalone --nproc_per_node=2 tests/ddp_probe.py --work_dir=... [stage-1 flags]
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.distributed as tdist  # noqa: E402

from common import dist, stage  # noqa: E402
from common.cli import parse_cfg  # noqa: E402
from common.prepared import load_prepared  # noqa: E402
from common.sampling import TwoStreamSampler  # noqa: E402
from tests.conftest import load_script  # noqa: E402

TWO_STREAM = dict(n_tp=20, n_fp=30, tp_per_batch=4, fp_per_batch=4, seed=1)


def batch_streams(s1, cfg, device) -> dict:
    """This process's batches of epoch 1 of fold 0 (stage 1) and of the TwoStream sampler."""
    prep = load_prepared(cfg.work_dir, cfg.preprocess)
    mcfg = stage.model_cfg(cfg, prep.classes, prep.sample_rate)
    _, make_loader, _, _ = s1.make_fold(cfg, prep, 0, mcfg, device)
    sampler = TwoStreamSampler(**TWO_STREAM)
    sampler.set_epoch(1)
    return {"stage1": [list(b) for b in make_loader(1).batch_sampler], "two_stream": list(sampler)}


def main(argv: list[str]) -> None:
    torch.set_num_threads(1)
    device = dist.setup("cpu")
    s1 = load_script("02_train_stage1")
    cfg = parse_cfg(s1.CFG, "stage1", argv)
    rank, world = dist.rank_world()
    parts = [None] * world
    tdist.all_gather_object(parts, batch_streams(s1, cfg, device))
    if rank == 0:
        Path(cfg.work_dir, "shards.json").write_text(json.dumps({"world": world, "ranks": parts}))
    s1.main(cfg)
    tdist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
