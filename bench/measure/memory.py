"""Peak memory of a step: peak minus what was held before it. GPU: the caching allocator's statistics;
CPU: the process's resident-set high-water mark (VmHWM), reset through /proc/self/clear_refs."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterable, Iterator

import torch

MIB = 2**20


def _proc_status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_cpu_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


class PeakMemory:
    """with PeakMemory(device) as mem: step()  ->  mem.peak_bytes (peak during the block minus before)."""

    def __init__(self, device: str):
        self.device = device
        self.peak_bytes = 0

    @contextlib.contextmanager
    def _measure(self) -> Iterator["PeakMemory"]:
        if self.device == "cuda":
            torch.cuda.synchronize()
            before = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            yield self
            torch.cuda.synchronize()
            self.peak_bytes = torch.cuda.max_memory_allocated() - before
        else:
            before = _proc_status_kib("VmRSS")
            if not _reset_cpu_peak():
                raise RuntimeError("cannot reset the peak RSS (/proc/self/clear_refs): CPU peak memory unavailable")
            yield self
            self.peak_bytes = max(0, _proc_status_kib("VmHWM") - before) * 1024

    def __enter__(self) -> "PeakMemory":
        self._ctx = self._measure()
        return self._ctx.__enter__()

    def __exit__(self, *exc) -> bool | None:
        return self._ctx.__exit__(*exc)


def tensors_bytes(tensors: Iterable[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def model_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None) -> int:
    """Weights and buffers, plus the optimizer's state tensors (after its first step)."""
    total = tensors_bytes(model.parameters()) + tensors_bytes(model.buffers())
    if optimizer is not None:
        total += tensors_bytes(v for state in optimizer.state.values() for v in state.values()
                               if isinstance(v, torch.Tensor))
    return total
