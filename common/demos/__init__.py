"""The embedded demo datasets (no download), apart from the kit's core: `rfcx` (the RFCx
layout, data/demo) and `birdclef` (the BirdCLEF 2021 layout, data/birdclef_demo), both
built from the call synthesis in `calls`, `noise`, `plan` and `scene`; `birdclef2023` (the
BirdCLEF 2023-2025 layout) reuses `birdclef`'s clips and soundscapes."""
from __future__ import annotations

import argparse
import dataclasses
import importlib
from pathlib import Path


def ensure_demo(input_dir, seed: int, workers: int, n_train: int, n_test: int,
                duration: float) -> None:
    """Write the embedded demo dataset of a demo folder (paths.*DEMO_INPUT) that does not
    hold it yet (01 calls this first); any other input_dir is left alone."""
    from common import layouts, paths
    if paths.is_demo_input(input_dir, paths.BIRDCLEF_DEMO_INPUT) and \
            not layouts.birdclef2021.detect(input_dir):
        from common.demos.birdclef import BirdDemoSpec, write_birdclef_demo
        print(f"writing the BirdCLEF-layout demo dataset to {input_dir}", flush=True)
        write_birdclef_demo(input_dir, BirdDemoSpec(seed=seed), workers=workers)
    if paths.is_demo_input(input_dir, paths.BIRDCLEF2023_DEMO_INPUT) and \
            not layouts.birdclef2023.detect(input_dir):
        from common.demos.birdclef2023 import Bird2023DemoSpec, write_birdclef2023_demo
        print(f"writing the BirdCLEF 2023-2025-layout demo dataset to {input_dir}", flush=True)
        write_birdclef2023_demo(input_dir, Bird2023DemoSpec(seed=seed), workers=workers)
    if not paths.is_demo_input(input_dir) or (Path(input_dir) / "train_tp.csv").exists():
        return
    from common.demos.rfcx import DemoSpec, write_rfcx_demo
    spec = DemoSpec(seed=seed, n_train=n_train, n_test=n_test, duration=duration)
    print(f"writing the demo dataset to {input_dir} ({spec})", flush=True)
    write_rfcx_demo(input_dir, spec, workers=workers)


def spec_cli(argv, description: str, default_out: str, module: str, spec: str,
             write: str) -> dict:
    """`python -m common.demos.<module> --out DIR --<spec field> ...`: one flag per field of
    the dataclass `spec` of `module` (tuples excluded), then `write(out, spec, workers)`.
    The writer is looked up in the imported module, not in __main__, so that worker
    processes unpickle it."""
    mod = importlib.import_module(f"common.demos.{module}")
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", default=default_out)
    parser.add_argument("--workers", type=int, default=2)
    for f in dataclasses.fields(getattr(mod, spec)):
        if f.type != "tuple":
            parser.add_argument(f"--{f.name}", type=type(f.default), default=f.default)
    args = vars(parser.parse_args(argv))
    out, workers = args.pop("out"), args.pop("workers")
    summary = getattr(mod, write)(out, getattr(mod, spec)(**args), workers)
    print(f"{description.rstrip('.')} in {out}: {summary}")
    return summary
