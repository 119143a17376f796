"""The sides of a timed model cell and their pairing, shared by the tasks that time a model on synthetic inputs
(bench/tasks/throughput.py: infer, train; bench/tasks/latency.py: latency).

A side is one model built, placed and ready to step (inference: served by its engine). A paired cell
(`compare_to`) has two: the cell's own settings and the B side, the cell's settings with compare_to's applied
(SIDE_AXES: what it may change); both are built in one process, the task times them alternately (ABBA,
bench/measure/timing.py: time_paired, bench/measure/latency.py: time_calls_paired) and `paired_rows` gives
each side's rows and their ratio's median with its interval over the independent unit, which slow drift of the
machine cannot fake.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch
import torch.nn.functional as F

from ..data import input_shape
from ..engines import EngineMismatch, EngineUnavailable, Served, serve
from ..measure.flops import forward_flops
from ..models import ModelInfo, attn_backends, build_model
from ..paths import CellContext
from ..precision import autocast
from ..results import RowMaker
from ..spec import CellSpec, SpecError
from .common import MODEL_CELL, check_model_cell

if TYPE_CHECKING:  # bench.stats imports scipy, whose BLAS starts a thread: never in the warm parent (PRELOAD)
    from ..stats import Interval

SYNTHETIC = (*MODEL_CELL, "in_chans", "num_classes", "compare_to")  # a model timed on synthetic inputs, or paired


def check(spec: CellSpec) -> CellSpec:
    """A model cell (common.check_model_cell); compare_to names a side that is a valid cell of its own and differs
    from this one."""
    spec = check_model_cell(spec)
    if spec.compare_to:
        try:
            other = check_model_cell(other_side(spec))
        except SpecError as err:
            raise SpecError(f"compare_to: {err}") from None
        if _side_key(other) == _side_key(spec):
            raise SpecError(f"compare_to names the same {', '.join(SIDE_AXES)} as the cell itself")
    return spec


SIDE_AXES = ("model", "attn_backend", "compile", "dtype", "engine")  # what compare_to may change


def _side_key(spec: CellSpec) -> tuple:
    return tuple(getattr(spec, name) for name in SIDE_AXES)


def side_label(side: CellSpec, other: CellSpec) -> str:
    """The model, plus the settings in which the two sides differ: 'timm-vit:Ti/4', 'vit:Ti/4 math'."""
    keys = SIDE_AXES[2:] if side.model != other.model else SIDE_AXES[1:]
    return " ".join([side.model, *(str(getattr(side, k)) for k in keys if getattr(side, k) != getattr(other, k))])


def other_side(spec: CellSpec) -> CellSpec:
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
    served: Served | None = None  # inference: the engine

    @property
    def flops_per_step(self) -> float:
        return self.flops_per_image * self.spec.batch_size * (3 if self.spec.task == "train" else 1)


def prepare(spec: CellSpec, ctx: CellContext) -> Prepared:
    """The model of one side, built, placed and ready to step (inference: served by its engine)."""
    device = spec.device
    in_chans, num_classes = input_shape(spec.dataset, spec.in_chans, spec.num_classes)
    torch.manual_seed(spec.seed)
    model, info = build_model(spec.model, img_size=spec.img_size, in_chans=in_chans, num_classes=num_classes,
                              attn_backend=spec.attn_backend)
    if info.channels_last and device == "cuda":
        torch.backends.cudnn.benchmark = True  # as timm's benchmark: pick the fastest convolution algorithms
    memory_format = info.memory_format
    model = model.to(device, memory_format=memory_format)
    example = torch.randn(1, in_chans, spec.img_size, spec.img_size, device=device)
    flops_per_image = forward_flops(model.eval(), example)
    x = torch.randn(spec.batch_size, in_chans, spec.img_size, spec.img_size, device=device)
    x = x.contiguous(memory_format=memory_format)
    optimizer = served = None
    if spec.task == "train":
        y = torch.randint(0, num_classes, (spec.batch_size,), device=device)
        runnable = torch.compile(model) if spec.compile else model
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
        served = serve(spec.engine, model, x, device, spec.dtype, ctx.paths.cache_dir / "onnx" / spec.cell_id)
        step = served.run

    if device == "cuda":
        step()  # compilation, cuDNN autotuning, optimizer state: the allocator's peak then covers a steady step
    return Prepared(spec, model, info, step, optimizer, flops_per_image, served)


def effective(side: Prepared) -> dict:
    info = side.info
    detail = {"engine_detail": json.dumps(side.served.detail, sort_keys=True)} if side.served and side.served.detail \
        else {}
    return dict(family=info.family, impl=info.impl, variant=info.variant, patch=info.patch, params=info.params,
                attn_backend_used=info.attn_backend, gflops=side.flops_per_image / 1e9,
                channels_last=info.channels_last, batch_size_used=side.spec.batch_size, **detail)


def engine_rows(maker: RowMaker, side: Prepared, **override) -> list[dict]:
    """What serving cost before the first answer (compile or export time) and how far it is from eager."""
    served = side.served
    if served is None or served.engine == "eager":
        return []
    return [maker.row(served.setup_metric, served.setup_seconds, n_repeats=1, **override),
            maker.row("engine_max_error", served.max_error, n_repeats=1, **override)]


def unavailable(spec: CellSpec, ctx: CellContext, err: Exception) -> list[dict]:
    """An engine that cannot serve the model here is a skipped cell; one that disagrees with eager an error."""
    status = "skipped" if isinstance(err, EngineUnavailable) else "error"
    return [RowMaker(spec, ctx).failure(status, str(err))]


def sides(spec: CellSpec, ctx: CellContext) -> tuple[Prepared, ...] | list[dict]:
    """The prepared side(s) of a cell (two for a paired cell), or the failure rows of an engine that cannot serve."""
    try:
        return tuple(prepare(s, ctx) for s in ((spec, other_side(spec)) if spec.compare_to else (spec,)))
    except (EngineUnavailable, EngineMismatch) as err:
        return unavailable(spec, ctx, err)


def other_requested(spec: CellSpec) -> dict:
    """The B side's requested columns in a paired cell's rows."""
    other = other_side(spec)
    return {k: other.column_value(k) for k in SIDE_AXES}


def ratio_columns(ratio: "Interval") -> dict:
    """A paired ratio's interval as ci_low / ci_high (empty where the repeats are too few for one)."""
    return {"ci_low": ratio.low, "ci_high": ratio.high} if ratio.has_interval else {}


def paired_rows(spec: CellSpec, ctx: CellContext, a: Prepared, b: Prepared, rows: Callable[..., list[dict]],
                measured: tuple, load, metric: str, ratios: list[float], samples: list[float]) -> list[dict]:
    """A paired cell's rows: each side's measurement (`rows(maker, side, measured, load, **override)`, the B
    side's with its requested columns), each side's engine rows, and `metric`: the median of the per-unit
    `ratios` with its interval (each ratio one independent unit: a pair of repeats, an ABBA block), `samples`
    recorded beside it."""
    maker_a = RowMaker(spec, ctx, **effective(a), paired_with=side_label(b.spec, spec))
    maker_b = RowMaker(spec, ctx, **effective(b), paired_with=side_label(spec, b.spec))
    b_requested = other_requested(spec)
    from ..stats import median_interval  # here, not at import: see TYPE_CHECKING above

    ratio = median_interval(ratios)
    return [*rows(maker_a, a, measured[0], load), *rows(maker_b, b, measured[1], load, **b_requested),
            *engine_rows(maker_a, a), *engine_rows(maker_b, b, **b_requested),
            maker_a.row(metric, ratio.estimate, **ratio_columns(ratio), n_repeats=len(ratios), samples=samples,
                        **load.report.columns())]
