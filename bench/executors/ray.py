"""The Ray executor (`--executor ray [--address auto|HOST:PORT]`, `pip install vitbench[ray]`): every cell is a
Ray task that runs the same cell process as the local executor, on whichever node Ray places it.

Resources follow the task's kind: a throughput cell takes a whole GPU (on CPU clusters, a whole node's CPUs), so
it is alone on its device; an accuracy cell takes 1/concurrency of a GPU (or of a node's CPUs). Cells of a lower
stage (pretraining) finish before the next stage is submitted. The driver stays the only writer of the run
dir: a task runs in a scratch folder on its node, receives the checkpoints it may need as bytes, and hands back
its rows and the files it wrote (curves, artifacts, checkpoints, its log), which the driver writes. So resume,
the lock and per-cell results behave exactly as locally. A worker or node lost mid-cell becomes a `killed` row
with Ray's reason (--retry-failed runs it again). Without --address a local Ray instance is started, so the
same command works on a laptop. Every node needs this project installed (the same code version: each row
records the version that produced it).
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from pathlib import Path

from ..paths import CellContext, RunPaths
from ..results import RowMaker
from ..spec import CellSpec
from ..tasks import TASKS
from .local import OnDone, OnStart, by_stage
from .process import CellEnvironmentError, run_cell_process


class RayUnavailable(RuntimeError):
    """Ray is not installed, or the cluster cannot be reached; one line."""


def _import_ray():
    try:
        import ray
    except ImportError:
        raise RayUnavailable("the ray executor needs Ray: pip install 'vitbench[ray]' (or bash tools/install.sh "
                             "with VITBENCH_EXTRAS=test,ray)") from None
    return ray


def check_cluster(address: str | None, timeout_s: float = 5.0) -> None:
    """Before a run dir is touched: Ray is importable and, for --address HOST:PORT, something listens there (one
    bounded connection attempt, instead of Ray's own retries)."""
    _import_ray()
    if address in (None, "auto", "local"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise RayUnavailable(f"--address {address!r}: expected auto or HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as err:
        raise RayUnavailable(f"--address {address}: no Ray cluster answers there ({err.strerror or err}); start one "
                             "with `ray start --head` or drop --address for a local instance") from None


def _files(root: Path, folders: tuple[str, ...]) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for folder in folders if (root / folder).is_dir()
            for p in sorted((root / folder).rglob("*")) if p.is_file()}


def cell_task(spec_dict: dict, ctx_dict: dict, inputs: dict[str, bytes], timeout_s: int, board) -> tuple[
        list[dict], dict[str, bytes]]:
    """Runs on a Ray worker: the cell in a scratch run dir on this node; returns its rows and the files it wrote."""
    import ray

    spec = CellSpec.from_dict(spec_dict)
    scratch = Path(tempfile.mkdtemp(prefix=f"vitbench-{spec.cell_id}-"))
    try:
        for name, data in inputs.items():
            (scratch / name).parent.mkdir(parents=True, exist_ok=True)
            (scratch / name).write_bytes(data)
        gpus = ",".join(str(g) for g in ray.get_gpu_ids())
        placement = f"ray:{socket.gethostname()}:" + (f"cuda:{gpus}" if gpus else spec.device)
        ctx = CellContext(**{**ctx_dict, "run_dir": scratch, "placement": placement})
        board.started.remote(spec.cell_id, placement, os.getpid())
        rows = run_cell_process(spec, ctx, timeout_s)
        outputs = {k: v for k, v in _files(scratch, RunPaths.SHIPPED).items() if k not in inputs}
        return rows, outputs
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


class StartBoard:
    """A tiny actor: tasks report when and where they start; the driver drains the reports for its progress."""

    def __init__(self):
        self.events: list[tuple[str, str, int]] = []

    def started(self, cell_id: str, placement: str, pid: int) -> None:
        self.events.append((cell_id, placement, pid))

    def drain(self) -> list[tuple[str, str, int]]:
        events, self.events = self.events, []
        return events


class RayExecutor:
    def __init__(self, run_dir: Path, ctx: CellContext, *, timeout_s: int, concurrency: int,
                 address: str | None = None):
        self.run_dir, self.ctx = Path(run_dir), ctx
        self.timeout_s, self.concurrency, self.address = timeout_s, concurrency, address
        self.worker_pids: dict[str, int] = {}  # cell id -> the Ray worker running it (tests kill one)

    def _resources(self, cell: CellSpec, node_cpus: float) -> dict:
        alone = TASKS[cell.task].kind == "throughput"
        if cell.device == "cuda":
            return {"num_gpus": 1 if alone else 1 / self.concurrency, "num_cpus": 1}
        return {"num_cpus": node_cpus if alone else max(1.0, node_cpus / self.concurrency)}

    def _inputs(self, cell: CellSpec) -> dict[str, bytes]:
        """The checkpoint of this run that the cell reads, if any."""
        if cell.init_cell is None:
            return {}
        paths = RunPaths(self.run_dir)
        path = paths.checkpoint(cell.init_cell)
        return {paths.relative(path): path.read_bytes()} if path.is_file() else {}

    def run(self, cells: list[CellSpec], on_start: OnStart, on_done: OnDone) -> None:
        ray = _import_ray()
        started_here = not ray.is_initialized()
        if started_here:
            ray.init(address=self.address, include_dashboard=False, log_to_driver=False)
        try:
            board = ray.remote(StartBoard).remote()
            remote_task = ray.remote(max_retries=0)(cell_task)
            node_cpus = min(n["Resources"].get("CPU", 1) for n in ray.nodes() if n["Alive"])
            for stage in by_stage(cells):
                self._run_stage(ray, remote_task, board, stage, node_cpus, on_start, on_done)
        finally:
            if started_here:
                ray.shutdown()

    def _run_stage(self, ray, remote_task, board, cells, node_cpus, on_start: OnStart, on_done: OnDone) -> None:
        ctx = self.ctx.to_dict()
        pending = {remote_task.options(**self._resources(cell, node_cpus)).remote(
            cell.to_dict(), {**ctx, "concurrency": 1 if TASKS[cell.task].kind == "throughput" else self.concurrency},
            self._inputs(cell), self.timeout_s, board): cell for cell in cells}
        by_id = {cell.cell_id: cell for cell in cells}
        try:
            self._collect(ray, board, pending, by_id, on_start, on_done)
        except BaseException:  # the runner stops: no cell of this run keeps running on the cluster
            for ref in pending:
                ray.cancel(ref, force=True)
            raise

    def _lost(self, cell: CellSpec, err: Exception) -> list[dict]:
        reason = str(err).strip().splitlines()[0][:300]
        return [RowMaker(cell, self.ctx).failure("killed", f"Ray lost the cell: {type(err).__name__}: {reason}")]

    def _collect(self, ray, board, pending: dict, by_id: dict, on_start: OnStart, on_done: OnDone) -> None:
        paths = RunPaths(self.run_dir)
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
            for cell_id, placement, pid in ray.get(board.drain.remote()):
                self.worker_pids[cell_id] = pid
                on_start(by_id[cell_id], placement)
            for ref in ready:
                cell = pending.pop(ref)
                try:
                    rows, outputs = ray.get(ref)
                except ray.exceptions.RayTaskError as err:
                    if isinstance(err.cause, CellEnvironmentError):  # a full disk on the node: stop, as locally
                        raise err.cause from None
                    rows, outputs = self._lost(cell, err), {}
                except ray.exceptions.RayError as err:  # a lost worker or node, or Ray itself failing
                    rows, outputs = self._lost(cell, err), {}
                for name, data in outputs.items():
                    path = paths.inside(name)
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(data)
                on_done(cell, rows)
