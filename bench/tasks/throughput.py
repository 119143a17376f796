"""Tasks `infer` and `train`: throughput, step time, peak memory, model memory, achieved TFLOP/s (and MFU,
energy per image on GPUs) of one model on synthetic inputs of the cell's shape.

Inference runs under torch.inference_mode() in the cell's engine (bench/engines.py: eager, torch.compile, ONNX
Runtime; compile or export time is a metric of its own, and the engine's output is checked against eager's); a
training step is forward + backward + AdamW step (`compile: true` wraps the model in torch.compile). The
machine's load is recorded around the timed region and suspicious timings are flagged (bench/measure/noise.py).

Paired mode (`compare_to`, bench/tasks/pairing.py): two models, or one model with two backends, built in one
process and timed alternately (ABBA...), giving per-repeat ratios and a confidence interval of their median that
slow drift of the machine cannot fake; memory is measured by unpaired cells.
"""

from __future__ import annotations

from ..measure.energy import GpuEnergy
from ..measure.flops import peak_tflops
from ..measure.memory import MIB, PeakMemory, model_bytes
from ..measure.noise import SystemLoad, noise_columns
from ..measure.phases import phase
from ..measure.timing import Timing, time_paired, time_steps
from ..paths import CellContext
from ..results import RowMaker
from ..spec import CellSpec
from .common import Task, reads
from .pairing import SYNTHETIC, Prepared, check, effective, engine_rows, paired_rows, sides

INFER = reads(*SYNTHETIC, "engine")  # inference compiles with engine: compile
TRAIN = reads(*SYNTHETIC, "compile")


def _timing_rows(maker: RowMaker, side: Prepared, timing: Timing, load, **override) -> list[dict]:
    """throughput, step_time, achieved_tflops (and mfu on known GPUs) of one side."""
    spec = side.spec
    step_time, t20, t80 = timing.spread()
    thr = [spec.batch_size / t for t in timing.seconds]
    noise = noise_columns(load.report, t20, t80, timing.host_bound)
    n = len(timing.seconds)
    per_step = side.flops_per_step
    out = [
        maker.row("throughput", spec.batch_size / step_time, p20=spec.batch_size / t80,
                 p80=spec.batch_size / t20, n_repeats=n, samples=thr, **noise, **override),
        maker.row("step_time", step_time * 1e3, p20=t20 * 1e3, p80=t80 * 1e3, n_repeats=n,
                 samples=[t * 1e3 for t in timing.seconds], **noise, **override),
        maker.row("achieved_tflops", per_step / step_time / 1e12, p20=per_step / t80 / 1e12,
                 p80=per_step / t20 / 1e12, n_repeats=n, **noise, **override),
    ]
    peak = peak_tflops(maker.base["gpu"], spec.dtype) if spec.device == "cuda" else None
    if peak:
        out.append(maker.row("mfu", per_step / step_time / 1e12 / peak, n_repeats=n, **noise, **override))
    return out


def run(spec: CellSpec, ctx: CellContext) -> list[dict]:
    prepared = sides(spec, ctx)
    if isinstance(prepared, list):
        return prepared
    if spec.compare_to:
        return run_paired(spec, ctx, *prepared)
    (side,) = prepared
    phase("train")
    maker = RowMaker(spec, ctx, **effective(side))
    # On CPU the measure is the resident-set growth, which a warmed-up allocator hides: take the first step.
    state_before = model_bytes(side.model, side.optimizer)
    with PeakMemory(spec.device) as mem:
        side.step()
    step_peak = mem.peak_bytes - (model_bytes(side.model, side.optimizer) - state_before)  # new optimizer state
    with SystemLoad() as load, GpuEnergy() as energy:
        timing = time_steps(side.step, device=spec.device, warmup=spec.warmup, repeats=spec.repeats,
                            iters=spec.iters)
    out = _timing_rows(maker, side, timing, load) + engine_rows(maker, side)
    out += [maker.row("peak_memory", max(0, step_peak) / MIB, n_repeats=1),
            maker.row("model_memory", model_bytes(side.model, side.optimizer) / MIB, n_repeats=1)]
    if energy.joules is not None:
        images = spec.batch_size * spec.iters * spec.repeats
        seconds = sum(timing.seconds) * spec.iters
        out += [maker.row("energy_per_image", energy.joules / images, n_repeats=1),
                maker.row("avg_power", energy.joules / seconds, n_repeats=1)]
    return out


def run_paired(spec: CellSpec, ctx: CellContext, a: Prepared, b: Prepared) -> list[dict]:
    phase("train")
    with SystemLoad() as load:
        time_a, time_b = time_paired(a.step, b.step, device=spec.device, warmup=spec.warmup, repeats=spec.repeats,
                                     iters=spec.iters)
    ratios = [tb / ta for ta, tb in zip(time_a.seconds, time_b.seconds)]  # throughput A / throughput B
    return paired_rows(spec, ctx, a, b, _timing_rows, (time_a, time_b), load, "throughput_ratio", ratios, ratios)


TASKS = (
    Task("infer", "throughput", 1, INFER, check, run, "inference throughput, memory, FLOPs (synthetic inputs)"),
    Task("train", "throughput", 1, TRAIN, check, run, "training-step throughput, memory, FLOPs (synthetic inputs)"),
)
