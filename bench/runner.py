"""Runs a suite into a run dir: lock it, skip finished cells, hand the rest to an executor, record each cell's
rows as it finishes (bench/rundir.py), then summarise, with one warning line for suspicious timings.

A failed cell is a row (status oom | timeout | killed | error), and the run goes on. The driver is the only
writer of the run dir, whichever executor runs the cells.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .results import CellContext, rows_frame
from .rundir import RunDir
from .suite import Suite


@dataclass
class RunSummary:
    run_dir: Path
    ran: int
    skipped: int
    failed: int
    rows: list[dict] = field(default_factory=list)  # every row of the suite's cells in the run dir
    noisy: list[str] = field(default_factory=list)


def default_run_dir(suite: Suite) -> Path:
    return Path("results") / suite.name / time.strftime("%Y%m%d-%H%M%S")


class Progress:
    """One line per started cell: [i/n] label (placement, elapsed, ETA, running per place)."""

    def __init__(self, total: int, log):
        self.total, self.log = total, log
        self.started_at = time.monotonic()
        self.started = self.finished = 0
        self.running: Counter = Counter()

    def start(self, label: str, placement: str) -> None:
        self.started += 1
        self.running[placement.rsplit(":", 1)[0]] += 1
        elapsed = time.monotonic() - self.started_at
        eta = f"ETA {elapsed / self.finished * (self.total - self.finished):.0f}s" if self.finished else "ETA ?"
        where = ", ".join(f"{place}: {n}" for place, n in self.running.items() if n)
        self.log(f"[{self.started}/{self.total}] {label}  ({elapsed:.0f}s elapsed, {eta}; running {where})")

    def done(self, placement: str | None) -> None:
        self.finished += 1
        if placement is not None:  # a cell lost before it started has no place
            self.running[placement.rsplit(":", 1)[0]] -= 1


def make_executor(name: str, run_dir: Path, ctx: CellContext, suite: Suite, gpus: list[str] | None,
                  address: str | None):
    if name == "ray":
        from .executors.ray import RayExecutor

        return RayExecutor(run_dir, ctx, timeout_s=suite.timeout_s, concurrency=suite.concurrency, address=address)
    from .executors.local import LocalExecutor, visible_gpus

    if suite.device == "cuda" and gpus is None:
        gpus = visible_gpus()  # every visible GPU gets its own cells
    return LocalExecutor(run_dir, ctx, timeout_s=suite.timeout_s, concurrency=suite.concurrency, gpus=gpus)


def run_suite(suite: Suite, run_dir: Path, command: list[str], *, retry_failed: bool = False,
              allow_mixed_versions: bool = False, executor: str = "local", gpus: list[str] | None = None,
              address: str | None = None, log=print) -> RunSummary:
    rundir = RunDir(run_dir)
    with rundir.open(suite.name, suite.text, suite.device, command, allow_mixed_versions):
        for note in rundir.notes:
            log(f"note: {note}")
        done = rundir.done_ids(retry_failed)
        todo = [c for c in suite.cells if c.cell_id not in done]
        log(f"suite {suite.name}: {len(suite.cells)} cells on {suite.device}, {len(suite.cells) - len(todo)} already "
            f"done in {run_dir}")
        ctx = CellContext(suite.name, rundir.path.name, rundir.path.resolve(), suite.concurrency)
        progress = Progress(len(todo), log)
        lock = threading.Lock()
        failed = 0
        placements: dict[str, str] = {}

        def on_start(cell, placement: str) -> None:
            with lock:
                placements[cell.cell_id] = placement
                progress.start(cell.label(), placement)

        def on_done(cell, rows: list[dict]) -> None:
            nonlocal failed
            with lock:
                rundir.record(cell, rows)
                progress.done(placements.pop(cell.cell_id, None))
                bad = [r for r in rows if r["status"] not in ("ok", "skipped")]
                failed += bool(bad)
                if bad:
                    log(f"    -> {cell.label()}: {bad[0]['status']}: {str(bad[0]['error'])[:200]}")

        make_executor(executor, rundir.path, ctx, suite, gpus, address).run(todo, on_start, on_done)
        cell_rows = [rundir.records[c.cell_id].rows for c in suite.cells if c.cell_id in rundir.records]
    return RunSummary(run_dir, ran=progress.finished, skipped=len(suite.cells) - len(todo), failed=failed,
                      rows=[r for rows in cell_rows for r in rows], noisy=noisy_cells(cell_rows))


def noisy_cells(cell_rows: list[list[dict]]) -> list[str]:
    """'label (why)' of every cell whose timing was flagged."""
    out = []
    for rows in cell_rows:
        flags = sorted({r["noisy"] for r in rows if r.get("noisy")})
        if flags:
            r = rows[0]
            what = r["model"] or f"attention {r['attn_backend']} {r['attn_shape']}"
            out.append(f"{what} {r['task']} bs{r['batch_size']} ({'; '.join(flags)})")
    return out


def summary_table(rows: list[dict]) -> str:
    """Median per model, task, image size, batch size and training-set size of the headline metrics (over
    seeds), plus the cells' status counts."""
    frame = rows_frame(rows)
    if frame.empty:
        return "(no results)"
    lines = []
    ok = frame[frame["status"] == "ok"]
    headline = ok[ok["metric"].isin(["throughput", "throughput_ratio", "peak_memory", "accuracy", "fwd_time",
                                     "fwd_bwd_time"])]
    if not headline.empty:
        index = ["model", "attn_backend", "task", "img_size", "batch_size", "train_size", "budget", "attn_shape"]
        table = headline.astype({k: object for k in index}).fillna({k: "" for k in index}).pivot_table(
            index=index, columns="metric", values="value", aggfunc="median")
        with pd.option_context("display.width", 160, "display.max_rows", 200, "display.float_format", "{:.4g}".format):
            lines.append(table.to_string())
    counts = frame.drop_duplicates("cell_id")["status"].value_counts()
    lines.append("cells by status: " + ", ".join(f"{k}={v}" for k, v in counts.items()))
    return "\n".join(lines)
