"""Wall-clock timing of a step: warm up, synchronise, time `iters` steps per repeat (CUDA events on GPU,
perf_counter on CPU), one per-step time per repeat; paired timing of two steps, alternated, for their ratio."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

HOST_BOUND = 0.9  # GPU time per step at most this far above the host's time to enqueue it: launch-bound


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


@dataclass
class Timing:
    seconds: list[float]  # per step, one value per repeat
    host_bound: bool = False  # GPU: the host took about as long to enqueue the steps as the GPU to run them

    def spread(self) -> tuple[float, float, float]:
        return spread(self.seconds)


def _time_repeat(step: Callable[[], object], device: str, iters: int) -> tuple[float, float]:
    """(seconds per step, host seconds per step to issue them)."""
    if device == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        host = time.perf_counter()
        for _ in range(iters):
            step()
        host = time.perf_counter() - host
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3 / iters, host / iters
    begin = time.perf_counter()
    for _ in range(iters):
        step()
    elapsed = (time.perf_counter() - begin) / iters
    return elapsed, elapsed


def _timing(results: list[tuple[float, float]], device: str) -> Timing:
    seconds, host = [r[0] for r in results], [r[1] for r in results]
    return Timing(seconds, bool(device == "cuda" and np.median(host) >= HOST_BOUND * np.median(seconds)))


def time_steps(step: Callable[[], object], *, device: str, warmup: int, repeats: int, iters: int) -> Timing:
    for _ in range(warmup):
        step()
    synchronize(device)
    return _timing([_time_repeat(step, device, iters) for _ in range(repeats)], device)


def time_paired(step_a: Callable[[], object], step_b: Callable[[], object], *, device: str, warmup: int,
                repeats: int, iters: int) -> tuple[Timing, Timing]:
    """Time two steps alternately in one process, ABBA ABBA ... so that slow drift of the machine (frequency,
    other load) hits both alike; the per-repeat ratios then measure A against B."""
    for _ in range(warmup):
        step_a()
        step_b()
    synchronize(device)
    a, b = [], []
    for i in range(repeats):
        order = ((step_a, a), (step_b, b)) if i % 2 == 0 else ((step_b, b), (step_a, a))
        for step, out in order:
            out.append(_time_repeat(step, device, iters))
    return _timing(a, device), _timing(b, device)


def spread(values: list[float]) -> tuple[float, float, float]:
    """(median, p20, p80)."""
    median, p20, p80 = np.percentile(np.asarray(values, dtype=float), [50, 20, 80])
    return float(median), float(p20), float(p80)
