"""One cell = one pure function `run_cell(job) -> rows`, run by the runner in a fresh subprocess
(`python -m bench.cell JOB.json ROWS.json`) so every cell gets a clean CUDA context and memory statistics.

Tasks here: infer and train (throughput, memory, FLOPs); attention (bench/measure/attention.py); the accuracy
tasks train_eval / pretrain / finetune (bench/train.py).
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch

from .data import input_shape
from .env import row_versions
from .measure.flops import forward_flops, peak_tflops
from .measure.memory import MIB, PeakMemory, model_bytes
from .measure.timing import spread, time_steps
from .models import ModelInfo, build_model
from .results import write_atomic

TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class Job:
    """What the runner hands a cell process."""

    cell: dict  # the resolved cell settings (bench.suite.Cell.settings)
    cell_id: str
    suite: str
    run_id: str
    run_dir: str
    concurrency: int = 1


class RowMaker:
    """Builds schema rows for one cell: shared columns once, then one call per metric."""

    def __init__(self, job: Job, info: ModelInfo | None = None, **extra):
        c = job.cell
        self.base = {
            "suite": job.suite, "run_id": job.run_id, "cell_id": job.cell_id, "model": c.get("model"),
            "img_size": c["img_size"], "dataset": c["dataset"], "train_size": c["train_size"], "task": c["task"],
            "batch_size": c["batch_size"], "dtype": c["dtype"], "device": c["device"],
            "attn_backend": c["attn_backend"], "compile": c["compile"], "seed": c["seed"],
            "concurrency": job.concurrency, "init": c.get("init"),
            "attn_shape": "x".join(map(str, c["attn_shape"])) if c.get("attn_shape") else None,
            **row_versions(c["device"]),
        }
        if info is not None:
            self.base.update(family=info.family, impl=info.impl, variant=info.variant, patch=info.patch,
                             params=info.params, attn_backend=info.attn_backend)
        self.base.update(extra)

    def row(self, metric: str, value, unit: str, p20=None, p80=None, n_repeats=None, status="ok", error=None):
        return {**self.base, "metric": metric, "value": value, "unit": unit, "p20": p20, "p80": p80,
                "n_repeats": n_repeats, "status": status, "error": error,
                "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def autocast(device: str, dtype: str):
    if dtype == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device, dtype=TORCH_DTYPES[dtype])


def is_oom(err: BaseException) -> bool:
    text = str(err)
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in text or "can't allocate memory" in text


def _count_flops(model: torch.nn.Module, info: ModelInfo, example: torch.Tensor) -> float:
    """Forward FLOPs per image; the triton backend is counted as its equivalent SDPA (same math)."""
    if info.impl == "native" and info.family == "vit" and info.attn_backend == "triton":
        model.set_attn_backend("sdpa")
        try:
            return forward_flops(model, example)
        finally:
            model.set_attn_backend("triton")
    return forward_flops(model, example)


def measure_model(job: Job) -> list[dict]:
    """Throughput, step time, peak memory, model memory, FLOPs for task infer or train."""
    c = job.cell
    device, train = c["device"], c["task"] == "train"
    in_chans, num_classes = input_shape(c["dataset"], c["in_chans"], c["num_classes"])
    torch.manual_seed(c["seed"])
    model, info = build_model(c["model"], img_size=c["img_size"], in_chans=in_chans, num_classes=num_classes,
                              attn_backend=c["attn_backend"])
    channels_last = info.family == "cnn" and device == "cuda"  # the CNNs' best layout on tensor cores
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(device, memory_format=memory_format)
    rows = RowMaker(job, info, channels_last=channels_last)
    flops_per_image = _count_flops(model.eval(), info, torch.randn(1, in_chans, c["img_size"], c["img_size"],
                                                                   device=device))
    x = torch.randn(c["batch_size"], in_chans, c["img_size"], c["img_size"], device=device)
    x = x.contiguous(memory_format=memory_format)
    y = torch.randint(0, num_classes, (c["batch_size"],), device=device)
    runnable = torch.compile(model) if c["compile"] else model
    optimizer = None

    if train:
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device == "cuda")
        scaler = torch.amp.GradScaler(device, enabled=c["dtype"] == "fp16")

        def step():
            with autocast(device, c["dtype"]):
                loss = torch.nn.functional.cross_entropy(runnable(x), y)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
    else:
        model.eval()

        def step():
            with torch.inference_mode(), autocast(device, c["dtype"]):
                runnable(x)

    if device == "cuda":
        step()  # compilation, cuDNN autotuning, optimizer state: the allocator's peak then covers a steady step
    # On CPU the measure is the resident-set growth, which a warmed-up allocator hides: take the first step.
    state_before = model_bytes(model, optimizer)
    with PeakMemory(device) as mem:
        step()
    step_peak = mem.peak_bytes - (model_bytes(model, optimizer) - state_before)  # new optimizer state is model memory
    times = time_steps(step, device=device, warmup=c["warmup"], repeats=c["repeats"], iters=c["iters"])
    step_time, t20, t80 = spread(times)
    thr, thr20, thr80 = spread([c["batch_size"] / t for t in times])
    flops_per_step = flops_per_image * c["batch_size"] * (3 if train else 1)  # backward ~ 2x forward
    rows.base["gflops"] = flops_per_image / 1e9
    n = len(times)
    out = [
        rows.row("throughput", thr, "img/s", thr20, thr80, n),
        rows.row("step_time", step_time * 1e3, "ms", t20 * 1e3, t80 * 1e3, n),
        rows.row("peak_memory", max(0, step_peak) / MIB, "MiB", n_repeats=1),
        rows.row("model_memory", model_bytes(model, optimizer) / MIB, "MiB", n_repeats=1),
        rows.row("achieved_tflops", flops_per_step / step_time / 1e12, "TFLOP/s", flops_per_step / t80 / 1e12,
                 flops_per_step / t20 / 1e12, n),
    ]
    peak = peak_tflops(rows.base["gpu"], c["dtype"]) if device == "cuda" else None
    if peak:
        out.append(rows.row("mfu", flops_per_step / step_time / 1e12 / peak, "fraction", n_repeats=n))
    return out


def run_cell(job: Job) -> list[dict]:
    """Run one cell; failures inside it become rows (status oom or error), never exceptions."""
    task = job.cell["task"]
    try:
        if task in ("infer", "train"):
            return measure_model(job)
        if task == "attention":
            from .measure.attention import measure_attention

            return measure_attention(job)
        from .train import run_accuracy_cell

        return run_accuracy_cell(job)
    except Exception as err:  # noqa: BLE001 - a failing cell is a result, the run goes on
        status = "oom" if is_oom(err) else "error"
        message = f"{type(err).__name__}: {err}".strip().replace("\n", " ")[:2000]
        traceback.print_exc()
        return [failure_row(job, status, message)]


def failure_row(job: Job, status: str, message: str) -> dict:
    return RowMaker(job).row("status", None, "", status=status, error=message)


def main(argv: list[str]) -> int:
    job_path, rows_path = Path(argv[0]), Path(argv[1])
    job = Job(**json.loads(job_path.read_text()))
    rows = run_cell(job)
    write_atomic(rows_path, json.dumps(rows, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
