"""Per-cell overhead of an executor against the local one, measured as the driver sees it.

Runs a suite (default suites/smoke.yaml) with `--executor local` and `--executor ray` alternately, each into a
fresh run dir, ROUNDS times. A cell's driver-side time runs from its start line to the moment its rows are
recorded, or from the previous cell's finish if that is earlier (the cells of this suite run one at a time, and
Ray only reports a start once its worker runs the task, so this counts its queueing too); the overhead of a
cell is its Ray time minus its local time in the same round. Prints the median
per-cell overhead over all cells and rounds, and each executor's median suite wall time (Ray's includes
starting and stopping its local instance). Interleaving the rounds keeps slow drifts of this machine out of
the difference.

    .venv/bin/python tools/executor_overhead.py [--suite suites/smoke.yaml] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import rundir as rundir_module  # noqa: E402
from bench.runner import run_suite  # noqa: E402
from bench.suite import load_suite  # noqa: E402


def timed_run(suite, executor: str, run_dir: Path) -> tuple[float, dict[str, float]]:
    """(suite wall seconds, {cell label: driver-side seconds})."""
    label_of = {c.cell_id: c.label() for c in suite.cells}
    started: dict[str, float] = {}
    finished: dict[str, float] = {}
    record = rundir_module.RunDir.record

    def timed_record(self, cell, rows):
        finished[label_of[cell.cell_id]] = time.monotonic()
        return record(self, cell, rows)

    def log(line: str) -> None:
        if line.startswith("["):  # "[i/n] label  (...)": a cell starts
            started[line.split("] ", 1)[1].rsplit("  (", 1)[0]] = time.monotonic()

    rundir_module.RunDir.record = timed_record
    try:
        t0 = time.monotonic()
        summary = run_suite(suite, run_dir, ["executor_overhead"], executor=executor, log=log)
        wall = time.monotonic() - t0
    finally:
        rundir_module.RunDir.record = record
    if summary.failed:
        raise SystemExit(f"{executor}: {summary.failed} cells failed; see {run_dir}")
    times, previous = {}, 0.0
    for label, end in sorted(finished.items(), key=lambda item: item[1]):
        times[label] = end - min(started[label], previous) if previous else end - started[label]
        previous = end
    return wall, times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="suites/smoke.yaml")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    suite = load_suite(args.suite, "cpu")
    walls: dict[str, list[float]] = {"local": [], "ray": []}
    overheads: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        for round_no in range(args.rounds):
            cell_times = {}
            for executor in ("local", "ray"):
                wall, cell_times[executor] = timed_run(suite, executor, Path(tmp) / f"{executor}{round_no}")
                walls[executor].append(wall)
                print(f"round {round_no} {executor}: {wall:.1f} s wall, cells "
                      + ", ".join(f"{t:.1f}" for t in cell_times[executor].values()), flush=True)
            overheads += [cell_times["ray"][label] - cell_times["local"][label] for label in cell_times["local"]]
    print(f"suite {suite.name}, {len(suite.cells)} cells, {args.rounds} rounds interleaved")
    for executor, values in walls.items():
        print(f"  {executor}: median wall {statistics.median(values):.1f} s (min {min(values):.1f}, "
              f"max {max(values):.1f})")
    print(f"  ray - local per cell: median {statistics.median(overheads):.2f} s "
          f"(min {min(overheads):.2f}, max {max(overheads):.2f}, {len(overheads)} cell pairs)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
