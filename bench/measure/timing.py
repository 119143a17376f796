"""Wall-clock timing of a step: warm up, synchronise, time `iters` steps per repeat (CUDA events on GPU,
perf_counter on CPU), report per-step seconds for each repeat."""

from __future__ import annotations

import time
from typing import Callable

import numpy as np
import torch


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_steps(step: Callable[[], object], *, device: str, warmup: int, repeats: int, iters: int) -> list[float]:
    """Seconds per step, one value per repeat."""
    for _ in range(warmup):
        step()
    synchronize(device)
    times = []
    for _ in range(repeats):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(iters):
                step()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3 / iters)
        else:
            begin = time.perf_counter()
            for _ in range(iters):
                step()
            times.append((time.perf_counter() - begin) / iters)
    return times


def spread(values: list[float]) -> tuple[float, float, float]:
    """(median, p20, p80)."""
    median, p20, p80 = np.percentile(np.asarray(values, dtype=float), [50, 20, 80])
    return float(median), float(p20), float(p80)
