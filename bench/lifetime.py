"""How the processes of a run die with it: a cell dies with the process that started it (the runner, or the warm
parent, which exits when the runner does), and a data-parallel rank with its cell. Linux's parent-death signal
does it at once; a watchdog thread is the backstop elsewhere."""

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


def die_with_parent() -> None:
    """SIGKILL this process when the thread that started it dies (PR_SET_PDEATHSIG, Linux)."""
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGKILL)


def watch_parent() -> None:
    """Exit when the parent is gone (a backstop for the parent-death signal)."""
    parent = os.getppid()

    def watch():
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def leave_warm_parent() -> None:
    """In a child of multiprocessing's forkserver: close the copy of the runner's end of the pipe that tells the
    forkserver the runner is alive. Every child inherits one; while any is open, the forkserver never sees the
    runner die, never exits, and the parent-death signal of its children never fires."""
    server = multiprocessing.forkserver._forkserver
    if server._forkserver_alive_fd is not None:
        os.close(server._forkserver_alive_fd)
        server._forkserver_alive_fd = None
