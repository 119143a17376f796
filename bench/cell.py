"""The cell process: runs one cell, `TASKS[spec.task].run(spec, ctx)`, and writes its rows. It only dispatches;
every task lives in bench/tasks/. The executor starts it warm (`child_main`, forked from a parent that has
imported everything) or fresh (`python -m bench.cell JOB.json ROWS.json`); a process per cell gives every cell
a clean CUDA context and clean memory statistics, and makes a crash a row instead of a lost run.

Every row gets the cell's timing breakdown (bench/measure/phases.py). A cell that cannot write for lack of disk
space exits EXIT_NO_SPACE: that is the machine's failure, not a result, and the runner stops.
"""

from __future__ import annotations

import errno
import json
import os
import sys
import time
import traceback
from pathlib import Path

from .env import apply_matmul_policy, code_version
from .lifetime import leave_warm_parent, take_group_along
from .measure.phases import PHASES, STOPWATCH
from .paths import CellContext
from .results import RowMaker, write_atomic
from .spec import CellSpec
from .tasks import TASKS
from .tasks.common import is_oom

EXIT_NO_SPACE = 75  # EX_TEMPFAIL
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def run_cell(spec: CellSpec, ctx: CellContext, launched: float | None = None) -> list[dict]:
    """Run one cell; a failure inside it becomes a row (status oom or error), never an exception (but a full
    disk, which is re-raised). Every row carries the timing breakdown."""
    startup = time.time() - launched if launched is not None else None
    STOPWATCH.start("setup")
    try:
        rows = TASKS[spec.task].run(spec, ctx)
    except OSError as err:
        if err.errno in NO_SPACE:
            raise
        rows = _failure(spec, ctx, err)
    except Exception as err:  # noqa: BLE001 - a failing cell is a result, the run goes on
        rows = _failure(spec, ctx, err)
    seconds = STOPWATCH.stop()
    timing = {f"{name}_s": round(seconds.get(name, 0.0), 3) for name in PHASES if name != "startup"}
    if startup is not None:
        timing["startup_s"] = round(startup, 3)
    return [{**row, **timing} for row in rows]


def _failure(spec: CellSpec, ctx: CellContext, err: Exception) -> list[dict]:
    traceback.print_exc()
    message = f"{type(err).__name__}: {err}".strip().replace("\n", " ")
    return [RowMaker(spec, ctx).failure("oom" if is_oom(err) else "error", message)]


def run_job(job_path: Path, rows_path: Path) -> int:
    """The cell of a job file, its rows to rows_path; the process's exit code."""
    take_group_along()
    code_version()  # the version of the code this process imports, read now (rows are made at the end)
    apply_matmul_policy()
    job = json.loads(job_path.read_text())
    spec, ctx = CellSpec.from_dict(job["spec"]), CellContext.from_dict(job["context"])
    try:
        rows = run_cell(spec, ctx, job.get("launched"))
        write_atomic(rows_path, json.dumps(rows, default=str))
    except OSError as err:
        if err.errno not in NO_SPACE:
            raise
        print(f"no space left on the device: {err}", file=sys.stderr)
        return EXIT_NO_SPACE
    return 0


def child_main(job: str, rows: str, log: str, env: dict[str, str]) -> None:
    """A cell forked from the warm parent: its own session and process group, dead with its parent, its output in
    its log, its environment (CUDA_VISIBLE_DEVICES, caches) set before anything touches CUDA or Triton."""
    os.setsid()  # run_job then ties the group's life to this process's parent
    leave_warm_parent()
    out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(out, 1)
    os.dup2(out, 2)
    os.close(out)
    sys.stdout.reconfigure(line_buffering=True)
    os.environ.update(env)
    sys.exit(run_job(Path(job), Path(rows)))


if __name__ == "__main__":
    sys.exit(run_job(Path(sys.argv[1]), Path(sys.argv[2])))
