"""The TwoStream batch sampler of the recipe's stages 2 and 3.

Every batch holds `tp_per_batch` rows of the TP stream and `fp_per_batch` rows of the FP
stream. TP rows are permuted each epoch; FP rows come from an endless stream of reshuffled
permutations that continues across epochs. An epoch is #TP // tp_per_batch batches.
Everything is a pure function of (seed, epoch), so a run is reproducible and resumable, and
under torchrun every rank draws the same batches and keeps its own shard (common.dist).
"""
from __future__ import annotations

import numpy as np
import torch

from common import dist


def endless_slice(n: int, start: int, count: int, seed: int) -> np.ndarray:
    """Items [start, start + count) of the concatenation of permutations perm_0, perm_1, ...
    of range(n), where perm_j is drawn from (seed, j)."""
    out = np.empty(count, dtype=np.int64)
    pos = 0
    while pos < count:
        j, offset = divmod(start + pos, n)
        perm = np.random.default_rng([seed, j]).permutation(n)
        take = min(count - pos, n - offset)
        out[pos:pos + take] = perm[offset:offset + take]
        pos += take
    return out


class TwoStreamSampler(torch.utils.data.Sampler):
    """Yields lists of dataset indices: TP rows are 0..n_tp-1, FP rows n_tp..n_tp+n_fp-1."""

    def __init__(self, n_tp: int, n_fp: int, tp_per_batch: int, fp_per_batch: int, seed: int = 0,
                 tp_epoch_rows: int | None = None, min_batches: int = 0):
        """`tp_epoch_rows` (< n_tp) sets the epoch to tp_epoch_rows // tp_per_batch batches
        and draws the TP stream endlessly too: stage 3 adds thousands of pseudo-positive
        windows to the TP stream but keeps the recipe's epoch length (#TP rows).
        `min_batches` is a floor on the batches of an epoch (small data: more steps, the TP
        stream drawn endlessly as well)."""
        if n_tp < tp_per_batch or tp_per_batch < 1:
            raise ValueError(f"{n_tp} TP rows cannot fill batches of {tp_per_batch} TP rows")
        self.n_tp, self.n_fp = n_tp, n_fp
        self.tp_epoch_rows = min(tp_epoch_rows or n_tp, n_tp)
        self.tp_per_batch = tp_per_batch
        self.min_batches = int(min_batches)
        self.fp_per_batch = fp_per_batch if n_fp > 0 else 0
        self.seed, self.epoch = seed, 0
        # under torchrun each rank keeps a disjoint part of both streams of every batch
        self.rank, self.world = dist.rank_world()
        if self.tp_per_batch < self.world:
            raise ValueError(f"tp_per_batch={tp_per_batch} cannot be split over {self.world} "
                             "ranks; use at least one TP row per rank")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return max(self.tp_epoch_rows // self.tp_per_batch, self.min_batches)

    def __iter__(self):
        n_batches = len(self)
        if self.tp_epoch_rows == self.n_tp and n_batches * self.tp_per_batch <= self.n_tp:
            tp = np.random.default_rng([self.seed, 1_000_003, self.epoch]).permutation(self.n_tp)
        else:
            count = n_batches * self.tp_per_batch
            tp = endless_slice(self.n_tp, self.epoch * count, count, self.seed + 1_000_003)
        fp_count = n_batches * self.fp_per_batch
        fp = endless_slice(self.n_fp, self.epoch * fp_count, fp_count, self.seed) + self.n_tp \
            if fp_count else np.empty(0, dtype=np.int64)
        for b in range(n_batches):
            tp_part = tp[b * self.tp_per_batch:(b + 1) * self.tp_per_batch]
            fp_part = fp[b * self.fp_per_batch:(b + 1) * self.fp_per_batch]
            yield [int(i) for i in np.concatenate([dist.shard(tp_part, self.rank, self.world),
                                                   dist.shard(fp_part, self.rank, self.world)])]
