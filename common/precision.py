"""Which number format the model computes in: `amp=auto|none|bf16|fp16` for training, and the
precision of the OpenVINO graph (05's `--runtime=openvino`).

bf16 pays only where the hardware computes it: a GPU, or a CPU whose flags show AVX512-BF16
or AMX. Elsewhere torch emulates bf16 on the CPU (16x slower than fp32 for the demo's training
step on an AVX2-only EPYC, measured 2026-11-29), so `auto` takes bf16 only where it is native
and float32 everywhere else: a Kaggle CPU kernel without these flags trains as before.
"""
from __future__ import annotations

from pathlib import Path

import torch

AMPS = ("none", "bf16", "fp16", "auto")
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags() -> set:
    """The CPU feature flags of this machine (empty where /proc/cpuinfo is not readable)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def native_bf16(device) -> bool:
    """Whether `device` computes bf16 natively: a GPU that supports it, or a CPU whose flags
    show AVX512-BF16 or AMX."""
    if str(device).startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return any(flag in cpu_flags() for flag in CPU_BF16_FLAGS)


def resolve_amp(amp: str, device) -> str:
    """`amp` as the training loop uses it ('none', 'bf16' or 'fp16'): `auto` becomes bf16
    where the device has it natively, else none; fp16 is CUDA only. A value outside AMPS
    stops with the choices."""
    amp = str(amp).lower()
    if amp not in AMPS:
        raise ValueError(f"amp={amp!r}: choose one of {', '.join(AMPS)}")
    if amp == "auto":
        return "bf16" if native_bf16(device) else "none"
    if amp == "fp16" and not str(device).startswith("cuda"):
        raise ValueError("amp=fp16 needs a CUDA device; on the CPU use amp=bf16 or auto")
    return amp


def describe(amp: str, device) -> str:
    """One line saying what `amp` resolved to and why, for the run's log."""
    got = resolve_amp(amp, device)
    if str(amp).lower() != "auto":
        return f"mixed precision: {got}"
    why = "native on this device" if got == "bf16" else "not native on this device"
    return f"mixed precision: auto -> {got} (bf16 {why})"
