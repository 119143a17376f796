"""What a cell costs beyond its measurement, per way of starting cells, measured in one process.

Runs one small suite (three train_eval cells of 10 s, ResNet-9 on 1,000 Fashion-MNIST images, by default) with
each mode in turn, ROUNDS times, interleaved so that slow drifts of the machine hit every mode alike:
  warm   cells forked from a parent that has imported torch and bench (the default of `bench run`)
  fresh  a new interpreter per cell (`python -m bench.cell`)
  ray    Ray tasks on a local instance (--executor ray), each running a warm cell
A cell's overhead is its wall time minus its timed region (training steps, or a throughput cell's timed repeats),
both from its rows; the breakdown says where the overhead went. For Ray, the driver-side time of a cell (from the
moment it is reported started to its rows being recorded) minus its timed region is printed too: it adds Ray's
scheduling. Each mode's suite wall time is that of the whole `run_suite` call (a fresh warm parent, or Ray's start
and stop, included).

    .venv/bin/python tools/cell_overhead.py [--modes warm,fresh] [--rounds 3] [--suite FILE]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import rundir as rundir_module
from bench.measure.phases import PHASES
from bench.results import rows_frame
from bench.runner import run_suite
from bench.suite import load_suite

SUITE = """name: cell_overhead
description: three 10-second training cells, to measure what a cell costs beyond its training
timeout_s: 600
grid:
  model: [resnet9]
  task: [train_eval]
  dataset: [fashion-mnist]
  img_size: [28]
  train_size: [1000]
  batch_size: [128]
  dtype: [bf16]
  seed: [0, 1, 2]
  budget: [{seconds: 10, evals: 3}]
"""
MODES = {"warm": ("local", "warm"), "fresh": ("local", "fresh"), "ray": ("ray", "warm")}


def timed_run(suite, mode: str, run_dir: Path) -> tuple[float, list[dict], dict[str, float]]:
    """(suite wall seconds, the cells' first rows, {cell id: driver-side seconds})."""
    executor, start = MODES[mode]
    started: dict[str, float] = {}
    driver: dict[str, float] = {}
    label_to_id = {cell.label(): cell.cell_id for cell in suite.cells}
    record = rundir_module.RunDir.record

    def timed_record(self, cell, rows):
        driver[cell.cell_id] = time.monotonic() - started[cell.cell_id]
        return record(self, cell, rows)

    def log(line: str) -> None:
        if line.startswith("["):  # "[i/n] label  (...)": a cell starts
            started[label_to_id[line.split("] ", 1)[1].rsplit("  (", 1)[0]]] = time.monotonic()

    rundir_module.RunDir.record = timed_record
    try:
        t0 = time.monotonic()
        summary = run_suite(suite, run_dir, ["cell_overhead"], executor=executor, start=start, log=log)
        wall = time.monotonic() - t0
    finally:
        rundir_module.RunDir.record = record
    if summary.failed:
        raise SystemExit(f"{mode}: {summary.failed} cells failed; see {run_dir}")
    cells = rows_frame(summary.rows).drop_duplicates("cell_id")
    return wall, cells.to_dict("records"), driver


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", default="warm,fresh", help=f"comma-separated, of {', '.join(MODES)}")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--suite", help="a suite file (default: three 10-second ResNet-9 training cells)")
    args = parser.parse_args()
    modes = args.modes.split(",")
    if args.rounds < 1 or not set(modes) <= set(MODES):
        parser.error(f"--rounds must be >= 1 and --modes among {', '.join(MODES)}")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.suite) if args.suite else Path(tmp) / "cell_overhead.yaml"
        if not args.suite:
            path.write_text(SUITE)
        suite = load_suite(path, "cpu")
        walls = {mode: [] for mode in modes}
        overheads = {mode: [] for mode in modes}
        breakdown = {mode: {name: [] for name in (*PHASES, "cell_wall")} for mode in modes}
        driver_overheads = {mode: [] for mode in modes}
        for round_no in range(args.rounds):
            for mode in modes:
                wall, cells, driver = timed_run(suite, mode, Path(tmp) / f"{mode}{round_no}")
                walls[mode].append(wall)
                for cell in cells:
                    overheads[mode].append(cell["cell_wall_s"] - cell["train_s"])
                    driver_overheads[mode].append(driver[cell["cell_id"]] - cell["train_s"])
                    for name in breakdown[mode]:
                        breakdown[mode][name].append(cell[f"{name}_s"])
                print(f"round {round_no} {mode}: suite {wall:.1f} s, per-cell overhead "
                      + ", ".join(f"{c['cell_wall_s'] - c['train_s']:.2f}" for c in cells) + " s", flush=True)
    print(f"\nsuite {suite.name}: {len(suite.cells)} cells, {args.rounds} rounds, modes interleaved")
    for mode in modes:
        parts = ", ".join(f"{name} {statistics.median(v):.2f}" for name, v in breakdown[mode].items())
        print(f"  {mode:<5} per-cell overhead median {statistics.median(overheads[mode]):.2f} s "
              f"(min {min(overheads[mode]):.2f}, max {max(overheads[mode]):.2f}; driver-side "
              f"{statistics.median(driver_overheads[mode]):.2f} s); suite wall median "
              f"{statistics.median(walls[mode]):.1f} s"
              f"\n        medians per cell (s): {parts}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
