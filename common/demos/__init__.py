"""The embedded demo datasets (no download), apart from the kit's core: `rfcx` (the RFCx
layout, data/demo) and `birdclef` (the BirdCLEF 2021 layout, data/birdclef_demo), both
built from the call synthesis in `calls`, `noise`, `plan` and `scene`; `birdclef2023` (the
BirdCLEF 2023-2025 layout) reuses `birdclef`'s clips and soundscapes."""
from __future__ import annotations

import argparse
import dataclasses
import importlib


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
