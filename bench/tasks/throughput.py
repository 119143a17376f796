"""Tasks `infer` and `train`: throughput, step time, peak memory, model memory, achieved TFLOP/s (and MFU,
energy per image on GPUs) of one model on synthetic inputs of the cell's shape.

Inference runs under torch.inference_mode(); a training step is forward + backward + AdamW step. The machine's
load is recorded around the timed region and suspicious timings are flagged (bench/measure/noise.py).

Paired mode (`compare_to`): two models, or one model with two backends, built in one process and timed
alternately (ABBA...), giving per-repeat ratios and a confidence interval of their median that slow drift of
the machine cannot fake; memory is measured by unpaired cells.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from ..data import input_shape
from ..measure.energy import GpuEnergy
from ..measure.flops import forward_flops, peak_tflops
from ..measure.memory import MIB, PeakMemory, model_bytes
from ..measure.noise import SystemLoad, noise_columns
from ..measure.timing import Timing, median_ci, time_paired, time_steps
from ..models import ModelInfo, attn_backends, build_model
from ..results import CellContext, RowMaker
from ..spec import CellSpec, SpecError
from .common import Task, autocast, check_model_cell, reject


def check(spec: CellSpec) -> CellSpec:
    spec = check_model_cell(spec)
    reject(spec, "budget", "recipe", "init", "train_size", "mae", "pool", "nproc")
    if spec.compare_to:
        try:
            other = check_model_cell(_other_side(spec))
        except SpecError as err:
            raise SpecError(f"compare_to: {err}") from None
        if _side_key(other) == _side_key(spec):
            raise SpecError("compare_to names the same model, backend, compile and dtype as the cell itself")
    return spec


def _side_key(spec: CellSpec) -> tuple:
    return spec.model, spec.attn_backend, spec.compile, spec.dtype


def _side_label(side: CellSpec, other: CellSpec) -> str:
    """The model, plus the settings in which the two sides differ: 'timm-vit:Ti/4', 'vit:Ti/4 math'."""
    keys = ("compile", "dtype") if side.model != other.model else ("attn_backend", "compile", "dtype")
    return " ".join([side.model, *(str(getattr(side, k)) for k in keys if getattr(side, k) != getattr(other, k))])


def _other_side(spec: CellSpec) -> CellSpec:
    """The B side of a paired cell: the cell's settings with compare_to's applied."""
    other = spec.replace(compare_to=None, **spec.compare_to)
    if "attn_backend" not in spec.compare_to:  # keep the cell's backend where the other model takes it
        backends = attn_backends(other.model)
        keep = spec.attn_backend in backends
        other = other.replace(attn_backend=spec.attn_backend if keep else ("sdpa" if backends else "none"))
    return other


@dataclass
class Prepared:
    """One side of a measurement: the model, its step, and what is known about it."""

    spec: CellSpec
    model: torch.nn.Module
    info: ModelInfo
    step: Callable[[], None]
    optimizer: torch.optim.Optimizer | None
    flops_per_image: float
    channels_last: bool

    @property
    def flops_per_step(self) -> float:
        return self.flops_per_image * self.spec.batch_size * (3 if self.spec.task == "train" else 1)


def prepare(spec: CellSpec) -> Prepared:
    device = spec.device
    in_chans, num_classes = input_shape(spec.dataset, spec.in_chans, spec.num_classes)
    torch.manual_seed(spec.seed)
    model, info = build_model(spec.model, img_size=spec.img_size, in_chans=in_chans, num_classes=num_classes,
                              attn_backend=spec.attn_backend)
    channels_last = info.family == "cnn"  # the CNNs' faster layout, on tensor cores and on oneDNN CPUs alike
    if channels_last and device == "cuda":
        torch.backends.cudnn.benchmark = True  # as timm's benchmark: pick the fastest convolution algorithms
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(device, memory_format=memory_format)
    example = torch.randn(1, in_chans, spec.img_size, spec.img_size, device=device)
    flops_per_image = forward_flops(model.eval(), example)
    x = torch.randn(spec.batch_size, in_chans, spec.img_size, spec.img_size, device=device)
    x = x.contiguous(memory_format=memory_format)
    y = torch.randint(0, num_classes, (spec.batch_size,), device=device)
    runnable = torch.compile(model) if spec.compile else model
    optimizer = None

    if spec.task == "train":
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device == "cuda")
        scaler = torch.amp.GradScaler(device, enabled=spec.dtype == "fp16")

        def step():
            with autocast(device, spec.dtype):
                loss = F.cross_entropy(runnable(x), y)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
    else:
        model.eval()

        def step():
            with torch.inference_mode(), autocast(device, spec.dtype):
                runnable(x)

    if device == "cuda":
        step()  # compilation, cuDNN autotuning, optimizer state: the allocator's peak then covers a steady step
    return Prepared(spec, model, info, step, optimizer, flops_per_image, channels_last)


def _effective(side: Prepared) -> dict:
    info = side.info
    return dict(family=info.family, impl=info.impl, variant=info.variant, patch=info.patch, params=info.params,
                attn_backend_used=info.attn_backend, gflops=side.flops_per_image / 1e9,
                channels_last=side.channels_last, batch_size_used=side.spec.batch_size)


def _timing_rows(rows: RowMaker, side: Prepared, timing: Timing, load, **override) -> list[dict]:
    """throughput, step_time, achieved_tflops (and mfu on known GPUs) of one side."""
    spec = side.spec
    step_time, t20, t80 = timing.spread()
    thr = [spec.batch_size / t for t in timing.seconds]
    noise = noise_columns(t20, t80, load.report, timing.host_bound)
    n = len(timing.seconds)
    per_step = side.flops_per_step
    out = [
        rows.row("throughput", spec.batch_size / step_time, "img/s", p20=spec.batch_size / t80,
                 p80=spec.batch_size / t20, n_repeats=n, samples=thr, **noise, **override),
        rows.row("step_time", step_time * 1e3, "ms", p20=t20 * 1e3, p80=t80 * 1e3, n_repeats=n,
                 samples=[t * 1e3 for t in timing.seconds], **noise, **override),
        rows.row("achieved_tflops", per_step / step_time / 1e12, "TFLOP/s", p20=per_step / t80 / 1e12,
                 p80=per_step / t20 / 1e12, n_repeats=n, **noise, **override),
    ]
    peak = peak_tflops(rows.base["gpu"], spec.dtype) if spec.device == "cuda" else None
    if peak:
        out.append(rows.row("mfu", per_step / step_time / 1e12 / peak, "fraction", n_repeats=n, **noise, **override))
    return out


def run(spec: CellSpec, ctx: CellContext) -> list[dict]:
    if spec.compare_to:
        return run_paired(spec, ctx)
    side = prepare(spec)
    rows = RowMaker(spec, ctx, **_effective(side))
    # On CPU the measure is the resident-set growth, which a warmed-up allocator hides: take the first step.
    state_before = model_bytes(side.model, side.optimizer)
    with PeakMemory(spec.device) as mem:
        side.step()
    step_peak = mem.peak_bytes - (model_bytes(side.model, side.optimizer) - state_before)  # new optimizer state
    with SystemLoad() as load, GpuEnergy() as energy:
        timing = time_steps(side.step, device=spec.device, warmup=spec.warmup, repeats=spec.repeats,
                            iters=spec.iters)
    out = _timing_rows(rows, side, timing, load)
    out += [rows.row("peak_memory", max(0, step_peak) / MIB, "MiB", n_repeats=1),
            rows.row("model_memory", model_bytes(side.model, side.optimizer) / MIB, "MiB", n_repeats=1)]
    if energy.joules is not None:
        images = spec.batch_size * spec.iters * spec.repeats
        seconds = sum(timing.seconds) * spec.iters
        out += [rows.row("energy_per_image", energy.joules / images, "J/img", n_repeats=1),
                rows.row("avg_power", energy.joules / seconds, "W", n_repeats=1)]
    return out


def run_paired(spec: CellSpec, ctx: CellContext) -> list[dict]:
    other_spec = _other_side(spec)
    a, b = prepare(spec), prepare(other_spec)
    with SystemLoad() as load:
        time_a, time_b = time_paired(a.step, b.step, device=spec.device, warmup=spec.warmup, repeats=spec.repeats,
                                     iters=spec.iters)
    label_a, label_b = _side_label(spec, other_spec), _side_label(other_spec, spec)
    rows_a = RowMaker(spec, ctx, **_effective(a), paired_with=label_b)
    rows_b = RowMaker(spec, ctx, **_effective(b), paired_with=label_a)
    b_requested = {k: other_spec.column_value(k) for k in ("model", "attn_backend", "compile", "dtype")}
    ratios = [tb / ta for ta, tb in zip(time_a.seconds, time_b.seconds)]  # throughput A / throughput B
    ratio, low, high = median_ci(ratios)
    return [*_timing_rows(rows_a, a, time_a, load), *_timing_rows(rows_b, b, time_b, load, **b_requested),
            rows_a.row("throughput_ratio", ratio, "x", ci_low=low, ci_high=high, n_repeats=len(ratios),
                       samples=ratios, **load.report.columns())]


TASKS = (
    Task("infer", "throughput", 1, check, run, "inference throughput, memory, FLOPs (synthetic inputs)"),
    Task("train", "throughput", 1, check, run, "training-step throughput, memory, FLOPs (synthetic inputs)"),
)
