"""Issue 19, CPU-only inference: fold models exported to ONNX (common/onnx_runtime.py) give
torch's outputs at any batch size, the export is cached beside the checkpoint and redone
when the checkpoint is newer, a backbone that cannot be exported is named, and 05's
`--runtime=onnx` (and `openvino`, the same graph compiled by OpenVINO, bf16 where the CPU
has it natively) scores the test recordings (RFCx layout) and the BirdCLEF segments as
`--runtime=torch` does, with the inference speed in summary.json."""
from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
import torch

from common import onnx_runtime
from common.onnx_runtime import OnnxExportError, exported, load_fold_model
from common.sed import build_model, save_checkpoint
from tests.test_ensemble import fake_work_dir

TINY = {"backbone": "resnet10t", "n_classes": 3, "in_chans": 1, "sample_rate": 8000,
        "n_fft": 256, "hop_length": 128, "n_mels": 32, "fmin": 50.0, "fmax": 4000.0,
        "image_size": None, "dropout": 0.0, "crop_seconds": 1.0, "freq_coord": False}


@pytest.mark.parametrize("extra", [{}, {"freq_coord": True, "in_chans": 3,
                                        "image_size": (48, 40)}])
def test_export_gives_torch_outputs_at_batch_1_and_3(extra):
    torch.manual_seed(0)
    model = build_model({**TINY, **extra}).eval()
    onnx_model, data = exported(model, 8000)
    assert len(data) > 1000 and onnx_model.threads == torch.get_num_threads()
    gen = torch.Generator().manual_seed(5)
    for batch in (1, 3):
        wave = 0.2 * torch.randn(batch, 8000, generator=gen)
        with torch.inference_mode():
            want = model(wave)
        got = onnx_model(wave)
        assert set(got) == {"clip_logit", "clip_prob", "frame_logit", "frame_prob"}
        for key, value in got.items():
            assert value.shape == want[key].shape, key
            np.testing.assert_allclose(value.numpy(), want[key].numpy(), rtol=1e-4, atol=1e-5)
    frames = 40 if extra else 8000 // 128 + 1  # a resized image: its width
    assert got["frame_prob"].shape == (3, frames, 3)
    with pytest.raises(ValueError, match="windows of 8000 samples"):
        onnx_model(torch.zeros(1, 4000))


def test_the_check_stops_an_export_that_differs_from_torch():
    torch.manual_seed(0)
    model, other = build_model(TINY).eval(), build_model(TINY).eval()  # other weights
    onnx_model, _ = exported(model, 8000)
    assert onnx_runtime.check(onnx_model, model, "same") < 1e-3
    with pytest.raises(OnnxExportError, match=r"differs from torch's .* --runtime=torch"):
        onnx_runtime.check(onnx_model, other, "other weights")


def test_export_is_cached_beside_the_checkpoint_and_redone_when_it_is_newer(tmp_path, monkeypatch):
    ckpt = tmp_path / "stage1" / "r0" / "fold0.pth"
    torch.manual_seed(0)
    save_checkpoint(ckpt, build_model(TINY))
    first = load_fold_model(ckpt, "cpu", "onnx")
    path = ckpt.with_suffix(".onnx")
    stamp = path.stat().st_mtime_ns
    again = load_fold_model(ckpt, "cpu", "onnx")
    assert path.stat().st_mtime_ns == stamp  # cached: not exported again
    wave = 0.1 * torch.randn(2, 8000)
    np.testing.assert_array_equal(first(wave)["clip_logit"], again(wave)["clip_logit"])
    torch.manual_seed(1)
    save_checkpoint(ckpt, build_model(TINY))  # a newer checkpoint: exported again
    os.utime(ckpt, ns=(stamp + 10**9, stamp + 10**9))
    newer = load_fold_model(ckpt, "cpu", "onnx")
    assert path.stat().st_mtime_ns != stamp
    torch_model = load_fold_model(ckpt, "cpu", "torch")
    with torch.inference_mode():
        np.testing.assert_allclose(newer(wave)["clip_logit"], torch_model(wave)["clip_logit"],
                                   rtol=1e-4, atol=1e-5)
    # a read-only run folder: the export goes to the cache folder, named by stage and run
    monkeypatch.setattr(onnx_runtime.os, "access", lambda *a: False)
    assert onnx_runtime.onnx_path(ckpt, tmp_path / "c") == tmp_path / "c" / "stage1_r0_fold0.onnx"
    with pytest.raises(Exception, match="runtime=onnx runs on the CPU"):
        load_fold_model(ckpt, "cuda", "onnx")


def test_a_backbone_that_cannot_be_exported_is_named_without_the_graph_dump(tmp_path, capfd):
    ckpt = tmp_path / "fold0.pth"
    save_checkpoint(ckpt, build_model({**TINY, "backbone": "wavenet"}))
    with pytest.raises(OnnxExportError) as err:
        load_fold_model(ckpt, "cpu", "onnx")
    message = str(err.value)
    assert "backbone wavenet cannot be exported to ONNX" in message
    assert message.endswith("use --runtime=torch") and str(ckpt) in message
    assert "graph(" not in capfd.readouterr().out and not ckpt.with_suffix(".onnx").exists()


def test_05_runtime_onnx_scores_the_test_set_as_torch_does(tmp_path, scripts):
    work, data = fake_work_dir(tmp_path)
    ens = scripts("05_ensemble")
    outs = {}
    for runtime in ("torch", "onnx", "openvino:f32"):
        cfg = ens.CFG(input_dir=str(data), work_dir=str(work), tag=runtime, n_pictures=0,
                      prior_scaling="none", calibrate="false", event_threshold=0.3,
                      infer_batch=4, runtime=runtime, test_audio_hours=2.0)
        summary = ens.main(cfg)["summary"]
        run_dir = work / "ensemble" / runtime
        outs[runtime] = (pd.read_csv(run_dir / "test_stage1_r0.csv"),
                         pd.read_csv(run_dir / "detections.csv"), summary)
        speed = json.loads((work / "summary.json").read_text())["ensemble"]["infer_speed"]
        assert speed == summary["infer_speed"]
        assert speed["runtime"] == runtime.replace(":", " ")  # openvino:f32 -> 'openvino f32'
        assert speed["fold_models"] == 2 and speed["test_audio_hours"] == 2.0
        assert speed["cpu_s_per_audio_hour"] > 0 and speed["wall_s_per_audio_hour"] > 0
        assert speed["projected_s"] == pytest.approx(2 * speed["wall_s_per_audio_hour"]
                                                     + speed["load_s"], abs=0.1)
    (torch_scores, torch_det, _), (onnx_scores, onnx_det, _) = outs["torch"], outs["onnx"]
    assert list(onnx_scores.columns) == list(torch_scores.columns)
    np.testing.assert_allclose(onnx_scores.iloc[:, 1:].to_numpy(),
                               torch_scores.iloc[:, 1:].to_numpy(), rtol=1e-4, atol=1e-5)
    assert len(onnx_det) == len(torch_det)
    assert (work / "stage1" / "r0" / "fold1.onnx").is_file()
    # OpenVINO compiles the same graph (fusing its arithmetic): equal within the export check
    np.testing.assert_allclose(outs["openvino:f32"][0].iloc[:, 1:].to_numpy(),
                               torch_scores.iloc[:, 1:].to_numpy(), rtol=1e-3, atol=1e-4)


def test_openvino_gives_torch_outputs_and_its_check_catches_wrong_weights():
    torch.manual_seed(0)
    model, other = build_model(TINY).eval(), build_model(TINY).eval()  # other weights
    compiled = onnx_runtime.OpenVinoSED(onnx_runtime.export_bytes(model, 8000), model.model_cfg, 8000)
    assert compiled.threads == torch.get_num_threads()
    assert onnx_runtime.check(compiled, model, "same") < 1e-3
    got = compiled(torch.zeros(2, 8000))
    assert got["frame_prob"].shape == (2, 8000 // 128 + 1, 3)
    with pytest.raises(OnnxExportError, match="openvino f32's .* differs from torch's"):
        onnx_runtime.check(compiled, other, "other weights")


def test_openvino_takes_bf16_only_where_the_cpu_has_it_and_checks_it_at_its_tolerance(monkeypatch):
    from common import precision
    monkeypatch.setattr(precision, "native_bf16", lambda device: False)
    assert onnx_runtime.openvino_precision("openvino") == "f32"
    assert onnx_runtime.runtime_label("openvino") == "openvino f32"
    monkeypatch.setattr(precision, "native_bf16", lambda device: True)
    assert onnx_runtime.openvino_precision("openvino") == "bf16"
    assert onnx_runtime.openvino_precision("openvino:f32") == "f32"  # forced
    assert onnx_runtime.runtime_label("onnx") == "onnx"
    with pytest.raises(onnx_runtime.ConfigError, match="openvino:bf16"):
        onnx_runtime.check_runtime("openvino:f16")
    torch.manual_seed(0)
    model, other = build_model(TINY).eval(), build_model(TINY).eval()
    # bf16: the model after its front end in OpenVINO, the front end in torch (float32)
    compiled = onnx_runtime.openvino_model(model, 8000, "bf16", what="bf16")  # checked
    assert compiled.runtime == "openvino bf16" and compiled.front is not None
    assert onnx_runtime.check(compiled, model, "bf16") <= 0.05 + 1e-3
    got = compiled(0.1 * torch.randn(2, 8000))
    assert got["frame_prob"].shape == (2, 8000 // 128 + 1, 3) and got["clip_logit"].shape == (2, 3)
    data = onnx_runtime.export_bytes(model, 8000)
    with pytest.raises(OnnxExportError, match="openvino bf16's .* differs from torch's"):
        onnx_runtime.check(compiled, other, "other weights")  # the looser bound still catches it
    with pytest.raises(onnx_runtime.ConfigError, match="choose f32 or bf16"):
        onnx_runtime.OpenVinoSED(data, model.model_cfg, 8000, precision="f16")


def test_segment_submission_runtime_onnx_matches_torch(tmp_path, scripts):
    from common import segment_submission
    from common.infer import InferenceClock
    from common.prepared import load_prepared

    work, _ = fake_work_dir(tmp_path)
    info = scripts("05_ensemble").load_run(work / "stage1" / "r0")
    prep = load_prepared(work, "p0")
    table = pd.DataFrame({"recording_id": ["te0", "te0", "te3"], "t_min": [0.0, 1.5, 0.5],
                          "t_max": [1.0, 2.5, 1.5]})
    probs, clocks = {}, {}
    for runtime in ("torch", "onnx"):
        clocks[runtime] = InferenceClock(runtime)
        probs[runtime] = segment_submission.predict([info], [1.0], {"p0": prep}, table, 4, "cpu",
                                                    runtime, clocks[runtime], tmp_path / "onnx")
    assert probs["onnx"].shape == (3, 3)
    np.testing.assert_allclose(probs["onnx"], probs["torch"], rtol=1e-4, atol=1e-6)
    figures = clocks["onnx"].figures(2, 5.0)
    assert figures["runtime"] == "onnx" and figures["wall_s_per_audio_hour"] > 0
    assert clocks["onnx"].loaded == 2  # two fold models, each over te0 and te3 (2.5 s each)
    assert clocks["onnx"].model_hours == pytest.approx(2 * 5.0 / 3600)
