"""Runs a suite into a run dir: lock it, skip finished cells, hand the rest to an executor, record each cell's
rows as it finishes (bench/rundir.py), then summarise: the headline metrics, where the time went, and one
warning line for suspicious timings.

A failed cell is a row (status oom | timeout | killed | error), and the run goes on. The driver is the only
writer of the run dir, whichever executor runs the cells. Ctrl-C, SIGTERM or SIGHUP stop the run at once: no
queued cell starts, the running ones are killed with everything they started, nothing half-done is recorded,
the lock is released (KeyboardInterrupt or Stopped reaches the caller).
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .measure.phases import phase_split
from .measure.noise import excess
from .paths import CellContext, RunPaths
from .results import HEADLINE, CellRecord, rows_frame, setting_columns
from .rundir import RunDir
from .suite import Suite
from .tasks import TASKS


@dataclass(frozen=True)
class NoisyCell:
    """A cell whose timing was flagged: its label, its flags, and how far past its limit its worst row is."""

    label: str
    why: str
    excess: float


@dataclass
class RunSummary:
    run_dir: Path
    ran: int
    skipped: int
    failed: int
    rows: list[dict] = field(default_factory=list)  # every row of the suite's cells in the run dir
    noisy: list[NoisyCell] = field(default_factory=list)  # worst first


class Stopped(BaseException):
    """The runner received SIGTERM or SIGHUP (a BaseException, like KeyboardInterrupt: nothing catches it on the
    way out)."""

    def __init__(self, signum: int):
        super().__init__(f"signal {signum}")
        self.signum = signum


@contextlib.contextmanager
def stop_on_signals():
    """SIGTERM and SIGHUP raise Stopped in the main thread while the block runs (SIGINT raises KeyboardInterrupt
    as usual); elsewhere than in the main thread, signals are left alone."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise Stopped(signum)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def default_run_dir(suite: Suite) -> Path:
    return Path("results") / suite.name / time.strftime("%Y%m%d-%H%M%S")


def cell_kind(cell) -> str:
    """What a cell costs like: its task, and how its model runs (a compiled or exported engine costs more)."""
    how = "compile" if cell.compile else cell.engine
    return cell.task if how in (None, "eager") else f"{cell.task}/{how}"


class ProgressLog:
    """One line per started cell: [i/n] label (placement, elapsed, ETA, running per place). The ETA sums, over
    the cells still to finish, the mean time of finished cells of the same kind (cell_kind), over the slots that
    run at once; a kind with no finished cell yet is costed at the mean of all finished cells, and the ETA says it
    is a guess."""

    def __init__(self, cells, log, slots: int = 1, clock=time.monotonic):
        self.total, self.log, self.slots, self.clock = len(cells), log, max(1, slots), clock
        self.started_at = clock()
        self.started = self.finished = 0
        self.running: Counter = Counter()
        self.left = Counter(cell_kind(c) for c in cells)  # not finished yet, by kind
        self.began: dict[str, float] = {}
        self.took: dict[str, list[float]] = {}

    def eta(self) -> str:
        if not self.took:
            return "ETA ?"
        every = [t for times in self.took.values() for t in times]
        overall = sum(every) / len(every)
        unseen = sorted(kind for kind, n in self.left.items() if n and kind not in self.took)
        seconds = sum(n * (sum(self.took[k]) / len(self.took[k]) if k in self.took else overall)
                      for k, n in self.left.items()) / self.slots
        guess = f" (a guess: no {', '.join(unseen)} cell finished yet)" if unseen else ""
        return f"ETA {seconds:.0f}s{guess}"

    def start(self, cell, placement: str) -> None:
        self.started += 1
        self.began[cell.cell_id] = self.clock()
        self.running[placement.rsplit(":", 1)[0]] += 1
        elapsed = self.clock() - self.started_at
        where = ", ".join(f"{place}: {n}" for place, n in self.running.items() if n)
        self.log(f"[{self.started}/{self.total}] {cell.label()}  ({elapsed:.0f}s elapsed, {self.eta()}; running "
                 f"{where})")

    def done(self, cell, placement: str | None) -> None:
        self.finished += 1
        kind = cell_kind(cell)
        self.left[kind] -= 1
        if cell.cell_id in self.began:
            self.took.setdefault(kind, []).append(self.clock() - self.began.pop(cell.cell_id))
        if placement is not None:  # a cell lost before it started has no place
            self.running[placement.rsplit(":", 1)[0]] -= 1


def make_executor(name: str, run_dir: Path, ctx: CellContext, suite: Suite, gpus: list[str] | None,
                  address: str | None, start: str):
    if name == "ray":
        from .executors.ray import RayExecutor

        return RayExecutor(run_dir, ctx, timeout_s=suite.timeout_s, concurrency=suite.concurrency, address=address)
    from .executors.local import LocalExecutor, visible_gpus

    if suite.device == "cuda" and gpus is None:
        gpus = visible_gpus()  # every visible GPU gets its own cells
    return LocalExecutor(run_dir, ctx, timeout_s=suite.timeout_s, concurrency=suite.concurrency, gpus=gpus,
                         start=start)


def run_suite(suite: Suite, run_dir: Path, command: list[str], *, retry_failed: bool = False,
              allow_mixed_versions: bool = False, executor: str = "local", gpus: list[str] | None = None,
              address: str | None = None, start: str = "warm", log=print) -> RunSummary:
    """Run the suite's unfinished cells into run_dir. `start`: warm (cells forked from a parent that has imported
    everything) or fresh (a new interpreter per cell); see bench/executors/process.py."""
    rundir = RunDir(run_dir)
    with rundir.open(suite.name, suite.text, suite.device, command, allow_mixed_versions):
        for note in rundir.notes:
            log(f"note: {note}")
        done = rundir.done_ids(retry_failed)
        todo = [c for c in suite.cells if c.cell_id not in done]
        log(f"suite {suite.name}: {len(suite.cells)} cells on {suite.device}, {len(suite.cells) - len(todo)} already "
            f"done in {run_dir}")
        ctx = CellContext(suite.name, rundir.path.name, rundir.path.resolve(), suite.concurrency)
        progress = ProgressLog(todo, log, suite.concurrency)
        lock = threading.Lock()
        failed = 0
        placements: dict[str, str] = {}

        def on_start(cell, placement: str) -> None:
            with lock:
                placements[cell.cell_id] = placement
                progress.start(cell, placement)

        def on_done(cell, rows: list[dict]) -> None:
            nonlocal failed
            rows = [{**row, "method_version": TASKS[cell.task].method_version} for row in rows]
            with lock:
                rundir.record(cell, rows)
                progress.done(cell, placements.pop(cell.cell_id, None))
                bad = [r for r in rows if r["status"] not in ("ok", "skipped")]
                failed += bool(bad)
                if bad:
                    log(f"    -> {cell.label()}: {bad[0]['status']}: {str(bad[0]['error'])[:200]}")

        with stop_on_signals():
            make_executor(executor, rundir.path, ctx, suite, gpus, address, start).run(todo, on_start, on_done)
        records = [rundir.records[c.cell_id] for c in suite.cells if c.cell_id in rundir.records]
    return RunSummary(run_dir, ran=progress.finished, skipped=len(suite.cells) - len(todo), failed=failed,
                      rows=[r for record in records for r in record.rows], noisy=noisy_cells(records))


def noisy_cells(records: list[CellRecord]) -> list[NoisyCell]:
    """Every cell whose timing was flagged, the worst first (bench/measure/noise.py: excess)."""
    out = []
    for record in records:
        rows = [r for r in record.rows if r.get("noisy")]
        if rows:
            out.append(NoisyCell(record.spec.label(), "; ".join(sorted({r["noisy"] for r in rows})),
                                 max(excess(r.get("p20"), r.get("p80"), r.get("other_cpu")) for r in rows)))
    return sorted(out, key=lambda cell: -cell.excess)


def noisy_warning(noisy: list[NoisyCell], cells: int, run_dir: Path, worst: int = 3) -> str:
    """A few short lines: how many cells were flagged, the worst few and why, and where every cell's reason is."""
    lines = [f"warning: {len(noisy)} of {cells} cell(s) have suspicious timings (busy machine or wide spread); "
             f"the worst {min(worst, len(noisy))}:"]
    lines += [f"  {cell.label}: {cell.why}" for cell in noisy[:worst]]
    lines += [f"  every cell's reason: the noisy column of {RunPaths(run_dir).results_csv}",
              f"  the report's caveats: python -m bench report {run_dir}"]
    return "\n".join(lines)


def summary_table(rows: list[dict]) -> str:
    """Median over seeds of the headline metrics (results.HEADLINE) per setting (the spec's axes that vary in these
    rows), plus the cells' status counts."""
    frame = rows_frame(rows)
    if frame.empty:
        return "(no results)"
    lines = []
    ok = frame[frame["status"] == "ok"]
    headline = ok[ok["metric"].isin(HEADLINE)]
    if not headline.empty:
        keys = [k for k in setting_columns() if headline[k].astype(str).nunique() > 1] or ["task"]
        table = headline.astype({k: object for k in keys}).fillna({k: "" for k in keys}).pivot_table(
            index=keys, columns="metric", values="value", aggfunc="median")
        with pd.option_context("display.width", 160, "display.max_rows", 200, "display.float_format", "{:.4g}".format):
            lines.append(table.to_string())
    counts = frame.drop_duplicates("cell_id")["status"].value_counts()
    lines.append("cells by status: " + ", ".join(f"{k}={v}" for k, v in counts.items()))
    return "\n".join(lines)


def time_summary(rows: list[dict]) -> str:
    """Where the suite's time went: the cells' wall time split into startup, data, setup, train, eval, write and
    the rest (the runner's own share: process start and reaping, recording)."""
    frame = rows_frame(rows).drop_duplicates("cell_id")
    parts = phase_split(frame)
    wall = parts.pop("wall")
    if not wall:
        return ""
    shares = ", ".join(f"{name} {seconds:.0f} s ({seconds / wall:.0%})" for name, seconds in parts.items())
    return f"time: {wall:.0f} s in {len(frame)} cells: {shares}"
