"""The local executor: every cell in its own process on this machine (bench/executors/process.py), forked warm
by default.

Throughput cells have a device to themselves: one at a time per GPU (`--gpus`, default all visible; one at a
time on a CPU). Accuracy cells are packed `concurrency` per device. Cells of a lower stage (pretraining) all
finish before the next stage starts. When the runner stops (Ctrl-C, SIGTERM, a full disk), no queued cell
starts, every running cell's process group is killed, and nothing half-done is recorded.
"""

from __future__ import annotations

import os
import queue
import socket
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Callable

from ..paths import CellContext
from ..spec import CellSpec
from ..tasks import TASKS
from .process import CellGroups, run_cell_process

OnStart = Callable[[CellSpec, str], None]
OnDone = Callable[[CellSpec, list[dict]], None]


def visible_gpus() -> list[str]:
    """The GPUs cells may use, as CUDA_VISIBLE_DEVICES values: that variable's entries if set, else 0..n-1."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", "").strip():
        return [g.strip() for g in os.environ["CUDA_VISIBLE_DEVICES"].split(",") if g.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def by_stage(cells: list[CellSpec]) -> list[list[CellSpec]]:
    stages: dict[int, list[CellSpec]] = {}
    for cell in cells:
        stages.setdefault(TASKS[cell.task].stage, []).append(cell)
    return [stages[s] for s in sorted(stages)]


class LocalExecutor:
    def __init__(self, run_dir: Path, ctx: CellContext, *, timeout_s: int, concurrency: int,
                 gpus: list[str] | None = None, start: str = "warm"):
        self.run_dir = Path(run_dir)
        self.ctx = ctx
        self.timeout_s = timeout_s
        self.concurrency = concurrency
        self.devices = gpus or [None]  # one slot per GPU (CUDA_VISIBLE_DEVICES per cell), or None: the CPU
        self.start = start
        self.groups = CellGroups()

    def run(self, cells: list[CellSpec], on_start: OnStart, on_done: OnDone) -> None:
        for stage in by_stage(cells):
            alone = [c for c in stage if TASKS[c.task].kind == "throughput"]
            shared = [c for c in stage if TASKS[c.task].kind != "throughput"]
            self._pool(alone, self.devices, 1, on_start, on_done)
            self._pool(shared, [d for d in self.devices for _ in range(self.concurrency)], self.concurrency,
                       on_start, on_done)

    def _pool(self, cells: list[CellSpec], slots: list, concurrency: int, on_start: OnStart, on_done: OnDone):
        free: queue.Queue = queue.Queue()
        for slot in slots:
            free.put(slot)

        def work(cell: CellSpec) -> None:
            device = free.get()
            try:
                if self.groups.stopped:
                    return
                placement = f"local:{socket.gethostname()}:" + (f"cuda:{device}" if device is not None else cell.device)
                on_start(cell, placement)
                rows = self.run_one(cell, device, concurrency, placement)
            finally:
                free.put(device)
            if not self.groups.stopped:
                on_done(cell, rows)

        pool = ThreadPoolExecutor(max_workers=max(1, len(slots)))
        try:
            pending = {pool.submit(work, cell) for cell in cells}
            while pending:  # the first failure of any cell's thread stops everything, not the one in order
                done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                for future in done:
                    future.result()
        except BaseException:  # Ctrl-C, SIGTERM, a full disk, a crash of the runner: stop everything now
            self.groups.stop()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        finally:
            pool.shutdown(wait=True)

    def run_one(self, cell: CellSpec, device: str | None, concurrency: int, placement: str) -> list[dict]:
        ctx = CellContext(self.ctx.suite, self.ctx.run_id, self.run_dir.resolve(), concurrency, placement)
        env = {"CUDA_VISIBLE_DEVICES": str(device)} if device is not None else {}
        return run_cell_process(cell, ctx, self.timeout_s, env, self.groups, self.start)
