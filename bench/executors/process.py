"""One cell in its own process: how it starts, how it is stopped, and how its end becomes a status.

Start (`start`):
  warm   the default: the cell is forked from a long-lived parent that has already imported torch, timm,
         torchvision and every task (multiprocessing's forkserver with those modules preloaded), so it pays no
         import. Nothing in that parent touches threads, CUDA or Triton (importing them starts none): CUDA is
         initialised in the cell only.
  fresh  a new interpreter per cell (`python -m bench.cell`): the slow reference (tools/cell_overhead.py).
Either way the cell is in its own process group, which dies whole with the cell's parent (bench/lifetime.py:
take_group_along; the warm parent exits when the runner does, so a runner killed with SIGKILL takes its cells
and everything they started along, data-parallel ranks included from their first instruction), and writes its output to
logs/<cell_id>.log. A timeout, or the runner stopping (Ctrl-C, SIGTERM), kills the cell's whole process group,
data-parallel ranks included.

End: the rows the cell wrote; or a failure row saying how the process ended: `timeout`, `killed` (a signal, with
its number; `oom` when the kernel's OOM-kill counter rose meanwhile), `error` (an exit code, with the log's
tail). A cell that could not write its results for lack of disk space raises CellEnvironmentError instead: that
is not a result, and the runner stops.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from .. import cell as cell_entry
from ..cell import EXIT_NO_SPACE
from ..lifetime import GROUP_SIGNAL, die_with_parent
from ..paths import CellContext
from ..results import RowMaker, check_rows, write_atomic
from ..spec import CellSpec

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
PRELOAD = ["bench.cell", "timm", "timm.models.vision_transformer", "torchvision"]
STARTS = ("warm", "fresh")


class CellEnvironmentError(RuntimeError):
    """A cell that failed because of the machine (no disk space), not because of what it measures."""


class CellGroups:
    """The process groups of the running cells, so that a stopping runner kills every one of them (and a cell
    that starts after the stop is killed at once)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._pids: set[int] = set()
        self.stopped = False

    def add(self, pid: int) -> None:
        with self._lock:
            self._pids.add(pid)
            if self.stopped:
                kill_group(pid)

    def discard(self, pid: int) -> None:
        with self._lock:
            self._pids.discard(pid)

    def stop(self) -> None:
        with self._lock:
            self.stopped = True
            for pid in self._pids:
                kill_group(pid)


def kill_group(pid: int, alone_too: bool = True) -> None:
    """SIGKILL the process group a cell leads (the cell and anything it started), or, with `alone_too`, the cell
    alone if it has not made its group yet (never after the cell was reaped: its pid may be another's by then)."""
    kills = ((os.killpg, pid), (os.kill, pid)) if alone_too else ((os.killpg, pid),)
    for kill, target in kills:
        try:
            kill(target, signal.SIGKILL)
            return
        except (ProcessLookupError, PermissionError):
            continue


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


_WARM = None
_WARM_LOCK = threading.Lock()
LAUNCH_TIMEOUT_S = 120.0  # the first launch starts the warm parent, which imports torch, timm and every task
_FALLBACK = threading.Event()  # set once the warm parent failed twice: the run's later cells start fresh


class WarmParentLost(RuntimeError):
    """The warm parent died, or did not answer within LAUNCH_TIMEOUT_S, while launching a cell."""


def warm_parent() -> multiprocessing.context.BaseContext:
    """The forkserver context whose server has imported PRELOAD (started at the first cell, and again after it
    was lost; it exits with the runner)."""
    global _WARM
    with _WARM_LOCK:
        if _WARM is None:
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload(PRELOAD)
            _WARM = context
        return _WARM


def replace_warm_parent() -> None:
    """Kill the warm parent (dead, stuck or stopped) and forget it: the next launch starts a new one."""
    server = multiprocessing.forkserver._forkserver
    with server._lock:
        if server._forkserver_pid is not None:
            try:
                os.kill(server._forkserver_pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            server._stop_unlocked()


def warm_parent_alive() -> bool:
    """Whether the warm parent runs (read from /proc: reaping it here would hide its death from multiprocessing,
    which starts a new one when it finds the old one gone)."""
    pid = multiprocessing.forkserver._forkserver._forkserver_pid
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return pid is not None and state not in ("Z", "X")


def _start_bounded(process) -> None:
    """process.start() through the warm parent, within LAUNCH_TIMEOUT_S; WarmParentLost when it fails or hangs
    (a stopped parent never answers; the thread left waiting ends when the parent is killed)."""
    failure: list[BaseException] = []
    launched = threading.Event()

    def start():
        try:
            process.start()
        except BaseException as err:  # noqa: BLE001 - handed to the launching thread
            failure.append(err)
        finally:
            launched.set()

    threading.Thread(target=start, name="vitbench-launch", daemon=True).start()
    if not launched.wait(LAUNCH_TIMEOUT_S):
        raise WarmParentLost(f"no answer within {LAUNCH_TIMEOUT_S:.0f} s")
    if failure:
        raise WarmParentLost(f"{type(failure[0]).__name__}: {failure[0]}")


def start_warm(target, args: tuple, name: str):
    """A started warm cell process; a lost or stuck warm parent is replaced once, then the run falls back to
    fresh cells (said once, on stderr); None when it has."""
    for attempt in (1, 2):
        process = warm_parent().Process(target=target, args=args, name=name)
        try:
            _start_bounded(process)
            return process
        except WarmParentLost as why:
            replace_warm_parent()
            if attempt == 2:
                _FALLBACK.set()
                print(f"note: the warm parent was lost twice while launching a cell ({why}); the rest of this run "
                      "starts each cell fresh (a slower start, the same measurement)", file=sys.stderr)
    return None


class _Process:
    """A started cell process, warm or fresh, seen through one interface."""

    def __init__(self, start: str, job: Path, rows: Path, log: Path, env: dict[str, str]):
        self.warm = None
        if start == "warm" and not _FALLBACK.is_set():
            self.warm = start_warm(cell_entry.child_main, (str(job), str(rows), str(log), env),
                                   f"vitbench-cell-{job.name}")
        if self.warm is not None:
            self._proc = self.warm
        else:
            with open(log, "w") as out:
                self._proc = subprocess.Popen([sys.executable, "-m", "bench.cell", str(job), str(rows)], stdout=out,
                                              stderr=subprocess.STDOUT, env={**os.environ, **env}, cwd=REPO_ROOT,
                                              start_new_session=True,
                                              preexec_fn=lambda: die_with_parent(GROUP_SIGNAL))
        self.pid = self._proc.pid

    def wait(self, timeout: float) -> int | None:
        """The exit code (negative: the signal), None on timeout."""
        if isinstance(self._proc, subprocess.Popen):
            try:
                return self._proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                return None
        self._proc.join(timeout)
        return self._proc.exitcode

    @property
    def lost_with_warm_parent(self) -> bool:
        """A warm cell whose parent is gone: multiprocessing reads its end as exit code 255."""
        return self.warm is not None and self._proc.exitcode == 255 and not warm_parent_alive()

    def reap(self) -> None:
        if isinstance(self._proc, subprocess.Popen):
            self._proc.wait()
        else:
            self._proc.join()


def run_cell_process(cell: CellSpec, ctx: CellContext, timeout_s: int, env_extra: dict[str, str] | None = None,
                     groups: CellGroups | None = None, start: str = "warm") -> list[dict]:
    """Run one cell in its own process writing into ctx.run_dir; its rows, or a failure row saying how the
    process ended. `groups` holds the running process, for whoever may have to stop it."""
    paths = ctx.paths
    job_path, rows_path, log_path = paths.job(cell.cell_id), paths.rows(cell.cell_id), paths.log(cell.cell_id)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    rows_path.unlink(missing_ok=True)
    launched = time.time()
    write_atomic(job_path, json.dumps({"spec": cell.to_dict(), "context": ctx.to_dict(), "launched": launched}))
    env = {"PYTHONUNBUFFERED": "1", "TRITON_CACHE_DIR": str(paths.cache_dir / "triton"),
           "TRITON_CACHE_AUTOTUNING": "1", "TORCHINDUCTOR_CACHE_DIR": str(paths.cache_dir / "inductor"),
           **(env_extra or {})}
    groups = groups if groups is not None else CellGroups()
    oom_before = oom_kills()
    proc = _Process(start, job_path, rows_path, log_path, env)
    groups.add(proc.pid)
    returncode = None
    try:
        returncode = proc.wait(timeout_s)
    finally:
        groups.discard(proc.pid)
        kill_group(proc.pid, alone_too=returncode is None)  # the cell (if still running) and what it left behind
        proc.reap()
    wall = time.time() - launched
    job_path.unlink(missing_ok=True)
    maker = RowMaker(cell, ctx).set(cell_wall_s=round(wall, 3))
    if returncode is None:
        return [maker.failure("timeout", f"cell exceeded timeout_s={timeout_s}s")]
    tail = log_path.read_text(errors="replace")[-1500:].strip().replace("\n", " | ") if log_path.exists() else ""
    if returncode == EXIT_NO_SPACE:
        raise CellEnvironmentError(f"cell {cell.cell_id} could not write its results: no space left on the device "
                                   f"({tail[-300:]})")
    if returncode == 0 and rows_path.exists():
        try:
            rows = check_rows(cell, json.loads(rows_path.read_text()))
        except (ValueError, KeyError, TypeError) as err:
            return [maker.failure("error", f"cell wrote unreadable rows ({err}); log tail: {tail}")]
        finally:
            rows_path.unlink()
        return [{**row, "cell_wall_s": round(wall, 3)} for row in rows]
    if proc.lost_with_warm_parent:
        return [maker.failure("killed", f"cell process lost with the warm parent, which died or was killed; log "
                                        f"tail: {tail}")]
    if returncode < 0:
        status, reason = signal_status(-returncode, oom_before)
        return [maker.failure(status, f"{reason}; log tail: {tail}")]
    return [maker.failure("error", f"cell process exited with {returncode}; log tail: {tail}")]
