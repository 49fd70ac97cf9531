"""`make bench` end to end at a tiny size: every figure and ratio of issues 6, 19 and 20 is
measured, finite and written to bench.json (fp32 and CPU bf16 model figures from the same
run; torch eager and ONNX Runtime on the CPU), and the floor ratio and decode+resample bound
are consistent with the figures they come from. (The targets themselves are checked by
running the bench, not here: speed is not a unit-test property.)"""
from __future__ import annotations

import json
import math
import subprocess
import sys

from tests.conftest import ROOT

RATIOS = ("preprocess_vs_floor_ratio", "preprocess_vs_decode_ratio", "train_vs_model_ratio",
          "infer_vs_model_ratio", "memory_10x_length_ratio",
          "openvino_vs_eager_ratio")  # + *_bf16 with --compare_amp=bf16


def test_bench_runs_and_writes_every_ratio(tmp_path):
    work, data = tmp_path / "work", tmp_path / "bench"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.bench", f"--work_dir={work}", f"--data_dir={data}",
         "--n_files=2", "--long_minutes=0.5", "--repeats=1", "--train_demo_recordings=12",
         "--workers=2", "--compare_amp=none"],
        cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads((work / "bench.json").read_text())
    for key in RATIOS:
        assert math.isfinite(result[key]) and result[key] > 0, key
        assert key in result["targets_met"]
    # the librosa ratio is reported without a target (issue 20)
    assert result["preprocess_vs_librosa_ratio"] > 0
    assert "preprocess_vs_librosa_ratio" not in result["targets_met"]
    # onnxruntime is reported beside OpenVINO, which carries the 1.5x target (issue 19)
    assert result["onnx_vs_eager_ratio"] > 0 and "onnx_vs_eager_ratio" not in result["targets_met"]
    pre = result["preprocess"]
    for key in ("decode_only_x", "decode_resample_x", "decode_resample_parallel_x",
                "stream_only_x", "pool_only_x", "librosa_loop_x", "preprocess_1_worker_x", "preprocess_x"):
        assert pre[key] > 0, key
    assert math.isclose(result["preprocess_vs_floor_ratio"],
                        pre["preprocess_x"] / (2 * pre["decode_resample_x"]), rel_tol=1e-9)
    assert math.isclose(pre["floor_parallel_scaling"] * pre["preprocess_vs_parallel_floor"],
                        result["preprocess_vs_floor_ratio"], rel_tol=1e-9)
    assert 0 < pre["pool_share_of_preprocess"] < 1  # the pool alone is faster than the work
    assert pre["audio_seconds"] == 120.0 and pre["workers"] == 2
    assert math.isclose(pre["decode_resample_bound_vs_librosa"],
                        2 * pre["decode_resample_x"] / pre["librosa_loop_x"], rel_tol=1e-9)
    assert math.isclose(result["preprocess_vs_decode_ratio"],
                        pre["preprocess_1_worker_x"] / pre["decode_only_x"], rel_tol=1e-9)
    model = result["model"]
    assert model["train_samples_per_epoch"] > 0 and model["infer_windows"] > 0
    # onnxruntime against torch eager on the same model and batches (issue 19)
    assert math.isclose(result["onnx_vs_eager_ratio"],
                        model["forward_onnx_x"] / model["forward_x"], rel_tol=1e-9)
    assert math.isclose(result["infer_onnx_vs_eager_ratio"],
                        model["infer_onnx_x"] / model["infer_x"], rel_tol=1e-9)
    assert math.isclose(result["openvino_vs_eager_ratio"],
                        model["forward_openvino_x"] / model["forward_x"], rel_tol=1e-9)
    assert "openvino_vs_eager_ratio" in result["targets_met"]
    # the bf16 comparison (make bench's default) is too slow on a 2-core CPU for the suite:
    # here fp32 alone, the loop against the pure model at that precision
    assert model["amps"] == ["none"] and result["config"]["compare_amp"] == "none"
    assert "train_vs_model_ratio_bf16" not in result
    # the long recording is 10x the short one, and both memory figures were taken
    assert result["memory"]["long"]["minutes"] == 10 * result["memory"]["short"]["minutes"]
    assert result["memory"]["long"]["infer"]["peak_rss_mb"] > 0


def test_devsets_table_reads_each_work_dir(tmp_path):
    """bench/devsets.py: one row per dataset and stage from the work folder's summary.json."""
    from bench import devsets
    work = tmp_path / "devsets" / "nips4b"
    work.mkdir(parents=True)
    (work / "summary.json").write_text(json.dumps({
        "stage1": {"cv_lwlrap": 0.41, "cv_lwlrap_calibrated": 0.39, "test_lwlrap": 0.48,
                   "test_lwlrap_calibrated": 0.49, "test_prevalence_baseline": 0.16,
                   "seconds": 900.0},
        "stage3": {"cv_lwlrap": 0.42, "test_lwlrap": 0.5, "seconds": 400.0},
        "pseudo": {"positives": 20, "seconds": 17.0},
        "ensemble": {"cv_lwlrap": 0.43, "test_lwlrap": 0.51, "test_lwlrap_no_prior": 0.5,
                     "seconds": 20.0}}))
    rows = devsets.rows_of("nips4b", work)
    by_stage = {r["stage"]: r for r in rows}
    assert by_stage["stage1"]["cv_cal"] == 0.39 and by_stage["stage1"]["baseline"] == 0.16
    assert by_stage["ensemble"]["test"] == 0.5 and by_stage["ensemble"]["test_cal"] == 0.51
    assert by_stage["stage2"]["cv"] is None  # a stage that did not run stays empty
    text = devsets.render(rows)
    assert "| nips4b | stage1 | 0.4100 | 0.3900 | 0.4800 | 0.4900 | 0.1600 | 900 |" in text
    assert "pseudo (20 windows)" in text


def test_compare_amp_auto_takes_bf16_only_where_the_device_has_it(monkeypatch):
    """`make bench` compares bf16 with fp32 by default only where bf16 is native (a GPU, a
    CPU with AVX512-BF16 or AMX): emulated bf16 made one training step 16x slower than fp32
    on an AVX2 CPU, and the bench's training figures ran past 20 minutes there."""
    from types import SimpleNamespace

    from bench import model_bench
    cfg = SimpleNamespace(amp="none", compare_amp="auto")
    from common import precision
    monkeypatch.setattr(precision, "native_bf16", lambda device: False)
    assert model_bench.precisions(cfg, "cpu") == ["none"]
    monkeypatch.setattr(precision, "native_bf16", lambda device: True)
    assert model_bench.precisions(cfg, "cpu") == ["none", "bf16"]
    assert model_bench.precisions(SimpleNamespace(amp="none", compare_amp="none")) == ["none"]
    assert model_bench.precisions(SimpleNamespace(amp="none", compare_amp="bf16")) == ["none", "bf16"]
