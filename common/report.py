"""Print the headline figures of WORK_DIR/summary.json (the end of `make demo`).

    python -m common.report --work_dir=work [--seconds=512]   # also records the total time
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from common import runs
from common.cli import parse_cfg

STAGES = ("preprocess", "stage1", "stage2", "pseudo", "stage3", "ensemble")
FIGURES = ("cv_lwlrap", "test_lwlrap", "test_prevalence_baseline", "cv_f1", "local_f1",
           "soundscape_f1", "seconds")


@dataclass
class CFG:
    work_dir: str = "work"
    seconds: float = 0.0   # wall time of the whole pipeline, recorded as demo.seconds


def render(summary: dict, path="work/summary.json") -> str:
    lines = ["", "=" * 72, f"summary ({path})"]
    for name in STAGES:
        figs = summary.get(name)
        if not figs:
            continue
        parts = [f"{k} {figs[k]:.4f}" if isinstance(figs[k], float) and k != "seconds"
                 else f"{k} {figs[k]}" for k in FIGURES if k in figs]
        lines.append(f"  {name:10s} " + "  ".join(parts) + f"  [{figs.get('tag', '')}]")
    if "demo" in summary:
        lines.append(f"  total      {summary['demo']['seconds']:.0f} s")
    lines.append("=" * 72)
    return "\n".join(lines)


def main(cfg: CFG) -> str:
    if cfg.seconds:
        runs.update_summary(cfg.work_dir, "demo", {"seconds": cfg.seconds})
    path = Path(cfg.work_dir) / "summary.json"
    text = render(json.loads(path.read_text()), path) if path.exists() else f"no {path} yet"
    print(text, flush=True)
    return text


if __name__ == "__main__":
    main(parse_cfg(CFG, "report"))
