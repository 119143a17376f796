"""The local executor: every cell in its own subprocess (`python -m bench.cell`) on this machine.

Throughput cells have a device to themselves: one at a time per GPU (`--gpus`, default all visible; one at a
time on a CPU). Accuracy cells are packed `concurrency` per device. Cells of a lower stage (pretraining) all
finish before the next stage starts. A cell process is in its own process group and dies with the runner
(parent-death signal); a timeout kills its group. How a process ended becomes the row's status: `timeout`,
`oom` (killed while the kernel's OOM-kill counter rose, or an out-of-memory error inside), `killed` (another
signal, with its number), `error`.
"""

from __future__ import annotations

import ctypes
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

from ..results import CellContext, RowMaker, check_rows, write_atomic
from ..spec import CellSpec
from ..tasks import TASKS

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
OnStart = Callable[[CellSpec, str], None]
OnDone = Callable[[CellSpec, list[dict]], None]


try:
    _PRCTL = ctypes.CDLL(None, use_errno=True).prctl  # resolved here, not in the forked child
except (OSError, AttributeError):
    _PRCTL = None  # not Linux: the cell's own watchdog (bench/cell.py) still ends it


def _die_with_parent() -> None:  # runs in the child between fork and exec
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: SIGKILL when the runner's thread that started us dies


def oom_kills() -> int | None:
    """The kernel's count of OOM kills since boot (/proc/vmstat), None where unknown."""
    try:
        for line in Path("/proc/vmstat").read_text().splitlines():
            if line.startswith("oom_kill "):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def signal_status(sig: int, oom_before: int | None) -> tuple[str, str]:
    name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else f"signal {sig}"
    after = oom_kills()
    if sig == signal.SIGKILL and oom_before is not None and after is not None and after > oom_before:
        return "oom", f"cell process killed by the kernel's out-of-memory killer ({name})"
    return "killed", f"cell process killed by signal {sig} ({name})"


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
                 gpus: list[str] | None = None):
        self.run_dir = Path(run_dir)
        self.ctx = ctx
        self.timeout_s = timeout_s
        self.concurrency = concurrency
        self.devices = gpus or [None]  # one slot per GPU (CUDA_VISIBLE_DEVICES per cell), or None: the CPU
        self._procs: set[subprocess.Popen] = set()
        self._lock = threading.Lock()
        self._interrupted = False

    def run(self, cells: list[CellSpec], on_start: OnStart, on_done: OnDone) -> None:
        try:
            for stage in by_stage(cells):
                alone = [c for c in stage if TASKS[c.task].kind == "throughput"]
                shared = [c for c in stage if TASKS[c.task].kind != "throughput"]
                self._pool(alone, self.devices, 1, on_start, on_done)
                self._pool(shared, [d for d in self.devices for _ in range(self.concurrency)], self.concurrency,
                           on_start, on_done)
        except BaseException:  # Ctrl-C or a crash of the runner: no cell outlives it, none is recorded half-done
            self._interrupted = True
            self.kill_all()
            raise

    def _pool(self, cells: list[CellSpec], slots: list, concurrency: int, on_start: OnStart, on_done: OnDone):
        free: queue.Queue = queue.Queue()
        for slot in slots:
            free.put(slot)

        def work(cell: CellSpec) -> None:
            device = free.get()
            try:
                placement = f"local:{socket.gethostname()}:" + (f"cuda:{device}" if device is not None else cell.device)
                on_start(cell, placement)
                rows = self.run_one(cell, device, concurrency, placement)
            finally:
                free.put(device)
            if not self._interrupted:
                on_done(cell, rows)

        with ThreadPoolExecutor(max_workers=max(1, len(slots))) as pool:
            for future in [pool.submit(work, cell) for cell in cells]:
                future.result()

    def kill_all(self) -> None:
        with self._lock:
            for proc in self._procs:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def run_one(self, cell: CellSpec, device: str | None, concurrency: int, placement: str) -> list[dict]:
        ctx = CellContext(self.ctx.suite, self.ctx.run_id, self.run_dir.resolve(), concurrency, placement)
        env = {"CUDA_VISIBLE_DEVICES": str(device)} if device is not None else {}
        return run_cell_process(cell, ctx, self.timeout_s, env, self._procs, self._lock)


def run_cell_process(cell: CellSpec, ctx: CellContext, timeout_s: int, env_extra: dict[str, str] | None = None,
                     live: set | None = None, lock: threading.Lock | None = None) -> list[dict]:
    """Run one cell in its own process (own process group, dies with its parent) writing into ctx.run_dir;
    its rows, or a failure row saying how the process ended. `live` (under `lock`) holds the running process,
    for whoever may have to kill it."""
    run_dir = ctx.run_dir
    work = run_dir / "work"
    job_path, rows_path = work / f"{cell.cell_id}.job.json", work / f"{cell.cell_id}.rows.json"
    log_path = run_dir / "logs" / f"{cell.cell_id}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    rows_path.unlink(missing_ok=True)
    write_atomic(job_path, json.dumps({"spec": cell.to_dict(), "context": ctx.to_dict()}))
    env = dict(os.environ, PYTHONUNBUFFERED="1", TRITON_CACHE_DIR=str(run_dir / ".triton-cache"),
               TRITON_CACHE_AUTOTUNING="1", **(env_extra or {}))
    lock, live = lock or threading.Lock(), live if live is not None else set()
    oom_before = oom_kills()
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "bench.cell", str(job_path), str(rows_path)],
                                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT,
                                start_new_session=True, preexec_fn=_die_with_parent)
        with lock:
            live.add(proc)
        try:
            returncode = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            returncode = None
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # the cell and anything it started
            except ProcessLookupError:
                pass
            proc.wait()
            with lock:
                live.discard(proc)
    job_path.unlink(missing_ok=True)
    rows = RowMaker(cell, ctx)
    if returncode is None:
        return [rows.failure("timeout", f"cell exceeded timeout_s={timeout_s}s")]
    tail = log_path.read_text(errors="replace")[-1500:].strip().replace("\n", " | ")
    if returncode == 0 and rows_path.exists():
        try:
            return check_rows(cell, json.loads(rows_path.read_text()))
        except (ValueError, KeyError) as err:
            return [rows.failure("error", f"cell wrote unreadable rows ({err}); log tail: {tail}")]
        finally:
            rows_path.unlink()
    if returncode < 0:
        status, reason = signal_status(-returncode, oom_before)
        return [rows.failure(status, f"{reason}; log tail: {tail}")]
    return [rows.failure("error", f"cell process exited with {returncode}; log tail: {tail}")]
