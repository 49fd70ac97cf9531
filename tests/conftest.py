"""Shared test helpers: import the numbered scripts as modules, run them as a user would."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
torch.set_num_threads(2)


def load_script(name: str):
    """Import a numbered script (e.g. '03_pseudo_label') as a module."""
    spec = importlib.util.spec_from_file_location(f"script_{name}", ROOT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def run_script(name: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run `python <name>.py args...` from the repo root, as `make demo` does."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / f"{name}.py"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"{name} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                             f"{proc.stderr[-5000:]}")
    return proc


class ArrayCache:
    """In-memory stand-in for common.audio.WaveCache: length() and zero-padded crop()."""

    def __init__(self, waves: dict):
        self.waves = waves

    def length(self, rid):
        return len(self.waves[rid])

    def dtype(self, rid):
        return self.waves[rid].dtype

    def read_into(self, rid, start, out):
        piece = self.waves[rid][max(0, start):max(0, start) + len(out)]
        out[:len(piece)] = piece
        out[len(piece):] = 0
        return out

    def crop(self, rid, start, length, stored=False):
        out = self.read_into(rid, start, np.empty(length, dtype=self.waves[rid].dtype))
        return out if stored else out.astype(np.float32)


@pytest.fixture(scope="session")
def scripts():
    return load_script
