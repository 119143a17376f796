"""bench/executors/process.py: a cell in its own process, and the warm parent it is forked from. A warm parent
that is stopped, killed while launching, or killed under running cells never ends the run: launching is bounded,
a lost parent is replaced (then the run falls back to fresh cells, said once), and the cells it took down are
rows."""

import multiprocessing.forkserver
import os
import signal
import threading
import time

import pytest

from bench.executors import process
from bench.paths import CellContext
from bench.spec import CellSpec
from bench.tasks import TASKS
from tests.conftest import cell_processes, wait_for


def quick_cell(repeats: int = 2) -> CellSpec:
    spec = CellSpec(model="resnet20", task="infer", img_size=28, in_chans=1, num_classes=10, batch_size=8,
                    repeats=repeats, warmup=1, iters=2)
    return TASKS[spec.task].check(spec)


def forkserver_pid() -> int | None:
    return multiprocessing.forkserver._forkserver._forkserver_pid


def in_thread(call, timeout: float):
    """call() in a thread, joined within timeout (a hang fails the test instead of stopping the test run)."""
    out = []
    thread = threading.Thread(target=lambda: out.append(call()), daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"still waiting after {timeout} s"
    return out[0]


@pytest.mark.slow
def test_a_stopped_warm_parent_is_replaced_and_the_cell_runs(tmp_path, monkeypatch):
    ctx = CellContext("t", "r", tmp_path)
    assert {r["status"] for r in process.run_cell_process(quick_cell(), ctx, 300)} == {"ok"}  # a warm parent runs
    stopped = forkserver_pid()
    monkeypatch.setattr(process, "LAUNCH_TIMEOUT_S", 15.0)
    os.kill(stopped, signal.SIGSTOP)
    try:
        rows = in_thread(lambda: process.run_cell_process(quick_cell(3), ctx, 300), timeout=200)
    finally:
        if forkserver_pid() == stopped:  # not replaced: do not leave a stopped process behind
            process.replace_warm_parent()
    assert {r["status"] for r in rows} == {"ok"} and forkserver_pid() not in (None, stopped)


@pytest.mark.slow
def test_cells_a_killed_warm_parent_takes_down_are_rows_and_the_next_cell_runs(tmp_path):
    ctx = CellContext("t", "r", tmp_path)
    assert {r["status"] for r in process.run_cell_process(quick_cell(), ctx, 300)} == {"ok"}
    long_cell = quick_cell(repeats=5000)
    result = []
    thread = threading.Thread(target=lambda: result.append(process.run_cell_process(long_cell, ctx, 300)))
    thread.start()
    wait_for(lambda: cell_processes(tmp_path), timeout=120, what="the long cell")
    time.sleep(5.0)  # the cell is past its start, timing
    os.kill(forkserver_pid(), signal.SIGKILL)
    thread.join(60)
    assert [(r["status"], "lost with the warm parent" in str(r["error"])) for r in result[0]] == [("killed", True)], \
        [(r["status"], r["error"], r["cell_wall_s"]) for r in result[0]]
    assert {r["status"] for r in process.run_cell_process(quick_cell(3), ctx, 300)} == {"ok"}


def test_a_warm_parent_lost_twice_falls_back_to_fresh_cells_said_once(tmp_path, monkeypatch, capsys):
    class Lost:
        def Process(self, **kwargs):
            return self

        def start(self):
            raise EOFError("the warm parent closed the connection")

    replaced = []
    monkeypatch.setattr(process, "warm_parent", Lost)
    monkeypatch.setattr(process, "replace_warm_parent", lambda: replaced.append(1))
    monkeypatch.setattr(process, "_FALLBACK", threading.Event())
    ctx = CellContext("t", "r", tmp_path)
    for repeats in (2, 3):
        rows = process.run_cell_process(quick_cell(repeats), ctx, 300)
        assert {r["status"] for r in rows} == {"ok"}, rows
    err = capsys.readouterr().err
    assert err.count("the warm parent was lost twice") == 1 and "EOFError" in err and len(replaced) == 2
