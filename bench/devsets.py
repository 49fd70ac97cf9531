"""The development table: the whole pipeline on each development set, one table.

Settings are chosen by CV (OOF) figures on more than our own demo: this runs `make demo`'s
chain (01, 02, 04 stage 2, 03, 04 stage 3, 05 with stage 3 + stage 1) with one profile on
  - demo       the embedded demo (data/demo, written on first use),
  - demo_hard  a harder variant of it (fewer TP rows per class, 40 s recordings, half the
               train recordings FP-only, denser unannotated calls, drones and rain),
  - nips4b     real NIPS4Bplus field recordings in the RFCx layout (../shared/devsets),
and prints, per dataset and stage: CV LWLRAP (raw and calibrated), test LWLRAP (raw and
calibrated), the prevalence baseline, seconds. The ensemble row's `cv` is the blend's CV (as
05 chose: calibrated or not), `test` the blend before the prior correction and `test_cal`
the submission's score. Test figures are reported, never used to choose a setting.

    python -m bench.devsets                          # all three, profiles/demo.json
    python -m bench.devsets --sets=nips4b --profile=my_variant.json   # a variant
    make devsets

Writes WORK_DIR/devsets/<set>/ (each a work folder) and WORK_DIR/devsets/table.md.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEVSETS = ROOT.parent / "shared" / "devsets"
HARD_SPEC = dict(seed=7, n_train=300, n_test=80, duration=40.0, fp_only_frac=0.5,
                 two_species_frac=0.05, second_row_prob=0.0, distractors=3.0,
                 train_background=0.5, drone_prob=0.7, rain_prob=0.5, snr_min_db=-8.0)
CHAIN = [("preprocess", "01_preprocess.py", []),
         ("stage1", "02_train_stage1.py", []),
         ("stage2", "04_train_stage3.py", ["--stage=stage2"]),
         ("pseudo", "03_pseudo_label.py", ["--source=stage2"]),
         ("stage3", "04_train_stage3.py", ["--stage=stage3"]),
         ("ensemble", "05_ensemble.py", ["--runs=stage3/latest,stage1/latest"])]


def input_dir(name: str, data_root: Path) -> Path:
    """The dataset folder; the hard demo variant is written on first use."""
    if name == "demo":
        return ROOT / "data" / "demo"
    if name == "demo_hard":
        out = data_root / "demo_hard"
        if not (out / "train_tp.csv").is_file():
            from common.demos.rfcx import DemoSpec, write_rfcx_demo
            print(f"writing the hard demo variant to {out}", flush=True)
            write_rfcx_demo(out, DemoSpec(**HARD_SPEC), workers=2)
        return out
    path = DEVSETS / name
    if not path.is_dir():
        raise SystemExit(f"error: no development set {path}; ../shared/devsets must sit beside "
                         "the repository")
    return path


def run_chain(name: str, work: Path, profile: str, data_root: Path) -> None:
    io = [f"--cfg_file={profile}", f"--input_dir={input_dir(name, data_root)}", f"--work_dir={work}"]
    for stage, script, args in CHAIN:
        tic = time.time()
        print(f"[{name}] {script} {' '.join(args + io)}", flush=True)
        subprocess.run([sys.executable, str(ROOT / script), *args, *io], cwd=ROOT, check=True)
        print(f"[{name}] {stage} done in {time.time() - tic:.0f} s", flush=True)


def rows_of(name: str, work: Path) -> list[dict]:
    summary = json.loads((work / "summary.json").read_text())
    rows = []
    for stage in ("stage1", "stage2", "stage3", "ensemble"):
        figs = summary.get(stage, {})
        rows.append({"set": name, "stage": stage,
                     "cv": figs.get("cv_lwlrap"), "cv_cal": figs.get("cv_lwlrap_calibrated"),
                     "test": figs.get("test_lwlrap_no_prior", figs.get("test_lwlrap")),
                     "test_cal": figs.get("test_lwlrap_calibrated", figs.get("test_lwlrap")
                                          if stage == "ensemble" else None),
                     "baseline": summary.get("stage1", {}).get("test_prevalence_baseline"),
                     "seconds": figs.get("seconds")})
    pseudo = summary.get("pseudo", {})
    rows.append({"set": name, "stage": f"pseudo ({pseudo.get('positives', 0)} windows)",
                 "seconds": pseudo.get("seconds")})
    return rows


def render(rows: list[dict]) -> str:
    cols = ["set", "stage", "cv", "cv_cal", "test", "test_cal", "baseline", "seconds"]
    fmt = lambda v: "" if v is None else f"{v:.4f}" if isinstance(v, float) and v < 10 \
        else f"{v:.0f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sets", default="demo,demo_hard,nips4b")
    parser.add_argument("--profile", default="profiles/demo.json")
    parser.add_argument("--work_dir", default="work")
    parser.add_argument("--table_only", action="store_true", help="only print the table of earlier runs")
    opts = parser.parse_args(argv)
    base = Path(opts.work_dir).resolve() / "devsets"
    rows = []
    for name in opts.sets.split(","):
        work = base / name
        if not opts.table_only:
            run_chain(name, work, opts.profile, base / "data")
        rows += rows_of(name, work)
    text = render(rows)
    base.mkdir(parents=True, exist_ok=True)
    (base / "table.md").write_text(text + "\n")
    print(text, flush=True)
    return text


if __name__ == "__main__":
    main()
