"""Inference engines, the ways a model is served: eager PyTorch, torch.compile, ONNX Runtime (`engine` axis).

`serve` turns a model and the cell's input into one forward-pass callable. What an engine costs before its first
answer (compilation; export and session creation) is measured apart and never inside a timed region. Every
non-eager engine is checked against eager on the same input before it is timed: its max abs error is recorded,
and outputs that disagree beyond a tolerance make the cell an `error` (EngineMismatch), never a timing. An engine
that cannot run here (not installed, no such dtype, a model that does not export) raises EngineUnavailable: a
`skipped` row with the reason and, where it helps, the install hint.

  eager        model(x) under inference_mode (and autocast for fp16 / bf16)
  compile      torch.compile(model) (mode "default", static shapes); compile_time = its first call
  onnxruntime  torch.onnx.export(..., dynamo=True), then an InferenceSession (CPUExecutionProvider on CPU,
               CUDAExecutionProvider on GPU) with as many intra-op threads as torch uses; export_time = export +
               session creation. fp32 (fp16 on GPU, the model converted); inputs and outputs pass through host
               memory. pip install 'vitbench[onnx]'.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .precision import autocast

TOLERANCE = {"fp32": 1e-3, "fp16": 3e-2, "bf16": 6e-2}  # max abs error / max(1, max |eager output|)


class EngineUnavailable(Exception):
    """This engine cannot serve this model here: a skipped row, with the reason."""


class EngineMismatch(Exception):
    """The engine's outputs disagree with eager's beyond the tolerance: an error row, never a timing."""


@dataclass
class Served:
    engine: str
    run: Callable[[], object]  # one forward pass on the cell's input
    setup_metric: str | None = None  # compile_time | export_time
    setup_seconds: float | None = None
    max_error: float | None = None  # against eager, same input
    detail: dict = field(default_factory=dict)  # how it ran


def _eager(model: torch.nn.Module, x: torch.Tensor, device: str, dtype: str) -> Callable[[], torch.Tensor]:
    def run():
        with torch.inference_mode(), autocast(device, dtype):
            return model(x)

    return run


def _compiled(model, x, device, dtype, workdir) -> Served:
    started = time.perf_counter()
    compiled = torch.compile(model, mode="default", dynamic=False)
    run = _eager(compiled, x, device, dtype)
    run()  # torch.compile compiles at the first call
    if device == "cuda":
        torch.cuda.synchronize()
    return Served("compile", run, "compile_time", time.perf_counter() - started, detail={"mode": "default"})


def _onnxruntime(model, x, device, dtype, workdir: Path) -> Served:
    try:
        import onnxruntime
    except ImportError:
        raise EngineUnavailable("ONNX Runtime is not installed: pip install 'vitbench[onnx]' (onnx, onnxscript, "
                                "onnxruntime)") from None
    if dtype == "bf16" or (dtype == "fp16" and device != "cuda"):
        raise EngineUnavailable(f"ONNX Runtime is measured in fp32 on a CPU and fp32 / fp16 on a GPU, not {dtype}")
    provider = "CUDAExecutionProvider" if device == "cuda" else "CPUExecutionProvider"
    if provider not in onnxruntime.get_available_providers():
        raise EngineUnavailable(f"ONNX Runtime has no {provider} here (pip install onnxruntime-gpu for CUDA)")
    half = dtype == "fp16"
    exported = (model.half() if half else model).eval()
    example = x.half() if half else x
    path = workdir / "model.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    try:
        torch.onnx.export(exported, (example,), dynamo=True, verbose=False).save(str(path))
    except Exception as err:  # noqa: BLE001 - a model that does not export is a skipped cell, with the reason
        raise EngineUnavailable(f"cannot export to ONNX: {type(err).__name__}: {str(err).splitlines()[0][:300]}") \
            from None
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(path), options, providers=[provider])
    seconds = time.perf_counter() - started
    inputs = {session.get_inputs()[0].name: example.detach().cpu().numpy()}

    def run():
        return session.run(None, inputs)[0]

    return Served("onnxruntime", run, "export_time", seconds,
                  detail={"provider": provider, "threads": options.intra_op_num_threads,
                          "onnxruntime": onnxruntime.__version__, "dtype": "fp16" if half else "fp32"})


def serve(engine: str, model: torch.nn.Module, x: torch.Tensor, device: str, dtype: str, workdir: Path) -> Served:
    """The model (in eval mode) served by `engine` on input x, checked against eager; `workdir` holds what an
    engine writes (the exported ONNX file)."""
    model.eval()
    eager = _eager(model, x, device, dtype)
    if engine == "eager":
        return Served("eager", eager)
    reference = eager().float().cpu()
    served = {"compile": _compiled, "onnxruntime": _onnxruntime}[engine](model, x, device, dtype, workdir)
    result = served.run()
    out = result.detach().cpu() if isinstance(result, torch.Tensor) else torch.from_numpy(np.asarray(result))
    served.max_error = float((out.float() - reference).abs().max())
    limit = TOLERANCE[dtype] * max(1.0, float(reference.abs().max()))
    if not served.max_error <= limit:
        raise EngineMismatch(f"{engine} disagrees with eager on the same input: max abs error {served.max_error:.3g} "
                             f"above the tolerance {limit:.3g}")
    return served
