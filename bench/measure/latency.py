"""Per-call latency: every call timed on its own (synchronised on a GPU), its percentiles, and two callables timed
alternately for their ratio."""

from __future__ import annotations

import time
from typing import Callable

import numpy as np
import torch

from .timing import synchronize

PERCENTILES = (50, 90, 99)


def _time_call(call: Callable[[], object], device: str) -> float:
    """Seconds of one call, from the first instruction to the last result (CUDA events around it on a GPU)."""
    if device == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        call()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    begin = time.perf_counter()
    call()
    return time.perf_counter() - begin


def time_calls(call: Callable[[], object], *, device: str, warmup: int, calls: int) -> list[float]:
    """`calls` per-call times (s) after `warmup` untimed calls."""
    for _ in range(warmup):
        call()
    synchronize(device)
    return [_time_call(call, device) for _ in range(calls)]


def time_calls_paired(call_a: Callable[[], object], call_b: Callable[[], object], *, device: str, warmup: int,
                      calls: int, block: int = 10) -> tuple[list[float], list[float], list[float]]:
    """Both callables timed in alternating blocks of `block` calls (ABBA ...), so that slow drift of the machine
    hits both alike: (a's per-call times, b's, and per pair of blocks the ratio of a's median to b's). Each block
    starts with one untimed call: the side that ran before may leave work behind (ONNX Runtime's worker threads
    spin on after a run returns), which would otherwise land on the first timed calls of the other side."""
    for _ in range(warmup):
        call_a()
        call_b()
    synchronize(device)
    a, b, ratios = [], [], []
    for i in range(max(1, calls // block)):
        order = ((call_a, a), (call_b, b)) if i % 2 == 0 else ((call_b, b), (call_a, a))
        blocks = {}
        for call, out in order:
            call()
            synchronize(device)
            times = [_time_call(call, device) for _ in range(block)]
            out += times
            blocks[id(out)] = np.median(times)
        ratios.append(float(blocks[id(a)] / blocks[id(b)]))
    return a, b, ratios


def percentiles(samples: list[float], qs: tuple[int, ...] = PERCENTILES) -> dict[int, float]:
    """{q: the q-th percentile} (numpy's default, linear interpolation between order statistics)."""
    values = np.percentile(np.asarray(samples, dtype=float), qs)
    return {q: float(v) for q, v in zip(qs, values)}
