"""Fold models run by ONNX Runtime or OpenVINO on the CPU (05's `--runtime=onnx|openvino`).

A checkpoint is exported once to `fold{k}.onnx` beside it (or into a cache folder when the
run folder is read-only, e.g. an attached Kaggle dataset) and exported again when the
checkpoint is newer or another window length is asked for. The graph takes float32 waves
(B, window) with a dynamic batch axis; the window (the training crop) is fixed. Every
export is checked against the torch model on seeded noise at batch sizes 1 and 3 before
it is written: an output that differs by more than TOLERANCE (float32: 1e-3 x its largest
magnitude + 1e-4) stops with the backbone named. `OnnxSED` is called like `SEDModel` and
returns the same dict (clip_logit, clip_prob (B, K), frame_logit, frame_prob (B, T, K), torch
tensors on the CPU), so common.infer's window loops run either. The mel front end exports through
ONNX's STFT op (common/features.py); a backbone with an op the exporter lacks (the kit's
wavenet: adaptive pooling to a length the exporter cannot see) is named in the error,
which suggests `--runtime=torch`. `--runtime=openvino` compiles the same checked ONNX file
with OpenVINO's CPU plugin (the torch thread count) and checks its outputs against torch in
the same way at every load. Its precision follows the CPU (common/precision.py): bf16 where
the CPU computes it natively (AVX512-BF16 or AMX), float32 elsewhere; `openvino:f32` or
`openvino:bf16` forces one. A bf16 graph is held to the looser TOLERANCE["bf16"] (bf16 keeps
8 bits of mantissa: about 2-3 significant digits per operation). In `make bench` on the idle
2-core AMD EPYC VM (AVX-512 with AVX512-BF16) float32 OpenVINO ran the demo model's forward
at 1.13x torch eager and onnxruntime at 0.89x (README, "CPU-only test inference").
"""
from __future__ import annotations

import contextlib
import io
import os
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

from common import precision
from common.cli import ConfigError
from common.runs import atomic_write
from common.sed import load_checkpoint

RUNTIMES = ("torch", "onnx", "openvino", "openvino:f32", "openvino:bf16")
OUTPUTS = ("clip_logit", "clip_prob", "frame_logit", "frame_prob")
OPSET = 17        # the first opset with STFT
# (RTOL, ATOL) of the check against torch by the graph's precision: an output may differ by
# RTOL x its largest magnitude + ATOL
TOLERANCE = {"f32": (1e-3, 1e-4), "bf16": (5e-2, 1e-3)}
BF16_FACTOR = 4.0  # a bf16 graph may also differ by this many times torch's bf16 autocast
CHECK_BATCHES = (1, 3)  # neither is the export's batch (2): the batch axis must be dynamic
# messages of the exporter that say nothing about this model: the TorchScript exporter's
# deprecation (it needs no onnxscript), stft's real pairs, Slice constant folding
QUIET = ("You are using the legacy TorchScript-based ONNX export", "The feature will be removed",
         "stft with return_complex=False is deprecated", "Constant folding")


class OnnxExportError(ConfigError):
    """A fold model that cannot be exported, or whose export differs from torch."""


class OnnxSED:
    """An exported SEDModel in an onnxruntime session: (B, window) waves -> the model's dict.
    `threads` intra-op threads (default torch.get_num_threads(), as the torch path uses)."""

    training = False
    runtime = "onnxruntime"
    precision = "f32"

    def __init__(self, source: str | Path | bytes, model_cfg: dict, window: int,
                 threads: int = 0):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        self.threads = options.intra_op_num_threads
        self.session = ort.InferenceSession(source if isinstance(source, bytes) else str(source),
                                            options, providers=["CPUExecutionProvider"])
        self.model_cfg, self.window = model_cfg, window

    def eval(self) -> "OnnxSED":
        return self

    def __call__(self, wave: torch.Tensor) -> dict:
        if wave.shape[-1] != self.window:
            raise ValueError(f"the ONNX model takes windows of {self.window} samples, got "
                             f"{wave.shape[-1]}")
        got = self.session.run(list(OUTPUTS), {"wave": wave.detach().cpu().float().numpy()})
        return {k: torch.from_numpy(v) for k, v in zip(OUTPUTS, got)}


class OpenVinoSED(OnnxSED):
    """The exported graph compiled by OpenVINO for the CPU, called as OnnxSED is. With
    `front` (the torch model's mel front end) the graph is the model after its front end
    (export_body_bytes): the waves become images in torch, float32, and only the backbone
    and head run in OpenVINO. The bf16 path takes this split: OpenVINO's CPU plugin computes
    a whole graph in bf16, STFT and log included, and the log-mel image in bf16 moved the
    demo model's frame probabilities by up to 0.10 where torch's bf16 autocast (front end in
    float32) moves them by 0.01; split, OpenVINO stays within 0.02 of torch's float32
    outputs (a trained demo fold model, 2026-12-06)."""

    runtime = "openvino"

    def __init__(self, source: str | Path | bytes, model_cfg: dict, window: int,
                 threads: int = 0, precision: str = "f32", front=None):
        import openvino as ov

        if precision not in TOLERANCE:
            raise ConfigError(f"OpenVINO precision {precision!r}: choose f32 or bf16")
        core = ov.Core()
        graph = core.read_model(model=source if isinstance(source, bytes) else str(source))
        self.threads = threads or torch.get_num_threads()
        self.precision = precision
        self.runtime = f"openvino {precision}"
        self.compiled = core.compile_model(graph, "CPU", {
            "INFERENCE_NUM_THREADS": self.threads, "INFERENCE_PRECISION_HINT": precision})
        self.names = [self.compiled.output(k).get_any_name() for k in range(len(OUTPUTS))]
        self.model_cfg, self.window, self.front = model_cfg, window, front

    def __call__(self, wave: torch.Tensor) -> dict:
        if wave.shape[-1] != self.window:
            raise ValueError(f"the OpenVINO model takes windows of {self.window} samples, got "
                             f"{wave.shape[-1]}")
        wave = wave.detach().cpu().float()
        if self.front is not None:
            with torch.inference_mode():
                wave = self.front.eval()(wave)
        got = self.compiled(wave.numpy())
        by_name = {name: got[self.compiled.output(k)] for k, name in enumerate(self.names)}
        return {k: torch.from_numpy(np.asarray(by_name[k]).copy()) for k in OUTPUTS}


@contextlib.contextmanager
def quiet_stdout():
    """File descriptor 1 to /dev/null: the TorchScript exporter of torch 2.14 turns its C++
    log on for every export and writes the whole graph there when an op fails to export,
    hundreds of lines before the one-line error that says which backbone and what to do."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def export_bytes(model, window: int) -> bytes:
    """The ONNX graph of `model` (an SEDModel on the CPU) for (B, window) waves."""
    model = model.cpu().eval()
    return _export(model, lambda: torch.zeros(2, window), "wave")


def _export(module, example, input_name: str) -> bytes:
    """torch.onnx.export of `module` on the tensor `example()` (made inside the no-grad,
    quiet context) with a dynamic batch axis, the kit's opset and OUTPUTS as output names."""
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad(), quiet_stdout():
        for message in QUIET:
            warnings.filterwarnings("ignore", message=message)
        torch.onnx.export(module, (example(),), buffer, input_names=[input_name],
                          output_names=list(OUTPUTS), dynamic_axes={input_name: {0: "batch"}},
                          opset_version=OPSET, dynamo=False)
    return buffer.getvalue()


def check(onnx_model: OnnxSED, model, what: str) -> float:
    """Raise OnnxExportError unless the runtime's outputs equal the torch model's (float32)
    within RTOL x max|torch| + ATOL (TOLERANCE of the runtime's precision) on seeded noise,
    at each batch size of CHECK_BATCHES; returns the largest difference. A bf16 runtime may
    also differ by up to BF16_FACTOR x what torch's own bf16 autocast differs by on the same
    input: how far bf16 moves an output depends on the weights (0.01 to 0.08 in frame
    probability on the kit's demo models), and torch's bf16 is the kit's measure of it."""
    rtol, atol = TOLERANCE[onnx_model.precision]
    gen = torch.Generator().manual_seed(0)
    worst = 0.0
    for batch in CHECK_BATCHES:
        wave = 0.1 * torch.randn(batch, onnx_model.window, generator=gen)
        with torch.inference_mode():
            ref = model.eval()(wave)
            if onnx_model.precision == "bf16":
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    own = model(wave)
        got = onnx_model(wave)
        for key in OUTPUTS:
            want = ref[key].float().numpy()
            if got[key].shape != want.shape:
                raise OnnxExportError(f"{what}: ONNX {key} has shape {tuple(got[key].shape)}, "
                                      f"torch {want.shape} at batch {batch}; use --runtime=torch")
            diff = float(np.abs(got[key].numpy() - want).max())
            bound = rtol * float(np.abs(want).max()) + atol
            if onnx_model.precision == "bf16":
                bound = max(bound, BF16_FACTOR * float(np.abs(own[key].float().numpy() - want).max()))
            if not diff <= bound:
                raise OnnxExportError(f"{what}: {onnx_model.runtime}'s {key} differs from torch's by "
                                      f"{diff:.3g} (tolerance {bound:.3g}) at batch {batch}; "
                                      "use --runtime=torch")
            worst = max(worst, diff)
    return worst


class _Body(torch.nn.Module):
    """An SEDModel after its mel front end: (B, C, mels, frames) images -> OUTPUTS."""

    def __init__(self, model, window: int):
        super().__init__()
        self.model, self.n_frames = model, model.frames(window)

    def forward(self, image: torch.Tensor) -> tuple:
        out = self.model.outputs(self.model.backbone.forward_features(image), self.n_frames)
        return tuple(out[k] for k in OUTPUTS)


def export_body_bytes(model, window: int) -> bytes:
    """The ONNX graph of `model` after its front end, for the images of (B, window) waves."""
    model = model.cpu().eval()
    return _export(_Body(model, window), lambda: model.front(torch.zeros(2, window)), "image")


def openvino_model(model, window: int, precision: str, graph=None, what: str = "") -> OpenVinoSED:
    """`model` (an SEDModel) compiled by OpenVINO at `precision` and checked against it: f32
    compiles `graph` (the whole model's checked ONNX export: bytes or a file); bf16 exports
    the model after its front end and keeps the front end in torch (OpenVinoSED)."""
    what = what or f"backbone {model.model_cfg['backbone']}"
    split = precision == "bf16" and not getattr(model.backbone, "takes_wave", False)
    if split:
        try:
            graph = export_body_bytes(model, window)
        except Exception as err:  # the exporter's errors have no common base class
            raise OnnxExportError(f"{what}: backbone {model.model_cfg['backbone']} cannot be "
                                  f"exported to ONNX ({reason(err)}); use --runtime=torch") from None
    elif graph is None:
        graph = exported(model, window, what)[1]
    compiled = OpenVinoSED(graph, model.model_cfg, window, precision=precision,
                           front=model.front if split else None)
    check(compiled, model, what)
    return compiled


def exported(model, window: int, what: str = "") -> tuple[OnnxSED, bytes]:
    """Export `model` for `window`-sample waves, load it in onnxruntime and check it against
    the torch model: (the checked OnnxSED, the graph's bytes)."""
    backbone = model.model_cfg["backbone"]
    what = what or f"backbone {backbone}"
    try:
        data = export_bytes(model, window)
    except Exception as err:  # the exporter's errors have no common base class
        raise OnnxExportError(f"{what}: backbone {backbone} cannot be exported to ONNX "
                              f"({reason(err)}); use --runtime=torch") from None
    onnx_model = OnnxSED(data, model.model_cfg, window)
    check(onnx_model, model, what)
    return onnx_model, with_window(data, window)


def reason(err: Exception) -> str:
    """The exporter's message without its graph dump and its request for a pull request."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    for tail in ("Please feel free", "[Caused by"):
        text = text.split(tail)[0]
    return text.strip()[:300]


def with_window(data: bytes, window: int) -> bytes:
    """The graph with the window length in its metadata (read back by load_onnx)."""
    import onnx

    proto = onnx.load_from_string(data)
    onnx.helper.set_model_props(proto, {"window": str(window)})
    return proto.SerializeToString()


def onnx_path(checkpoint: Path, cache_dir: str | Path | None = None) -> Path:
    """fold{k}.onnx beside the checkpoint when its folder is writable, else in `cache_dir`
    named by stage, run and fold."""
    checkpoint = Path(checkpoint)
    if cache_dir is None or os.access(checkpoint.parent, os.W_OK):
        return checkpoint.with_suffix(".onnx")
    parts = [checkpoint.parent.parent.name, checkpoint.parent.name, checkpoint.stem]
    return Path(cache_dir) / ("_".join(parts) + ".onnx")


def load_onnx(checkpoint, cache_dir=None) -> OnnxSED:
    """The checkpoint's model in onnxruntime: exported and checked unless an export of it
    (not older than the checkpoint) for its crop length is cached (module docstring)."""
    return onnx_and_torch(checkpoint, cache_dir)[0]


def cpu_model(checkpoint) -> tuple:
    """(the checkpoint's SEDModel on the CPU, its window: the training crop in samples)."""
    model, ckpt = load_checkpoint(checkpoint, "cpu")
    mcfg = ckpt["model_cfg"]
    return model, int(round(mcfg["crop_seconds"] * mcfg["sample_rate"]))


def onnx_and_torch(checkpoint, cache_dir=None) -> tuple:
    """(the checkpoint's OnnxSED, its torch SEDModel on the CPU), loading the checkpoint once."""
    checkpoint = Path(checkpoint)
    model, window = cpu_model(checkpoint)
    path = onnx_path(checkpoint, cache_dir)
    if path.is_file() and path.stat().st_mtime >= checkpoint.stat().st_mtime:
        onnx_model = OnnxSED(path, model.model_cfg, window)
        if onnx_model.session.get_modelmeta().custom_metadata_map.get("window") == str(window):
            return onnx_model, model
    onnx_model, data = exported(model, window, what=str(checkpoint))
    atomic_write(path, lambda f: f.write(data), mode="wb")
    return onnx_model, model


def openvino_precision(runtime: str) -> str:
    """f32 or bf16 for `openvino[:f32|:bf16]`: bf16 where the CPU computes it natively."""
    forced = runtime.partition(":")[2]
    if forced:
        return forced
    return "bf16" if precision.native_bf16("cpu") else "f32"


def load_openvino(checkpoint, cache_dir=None, runtime: str = "openvino") -> OpenVinoSED:
    """The checkpoint's checked ONNX export compiled by OpenVINO at the runtime's precision,
    checked against the torch model again (OpenVINO fuses and reorders the arithmetic)."""
    precision = openvino_precision(runtime)
    if precision == "bf16":  # the model after its front end, exported at each load (~1 s)
        return openvino_model(*cpu_model(checkpoint), precision, what=str(checkpoint))
    onnx_model, model = onnx_and_torch(checkpoint, cache_dir)
    return openvino_model(model, onnx_model.window, precision,
                          onnx_path(Path(checkpoint), cache_dir), str(checkpoint))


def runtime_label(runtime: str) -> str:
    """The runtime as reports name it: `openvino bf16` / `openvino f32` for openvino."""
    return f"openvino {openvino_precision(runtime)}" if runtime.startswith("openvino") else runtime


def check_runtime(runtime: str) -> None:
    if runtime not in RUNTIMES:
        raise ConfigError(f"runtime={runtime!r}: choose one of {', '.join(RUNTIMES)} (openvino "
                          "takes bf16 where the CPU has it natively, float32 elsewhere)")


def load_fold_model(checkpoint, device, runtime: str = "torch", cache_dir=None):
    """A fold model for test inference: the torch SEDModel on `device`, or (runtime onnx,
    openvino[:f32|:bf16]) its ONNX export in onnxruntime or OpenVINO on the CPU. All are
    called alike (common.infer)."""
    if runtime == "torch":
        return load_checkpoint(checkpoint, device)[0]
    check_runtime(runtime)
    if torch.device(device).type != "cpu":
        raise ConfigError(f"runtime={runtime} runs on the CPU, not {device}: use "
                          "--device=cpu, or --runtime=torch")
    if runtime == "onnx":
        return load_onnx(checkpoint, cache_dir)
    return load_openvino(checkpoint, cache_dir, runtime)
