"""Task `latency`: how long one call takes in the engine that serves the model (bench/engines.py: eager,
torch.compile, ONNX Runtime), at the cell's batch (1 and small batches, the deployment question): `calls` calls on
synthetic inputs, each timed on its own (synchronised on a GPU) after a tenth as many warm-up calls. Rows: p50,
p90 and p99 in ms (every call's time in `samples`), the noise flags of throughput cells, and the engine's
compile or export time and its error against eager.

Paired (`compare_to`, e.g. {engine: eager}; bench/tasks/pairing.py): both sides in one process, in alternating
blocks of 10 calls (ABBA, each after one untimed call), and latency_ratio: this side's median call time over the
other side's, with a bootstrap interval over the blocks' ratios (below 1: this side is faster).
"""

from __future__ import annotations

import numpy as np

from ..measure.latency import percentiles, time_calls, time_calls_paired
from ..measure.noise import SystemLoad, noise_columns
from ..measure.phases import phase
from ..paths import CellContext
from ..results import RowMaker
from ..spec import CellSpec
from .common import Task, reads
from .pairing import SYNTHETIC, check, effective, engine_rows, paired_rows, sides

READS = reads(*SYNTHETIC, "engine", "calls")
BLOCK = 10  # calls per block of a paired cell


def _latency_rows(maker: RowMaker, samples: list[float], load, **override) -> list[dict]:
    ms = [s * 1e3 for s in samples]
    q = percentiles(ms, (20, 50, 80, 90, 99))
    noise = noise_columns(load.report, q[20], q[80])
    common = dict(n_repeats=len(ms), p20=q[20], p80=q[80], **noise, **override)
    return [maker.row("latency_p50", q[50], samples=ms, **common), maker.row("latency_p90", q[90], **common),
            maker.row("latency_p99", q[99], **common)]


def run(spec: CellSpec, ctx: CellContext) -> list[dict]:
    prepared = sides(spec, ctx)
    if isinstance(prepared, list):
        return prepared
    phase("train")
    warmup = max(1, spec.calls // 10)
    if not spec.compare_to:
        (side,) = prepared
        with SystemLoad() as load:
            samples = time_calls(side.step, device=spec.device, warmup=warmup, calls=spec.calls)
        maker = RowMaker(spec, ctx, **effective(side))
        return _latency_rows(maker, samples, load) + engine_rows(maker, side)
    a, b = prepared
    with SystemLoad() as load:
        samples_a, samples_b, ratios = time_calls_paired(a.step, b.step, device=spec.device, warmup=warmup,
                                                         calls=spec.calls, block=BLOCK)

    def side_rows(maker, side, samples, load, **override):  # the shape paired_rows calls; latency needs no side
        return _latency_rows(maker, samples, load, **override)

    return paired_rows(spec, ctx, a, b, side_rows, (samples_a, samples_b), load, "latency_ratio", ratios,
                       list(np.round(ratios, 6)))  # each ratio one ABBA block: the unit that is independent


TASKS = (Task("latency", "throughput", 1, READS, check, run,
              "per-call latency (p50/p90/p99) at small batches in an engine: eager, compile, onnxruntime"),)
