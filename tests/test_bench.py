"""`make bench` end to end at a tiny size: every figure and ratio of issue 6 is measured,
finite and written to bench.json, and the decode+resample bound is consistent with the
figures it comes from. (The targets themselves are checked by running the bench, not here:
speed is not a unit-test property.)"""
from __future__ import annotations

import json
import math
import subprocess
import sys

from tests.conftest import ROOT

RATIOS = ("preprocess_vs_librosa_ratio", "preprocess_vs_decode_ratio", "train_vs_model_ratio",
          "infer_vs_model_ratio", "memory_10x_length_ratio")


def test_bench_runs_and_writes_every_ratio(tmp_path):
    work, data = tmp_path / "work", tmp_path / "bench"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.bench", f"--work_dir={work}", f"--data_dir={data}",
         "--n_files=2", "--long_minutes=0.5", "--repeats=1", "--train_demo_recordings=12",
         "--workers=2"],
        cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads((work / "bench.json").read_text())
    for key in RATIOS:
        assert math.isfinite(result[key]) and result[key] > 0, key
        assert key in result["targets_met"]
    pre = result["preprocess"]
    for key in ("decode_only_x", "decode_resample_x", "librosa_loop_x", "preprocess_1_worker_x",
                "preprocess_x"):
        assert pre[key] > 0, key
    assert pre["audio_seconds"] == 120.0 and pre["workers"] == 2
    assert math.isclose(pre["decode_resample_bound_vs_librosa"],
                        2 * pre["decode_resample_x"] / pre["librosa_loop_x"], rel_tol=1e-9)
    assert math.isclose(result["preprocess_vs_decode_ratio"],
                        pre["preprocess_1_worker_x"] / pre["decode_only_x"], rel_tol=1e-9)
    model = result["model"]
    assert model["train_samples_per_epoch"] > 0 and model["infer_windows"] > 0
    # the long recording is 10x the short one, and both memory figures were taken
    assert result["memory"]["long"]["minutes"] == 10 * result["memory"]["short"]["minutes"]
    assert result["memory"]["long"]["infer"]["peak_rss_mb"] > 0
