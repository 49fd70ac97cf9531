"""Input and work directories: Kaggle's paths when running in a Kaggle kernel, else local ones."""
from __future__ import annotations

import os
from pathlib import Path

KAGGLE_INPUT = Path("/kaggle/input")
KAGGLE_RFCX = KAGGLE_INPUT / "rfcx-species-audio-detection"
KAGGLE_WORKING = Path("/kaggle/working")
DEMO_INPUT = Path("data/demo")
BIRDCLEF_DEMO_INPUT = Path("data/birdclef_demo")  # the BirdCLEF-layout demo (common.demos.birdclef)
BIRDCLEF2023_DEMO_INPUT = Path("data/birdclef2023_demo")  # 2023-2025 layout (common.demos.birdclef2023)


def default_input_dir() -> str:
    """The RFCx competition data on Kaggle, else the embedded demo dataset folder."""
    return str(KAGGLE_RFCX) if KAGGLE_RFCX.is_dir() else str(DEMO_INPUT)


def default_work_dir() -> str:
    """Kaggle's writable folder in a kernel, else ./work (INPUT_DIR is never written)."""
    return str(KAGGLE_WORKING) if KAGGLE_INPUT.is_dir() else "work"


def is_demo_input(input_dir: str | os.PathLike, demo: Path = DEMO_INPUT) -> bool:
    return Path(input_dir).resolve() == demo.resolve()
