"""Sweeps: run 02_train_stage1.py once per point of a grid of overrides, sequentially.

Every run adds its row to WORK_DIR/experiments.csv/.md as usual; the sweep also writes
WORK_DIR/sweeps/<name>.md (one table per backbone, the best local F1 of each in bold, as
in the seed's log; LWLRAP for RFCx data) and <name>.csv. The preprocessing run is made
first when WORK_DIR has none. A sweep run again with the same --name skips finished runs.

Grid file (JSON): "axes" is a list of axes, each a list of override dicts (or
{"key": [values]}); every combination is one run. "runs" adds single runs (override dicts);
"base" (optional) holds overrides for every run.

    {"axes": [{"backbone": ["resnet10t", "cnn10"]},
              [{"n_mels": 64, "hop_length": 640}, {"n_mels": 128, "hop_length": 320}]],
     "runs": [{"noise_white": 0, "noise_pink": 0, "noise_brown": 0, "memo": "no noise"}]}

Examples:
    python sweep.py --profile=profiles/birdclef_demo.json --grid_file=profiles/birdclef_sweep.json
    python sweep.py --profile=profiles/birdclef_demo.json --grid='{"axes": [{"max_per_class": [4, 12]}]}'
    python sweep.py --profile=profiles/demo.json --grid='{"runs": [{"backbone": "resnet18"}]}' --folds=0,1
"""
from __future__ import annotations

import itertools
import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from common import paths, runs
from common.cli import ConfigError, run

ROOT = Path(__file__).resolve().parent


@dataclass
class CFG:
    input_dir: str = ""        # "" = the profile's input_dir, else the scripts' default
    work_dir: str = field(default_factory=paths.default_work_dir)
    profile: str = ""          # override file passed to 01 and to every run (--cfg_file)
    grid_file: str = ""        # JSON grid (see the docstring)
    grid: str = ""             # the same JSON inline
    folds: str = "0"           # folds of every run (the seed: fold 0)
    name: str = ""             # sweep name; default a timestamp; tags are <name>_<i>
    dry_run: bool = False      # print the commands only


def expand(grid: dict) -> list[dict]:
    """Override dicts of every run: the product of the axes, then the single runs."""
    unknown = set(grid) - {"axes", "runs", "base"}
    if unknown:
        raise ConfigError(f"grid keys {sorted(unknown)} unknown; use 'axes', 'runs', 'base'")
    axes = []
    for axis in grid.get("axes", []):
        if isinstance(axis, dict):  # {"key": [values]} shorthand
            (key, values), *more = axis.items()
            if more or not isinstance(values, list):
                raise ConfigError(f"grid axis {axis}: write one key with a list of values, "
                                  "or a list of override dicts")
            axis = [{key: v} for v in values]
        axes.append(axis)
    points = [dict(p for d in combo for p in d.items()) for combo in itertools.product(*axes)] \
        if axes else []
    return [{**grid.get("base", {}), **p} for p in points + list(grid.get("runs", []))]


def arg(key: str, value) -> str:
    if isinstance(value, bool):
        value = str(value).lower()
    elif isinstance(value, list):
        value = ",".join(str(v) for v in value)
    return f"--{key}={value}"


def command(script: str, cfg: CFG, overrides: dict) -> list[str]:
    base = [sys.executable, str(ROOT / script), f"--work_dir={cfg.work_dir}"]
    base += [f"--cfg_file={cfg.profile}"] if cfg.profile else []
    base += [f"--input_dir={cfg.input_dir}"] if cfg.input_dir else []
    return base + [arg(k, v) for k, v in overrides.items()]


def load_grid(cfg: CFG) -> dict:
    if bool(cfg.grid_file) == bool(cfg.grid):
        raise ConfigError("give the grid as --grid_file=<json file> or --grid='<json>' (one of them)")
    text = Path(cfg.grid_file).read_text() if cfg.grid_file else cfg.grid
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"grid {cfg.grid_file or 'argument'} is not valid JSON: {err}") from None


def finished(work_dir, tag: str) -> bool:
    path = Path(work_dir) / "stage1" / tag / "manifest.json"
    return path.is_file() and json.loads(path.read_text()).get("finished", False)


def render(work_dir, tags: list[str], name: str) -> str:
    """The sweep's rows of experiments.csv, one table per backbone, written to sweeps/."""
    table = pd.read_csv(Path(work_dir) / "experiments.csv")
    table = table[table["run"].astype(str).isin(tags)]
    cols = [c for c in ("run", "backbone", "resolution", "batch_size", "local_f1", "soundscape_f1",
                        "cv_lwlrap", "memo") if c in table and table[c].notna().any()]
    md = runs.render_markdown(table[cols], group="backbone", title=f"Sweep {name}",
                              bold=("local_f1", "soundscape_f1", "cv_lwlrap"))
    runs.save_csv(Path(work_dir) / "sweeps" / f"{name}.csv", table)
    runs.atomic_write(Path(work_dir) / "sweeps" / f"{name}.md", lambda f: f.write(md))
    return md


def main(cfg: CFG) -> str:
    grid = load_grid(cfg)
    points, base = expand(grid), grid.get("base", {})
    name = cfg.name or runs.new_tag("sweep")
    todo = [(f"{name}_{i:02d}", p) for i, p in enumerate(points)]
    if not runs.list_runs(cfg.work_dir, "preprocess"):
        todo.insert(0, ("", None))
    failed, tic = [], time.time()
    for tag, overrides in todo:
        if overrides is None:
            cmd = command("01_preprocess.py", cfg, {})
        elif finished(cfg.work_dir, tag):
            print(f"{tag}: finished before, skipped", flush=True)
            continue
        else:
            memo = " ".join(f"{k}={v}" for k, v in overrides.items() if k != "memo"
                            and k not in base)
            extra = {"folds": cfg.folds, "tag": tag, **overrides,
                     "memo": f"{overrides.get('memo', '')} [{name}: {memo}]".strip()}
            cmd = command("02_train_stage1.py", cfg, extra)
        print(f"[{time.time() - tic:.0f}s] {' '.join(cmd[1:])}", flush=True)
        if not cfg.dry_run and subprocess.run(cmd, cwd=ROOT).returncode != 0:
            failed.append(tag or "preprocess")
            if overrides is None:
                raise SystemExit("error: preprocessing failed; see its message above")
    if cfg.dry_run:
        return ""
    md = render(cfg.work_dir, [t for t, _ in todo if t], name)
    print(md + f"\n{len(points)} runs in {time.time() - tic:.0f}s -> "
                f"{Path(cfg.work_dir) / 'sweeps' / name}.md", flush=True)
    if failed:
        raise SystemExit(f"error: runs {failed} failed; see their messages above")
    return md


if __name__ == "__main__":
    run(main, CFG, "sweep")
