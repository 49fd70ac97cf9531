"""The shared training loop's data handling: float16 waves become float32 on the device,
a non-finite loss stops the run naming where, and the loader's worker rule."""
from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from common import dist
from common.train import train_epoch


class Linear(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 1)

    def forward(self, wave):
        return self.fc(wave)


def batches(n, dtype=torch.float16):
    gen = torch.Generator().manual_seed(0)
    return [(torch.randn(4, 8, generator=gen).to(dtype), torch.ones(4, 1)) for _ in range(n)]


def test_float16_waves_reach_the_step_as_float32_and_the_mean_loss_is_returned():
    model, seen = Linear(), []

    def step(m, batch):
        seen.append((batch[0].dtype, batch[1].dtype))
        return ((m(batch[0]) - batch[1]) ** 2).mean()

    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: every batch sees the same model
    data = batches(3)
    loss = train_epoch(model, data, step, opt, torch.device("cpu"))
    assert seen == [(torch.float32, torch.float32)] * 3
    with torch.no_grad():
        expected = sum(((model(w.float()) - y) ** 2).mean().item() for w, y in data) / 3
    assert loss == pytest.approx(expected, rel=1e-6)


def test_non_finite_loss_stops_the_run_naming_the_batch():
    model = Linear()
    calls = []

    def step(m, batch):
        calls.append(1)
        loss = m(batch[0]).mean()
        return loss * float("nan") if len(calls) == 2 else loss

    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with pytest.raises(FloatingPointError, match="batch 1;"):
        train_epoch(model, batches(4, torch.float32), step, opt, torch.device("cpu"), desc="f0")
    assert len(calls) == 2  # stopped at once on the CPU


def test_empty_loader_gives_zero_loss():
    assert train_epoch(Linear(), [], lambda m, b: None, torch.optim.SGD(Linear().parameters(), lr=0.1),
                       torch.device("cpu")) == 0.0


def test_loader_workers_auto_none_on_cpu_some_on_gpu_explicit_kept():
    assert dist.loader_workers(-1, "cpu") == 0
    assert dist.loader_workers(-1, "cuda") == min(4, max((os.cpu_count() or 1) - 1, 0))
    assert dist.loader_workers(3, "cuda") == 3 and dist.loader_workers(2, "cpu") == 2
    loader = dist.loader(list(range(10)), [[0, 1], [2, 3]], "cpu", num_workers=-1)
    assert loader.num_workers == 0 and not loader.pin_memory
    assert [b.tolist() for b in loader] == [[0, 1], [2, 3]]


def test_check_loss_names_the_batches_since_the_last_check():
    from common.train import check_loss
    assert check_loss(torch.tensor(6.0), 3, "f0", 0, 2) == 2.0
    with pytest.raises(FloatingPointError, match="f0: loss became nan in batches 25-29;"):
        check_loss(torch.tensor(float("nan")), 4, "f0", 25, 29)


def test_min_epoch_steps_raises_crops_per_row(scripts):
    s1 = scripts("02_train_stage1")
    cfg = s1.CFG(batch_size=32, crops_per_row=2, min_epoch_steps=50)
    # 250 rows x 2 crops = 16 batches; 50 steps need ceil(50 * 32 / 250) = 7 crops per row
    assert s1.crops_per_row(cfg, 250, 0) == 7
    assert s1.crops_per_row(cfg, 5000, 0) == 2  # enough rows: the floor does nothing
    cfg.min_epoch_steps = 0
    assert s1.crops_per_row(cfg, 250, 0) == 2
