"""Issue 20 part 2: `amp=auto` takes bf16 only where the device computes it natively (a GPU
with bf16, a CPU with AVX512-BF16 or AMX); emulated bf16 on other CPUs is many times slower
than float32, so there it trains in float32 as before."""
from __future__ import annotations

import pytest
import torch

from common import precision
from common.train import autocast


def test_auto_follows_the_cpu_flags(monkeypatch):
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx2", "fma"})
    assert not precision.native_bf16("cpu")
    assert precision.resolve_amp("auto", "cpu") == "none"
    assert "not native" in precision.describe("auto", "cpu")
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx512f", "avx512_bf16"})
    assert precision.resolve_amp("auto", torch.device("cpu")) == "bf16"
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"amx_bf16", "amx_tile"})
    assert precision.resolve_amp("AUTO", "cpu") == "bf16"
    assert precision.describe("auto", "cpu") == "mixed precision: auto -> bf16 (bf16 native on this device)"


def test_explicit_values_pass_and_bad_ones_stop_with_the_choices(monkeypatch):
    monkeypatch.setattr(precision, "cpu_flags", lambda: set())
    assert precision.resolve_amp("bf16", "cpu") == "bf16"  # asked for: kept even if emulated
    assert precision.resolve_amp("none", "cpu") == "none"
    with pytest.raises(ValueError, match="none, bf16, fp16, auto"):
        precision.resolve_amp("half", "cpu")
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        precision.resolve_amp("fp16", "cpu")


def test_cpu_flags_reads_this_machine():
    flags = precision.cpu_flags()
    assert isinstance(flags, set)
    assert precision.native_bf16("cpu") == bool(flags & set(precision.CPU_BF16_FLAGS))


def test_autocast_under_auto_computes_in_what_it_resolves_to(monkeypatch):
    layer = torch.nn.Linear(4, 4)
    x = torch.randn(2, 4)
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx512_bf16"})
    with autocast(torch.device("cpu"), "auto"):
        assert layer(x).dtype == torch.bfloat16
    monkeypatch.setattr(precision, "cpu_flags", lambda: set())
    with autocast(torch.device("cpu"), "auto"):
        assert layer(x).dtype == torch.float32
