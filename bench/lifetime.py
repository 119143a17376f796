"""How the processes of a run die with it: a cell and everything it started (its process group) die with the
process that started the cell (the runner, or the warm parent, which exits when the runner does), and a
data-parallel rank with its cell. Linux's parent-death signal does it at once; a watchdog thread is the backstop
elsewhere."""

from __future__ import annotations

import ctypes
import multiprocessing.forkserver
import os
import signal
import threading
import time

try:
    _PRCTL = ctypes.CDLL(None, use_errno=True).prctl  # resolved at import, not in a freshly forked child
except (OSError, AttributeError):
    _PRCTL = None  # not Linux: watch_parent still ends the process


GROUP_SIGNAL = signal.SIGUSR2  # a cell's parent-death signal: its handler kills the cell's whole process group


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """Send `sig` to this process when the thread that started it dies (PR_SET_PDEATHSIG, Linux)."""
    if _PRCTL is not None:
        _PRCTL(1, sig)


def _kill_own_group(*_) -> None:
    os.killpg(os.getpgrp(), signal.SIGKILL)


def take_group_along() -> None:
    """In a cell, which leads its own process group: when its parent dies, SIGKILL the whole group. Everything
    the cell starts is in that group from its fork on, before it runs a line of its own (data-parallel ranks
    still importing torch, multiprocessing's resource tracker, compile workers), so nothing outlives the run; a
    parent-death SIGKILL of the cell alone would leave them behind. Then a thread watches the parent as a
    backstop (a parent-death signal that never came, or a handler the main thread cannot reach)."""
    signal.signal(GROUP_SIGNAL, _kill_own_group)
    die_with_parent(GROUP_SIGNAL)
    parent = os.getppid()

    def watch():
        while os.getppid() == parent:
            time.sleep(1.0)
        _kill_own_group()

    threading.Thread(target=watch, daemon=True).start()


def leave_warm_parent() -> None:
    """In a child of multiprocessing's forkserver: close the copy of the runner's end of the pipe that tells the
    forkserver the runner is alive. Every child inherits one; while any is open, the forkserver never sees the
    runner die, never exits, and the parent-death signal of its children never fires."""
    server = multiprocessing.forkserver._forkserver
    if server._forkserver_alive_fd is not None:
        os.close(server._forkserver_alive_fd)
        server._forkserver_alive_fd = None
