"""Training and inference figures of the benchmark: the kit's real stage-1 loop and test
inference, each next to the pure model (same process, same model, random tensors of the
same shape), so the ratio shows how much the data path costs."""
from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

import numpy as np
import torch

from common import precision

ROOT = Path(__file__).resolve().parents[1]


def script(name: str):
    """Import a numbered script (e.g. '02_train_stage1') as a module."""
    key = f"script_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, ROOT / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module  # dataclasses resolve annotations through sys.modules
        spec.loader.exec_module(module)
    return sys.modules[key]


def setup(cfg, data_dir: Path):
    """The demo config of the model figures on a small demo preprocessing run (written once
    under data_dir): (stage-1 CFG, Prepared, model_cfg)."""
    from common import runs, stage
    from common.cli import parse_cfg
    from common.demos.rfcx import DemoSpec, write_rfcx_demo
    from common.prepared import load_prepared

    demo, work = data_dir / "demo", data_dir / "work"
    io = [f"--cfg_file={cfg.profile}", f"--input_dir={demo}", f"--work_dir={work}"]
    if "bench" not in runs.list_runs(work, "preprocess"):
        write_rfcx_demo(demo, DemoSpec(seed=11, n_train=cfg.train_demo_recordings, n_test=4,
                                       duration=20.0), workers=cfg.workers or 2)
        pre = script("01_preprocess")
        pre.main(parse_cfg(pre.CFG, "preprocess", [*io, "--tag=bench", "--workers=1"]))
    from common.infer import resolve_device

    s1 = script("02_train_stage1")
    args = [*io, "--preprocess=bench", f"--amp={cfg.amp}", f"--device={cfg.device}"]
    crops = cfg.crops_per_row or (250 if resolve_device(cfg.device).type == "cuda" else 0)
    stage1 = parse_cfg(s1.CFG, "stage1", args + ([f"--crops_per_row={crops}"] if crops else []))
    prep = load_prepared(work, "bench")
    return stage1, prep, stage.model_cfg(stage1, prep.classes, prep.sample_rate)


def interleaved_rates(measures: dict, repeats: int) -> dict:
    """{name: (amount, fn)} -> {name: amount / best wall time of fn}. The measurements take
    turns, `repeats` rounds, so a machine whose load drifts during the run affects all of
    them alike, and the best round of each is kept."""
    best = {name: float("inf") for name in measures}
    for _ in range(repeats):
        for name, (_, fn) in measures.items():
            tic = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - tic)
    return {name: amount / best[name] for name, (amount, _) in measures.items()}


def amp_suffix(amp: str, headline: str) -> str:
    """Key suffix of a precision's figures: none for the headline precision (`--amp`),
    `_bf16` / `_fp16` / `_fp32` for the one compared with it."""
    return "" if amp == headline else f"_{'fp32' if amp == 'none' else amp}"


def training(cfg, stage1, prep, mcfg, device, amps: list) -> tuple[dict, object]:
    """The kit's stage-1 epoch against the pure model step, at each precision of `amps`
    (the first is the headline `--amp`), all taking turns in the same rounds."""
    from common.train import train_epoch

    s1 = script("02_train_stage1")
    model, make_loader, step, _ = s1.make_fold(stage1, prep, 0, mcfg, device)
    optimizer = torch.optim.Adam(model.parameters(), lr=stage1.lr)
    sizes, first = [], None
    for wave, *targets in make_loader(0):  # warm-up pass; its shapes make the random batches
        sizes.append(len(wave))  # targets: the labels (and the frame targets with w_frame)
        first = first or (wave.shape[1:], wave.dtype, targets)
    samples = sum(sizes)
    shape, dtype, targets = first
    # the pure model step: random batches already on the device (a few, reused)
    pool = [(0.1 * torch.randn((sizes[0], *shape), device=device)).to(dtype) for _ in range(4)]
    targets = [t.to(device) for t in targets]
    fake = [(pool[i % 4][:n], *(t[:n] for t in targets)) for i, n in enumerate(sizes)]

    def run(loader, amp):
        return lambda: train_epoch(model, loader() if callable(loader) else loader, step,
                                   optimizer, device, amp, desc="bench")

    measures = {}
    for amp in amps:
        sfx = amp_suffix(amp, amps[0])
        run(fake[:2], amp)()  # warm-up steps at this precision (first calls pick kernels)
        measures[f"train_samples_per_s{sfx}"] = (samples, run(lambda: make_loader(0), amp))
        measures[f"model_step_samples_per_s{sfx}"] = (samples, run(fake, amp))
    out = {"train_samples_per_epoch": samples, **interleaved_rates(measures, cfg.repeats)}
    if cfg.profile_epoch:
        out["profile"] = profile_epoch(model, make_loader(0), step, optimizer, device, amps[0],
                                       Path(cfg.work_dir) / "bench_profile.txt")
    return out, model


def inference(cfg, stage1, model, cache_dir: Path, ids: list, sr: int, device,
              amps: list) -> dict:
    """The real test inference (windows at the profile's final stride, read from the cache,
    batched, moved, scored) next to the pure forward pass over as many windows of a batch
    already on the device; both as audio seconds of the recordings per second, at each
    precision of `amps` (the mel front end stays float32 under autocast). On the CPU also both
    through the same model exported to ONNX Runtime (05's --runtime=onnx: infer_onnx_x,
    forward_onnx_x) and compiled by OpenVINO at the precision --runtime=openvino takes here
    (infer_openvino_x, ...; bf16 where native, with float32 beside it as openvino_f32), in
    the same interleaved rounds."""
    from common.audio import WaveCache
    from common.infer import predict_recordings, window_starts
    from common.stage import windows
    from common.train import autocast

    cache = WaveCache(cache_dir)
    window, stride = windows(stage1, sr, final=True)
    n_windows = sum(len(window_starts(cache.length(r), window, stride)) for r in ids)
    audio_s = sum(cache.length(r) for r in ids) / sr
    batches = [min(stage1.infer_batch, n_windows - b) for b in range(0, n_windows, stage1.infer_batch)]
    fake = torch.zeros(stage1.infer_batch, window, device=device).uniform_(-0.1, 0.1)

    def real(amp):
        def go():
            with autocast(device, amp):
                predict_recordings(model, cache, ids, window, stride, stage1.infer_batch, device)
        return go

    def forward(amp, net=model):
        @torch.inference_mode()
        def go():
            net.eval()
            with autocast(device, amp):
                torch.cat([net(fake[:size])["clip_logit"].float() for size in batches]).cpu()
        return go

    measures = {}
    for amp in amps:
        real(amp)()  # warm-up
        sfx = amp_suffix(amp, amps[0])
        measures[f"infer_x{sfx}"] = (audio_s, real(amp))
        measures[f"forward_x{sfx}"] = (audio_s, forward(amp))
    if device.type == "cpu" and amps[0] == "none":  # onnxruntime and OpenVINO on the CPU
        from common.onnx_runtime import exported, openvino_model, openvino_precision

        onnx_model, data = exported(model, window)  # checked against torch on the way
        runners = [("onnx", onnx_model)]
        chosen = openvino_precision("openvino")  # what --runtime=openvino takes here
        for prec in dict.fromkeys([chosen, "f32"]):  # float32 beside it when bf16 is chosen
            runners.append(("openvino" if prec == chosen else f"openvino_{prec}",
                            openvino_model(model, window, prec, data, "bench model")))
        for name, runner in runners:
            measures[f"infer_{name}_x"] = (audio_s, lambda runner=runner: predict_recordings(
                runner, cache, ids, window, stride, stage1.infer_batch, device))
            measures[f"forward_{name}_x"] = (audio_s, forward("none", runner))
            measures[f"forward_{name}_x"][1]()  # warm-up
    return {"infer_audio_seconds": audio_s, "infer_windows": n_windows,
            "infer_stride_seconds": stride / sr, **interleaved_rates(measures, cfg.repeats)}


def profile_epoch(model, loader, step, optimizer, device, amp: str, path: Path) -> dict:
    """torch.profiler over one real training epoch: the top operators by self CPU time (the
    table goes to `path`) and the share of the epoch spent fetching batches."""
    from torch.profiler import ProfilerActivity, profile

    from common.train import train_epoch

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    tic = time.perf_counter()
    with profile(activities=activities) as prof:
        train_epoch(model, loader, step, optimizer, device, amp, desc="profile")
    wall_us = (time.perf_counter() - tic) * 1e6
    events = prof.key_averages()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(events.table(sort_by="self_cpu_time_total", row_limit=25))
    fetch = sum(e.cpu_time_total for e in events if "DataLoader" in e.key)
    top = sorted(events, key=lambda e: -e.self_cpu_time_total)[:8]
    return {"epoch_s": round(wall_us / 1e6, 2), "batch_fetch_fraction": round(fetch / wall_us, 4),
            "top_self_cpu": {e.key: round(float(np.round(e.self_cpu_time_total / wall_us, 4)), 4)
                             for e in top}, "table": str(path)}


def precisions(cfg, device="cpu") -> list:
    """[--amp, --compare_amp] (the comparison dropped when off or the same; `auto`: bf16
    where the device has it natively, else none)."""
    other = getattr(cfg, "compare_amp", "")
    if other == "auto":
        other = "bf16" if precision.native_bf16(device) else "none"
    return [cfg.amp] + ([other] if other and other != cfg.amp else [])


def model_figures(cfg, stage1, prep, mcfg, cache_dir: Path, ids: list) -> dict:
    from common.infer import resolve_device

    device = resolve_device(cfg.device)
    amps = precisions(cfg, device)
    train, model = training(cfg, stage1, prep, mcfg, device, amps)
    return {"device": str(device), "amps": amps, **train,
            **inference(cfg, stage1, model, cache_dir, ids, prep.sample_rate, device, amps)}
