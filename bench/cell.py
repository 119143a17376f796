"""The cell process: `python -m bench.cell JOB.json ROWS.json` runs one cell, `TASKS[spec.task].run(spec, ctx)`,
and writes its rows. It only dispatches; every task lives in bench/tasks/. A fresh process per cell gives every
cell a clean CUDA context and clean memory statistics; the process dies with its runner.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import traceback
from pathlib import Path

from .results import CellContext, RowMaker, write_atomic
from .spec import CellSpec


def run_cell(spec: CellSpec, ctx: CellContext) -> list[dict]:
    """Run one cell; a failure inside it becomes a row (status oom or error), never an exception."""
    from .tasks import TASKS
    from .tasks.common import is_oom

    try:
        return TASKS[spec.task].run(spec, ctx)
    except Exception as err:  # noqa: BLE001 - a failing cell is a result, the run goes on
        traceback.print_exc()
        message = f"{type(err).__name__}: {err}".strip().replace("\n", " ")
        return [RowMaker(spec, ctx).failure("oom" if is_oom(err) else "error", message)]


def _die_with_parent(parent: int) -> None:
    """Exit when the runner is gone (a backstop for the parent-death signal the runner sets on Linux)."""

    def watch():
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def main(argv: list[str]) -> int:
    _die_with_parent(os.getppid())
    from .env import apply_matmul_policy, code_version

    code_version()  # the version of the code this process imports, read now (rows are made at the end)
    apply_matmul_policy()
    job_path, rows_path = Path(argv[0]), Path(argv[1])
    job = json.loads(job_path.read_text())
    spec, ctx = CellSpec.from_dict(job["spec"]), CellContext.from_dict(job["context"])
    rows = run_cell(spec, ctx)
    write_atomic(rows_path, json.dumps(rows, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
