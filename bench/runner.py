"""The local executor: runs a suite's cells, each in its own subprocess, appending rows to results.csv.

Resumable: a cell whose id already has rows in the run dir's results.csv is skipped. A crash, timeout or
out-of-memory inside a cell becomes a row (status oom|timeout|error) and the run goes on; nothing is retried
at another batch size. Accuracy cells may run several at once (`concurrency`), throughput cells always alone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from .cell import Job, failure_row
from .env import collect_env
from .results import append_rows, failed_cell_ids, read_results, write_atomic
from .suite import ACCURACY_TASKS, Cell, Suite

TASK_ORDER = {"pretrain": 0}  # checkpoints first, so that fine-tune cells find them; others keep suite order


@dataclass
class RunSummary:
    run_dir: Path
    ran: int
    skipped: int
    failed: int


def default_run_dir(suite: Suite) -> Path:
    return Path("results") / suite.name / time.strftime("%Y%m%d-%H%M%S")


def ordered_cells(cells: list[Cell]) -> list[Cell]:
    return sorted(cells, key=lambda c: TASK_ORDER.get(c.task, 1))


def _write_env(run_dir: Path, suite: Suite, command: list[str]) -> None:
    """env.json: the environment of the first invocation; later (resuming) invocations are appended."""
    path = run_dir / "env.json"
    now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    if path.exists():
        env = json.loads(path.read_text())
        env.setdefault("resumed", []).append({"timestamp": now, "command": command})
    else:
        env = collect_env(suite.device, command, suite.text)
        env.update(suite=suite.name, suite_path=str(suite.path), started=now)
    write_atomic(path, json.dumps(env, indent=2, default=str) + "\n")


def _run_in_subprocess(job: Job, run_dir: Path, timeout_s: int) -> list[dict]:
    cells_dir = run_dir / "cells"
    cells_dir.mkdir(parents=True, exist_ok=True)
    job_path, rows_path = cells_dir / f"{job.cell_id}.job.json", cells_dir / f"{job.cell_id}.rows.json"
    log_path = cells_dir / f"{job.cell_id}.log"
    rows_path.unlink(missing_ok=True)
    write_atomic(job_path, json.dumps(asdict(job), default=str))
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    try:
        with open(log_path, "w") as log:
            proc = subprocess.run([sys.executable, "-m", "bench.cell", str(job_path), str(rows_path)],
                                  stdout=log, stderr=subprocess.STDOUT, timeout=timeout_s, env=env,
                                  cwd=Path(__file__).resolve().parent.parent)
    except subprocess.TimeoutExpired:
        return [failure_row(job, "timeout", f"cell exceeded timeout_s={timeout_s}s")]
    if proc.returncode == 0 and rows_path.exists():
        return json.loads(rows_path.read_text())
    tail = log_path.read_text()[-1500:].strip().replace("\n", " | ")
    if proc.returncode < 0:
        reason = f"cell process killed by signal {-proc.returncode}"
        status = "oom" if proc.returncode == -9 else "error"  # SIGKILL: most often the kernel's OOM killer
        return [failure_row(job, status, f"{reason}; log tail: {tail}")]
    return [failure_row(job, "error", f"cell process exited with {proc.returncode}; log tail: {tail}")]


def _progress(i: int, n: int, label: str, started: float, finished: int) -> str:
    elapsed = time.monotonic() - started
    eta = f"ETA {elapsed / finished * (n - i + 1):.0f}s" if finished else "ETA ?"
    return f"[{i}/{n}] {label}  ({elapsed:.0f}s elapsed, {eta})"


def run_suite(suite: Suite, run_dir: Path, command: list[str], retry_failed: bool = False,
              log=print) -> RunSummary:
    run_dir.mkdir(parents=True, exist_ok=True)
    results_path = run_dir / "results.csv"
    _write_env(run_dir, suite, command)
    previous = read_results(results_path)
    recorded = set(previous["cell_id"])
    done = recorded - failed_cell_ids(previous) if retry_failed else recorded
    todo = [c for c in ordered_cells(suite.cells) if c.cell_id not in done]
    log(f"suite {suite.name}: {len(suite.cells)} cells on {suite.device}, {len(suite.cells) - len(todo)} already "
        f"done in {run_dir}")
    started, finished, failed = time.monotonic(), 0, 0

    def job_for(cell: Cell) -> Job:
        concurrency = suite.concurrency if cell.task in ACCURACY_TASKS else 1
        return Job(cell=cell.settings, cell_id=cell.cell_id, suite=suite.name, run_id=run_dir.name,
                   run_dir=str(run_dir.resolve()), concurrency=concurrency)

    lock = threading.Lock()
    counter = iter(range(1, len(todo) + 1))

    def execute(cell: Cell) -> None:
        nonlocal finished, failed
        with lock:
            log(_progress(next(counter), len(todo), cell.label(), started, finished))
        rows = _run_in_subprocess(job_for(cell), run_dir, suite.timeout_s)
        with lock:
            append_rows(results_path, rows, replace_cell=cell.cell_id if cell.cell_id in recorded else None)
            finished += 1
            bad = [r for r in rows if r["status"] not in ("ok", "skipped")]
            failed += bool(bad)
            if bad:
                log(f"    -> {cell.label()}: {bad[0]['status']}: {str(bad[0]['error'])[:200]}")

    # Throughput-type cells (and pretraining, which fine-tuning waits for) one at a time, alone on the device;
    # the other accuracy cells `concurrency` at a time.
    shared = [c for c in todo if c.task in ACCURACY_TASKS and c.task != "pretrain"]
    for cell in todo:
        if cell not in shared:
            execute(cell)
    with ThreadPoolExecutor(max_workers=suite.concurrency) as pool:
        list(pool.map(execute, shared))
    return RunSummary(run_dir=run_dir, ran=finished, skipped=len(suite.cells) - len(todo), failed=failed)


def summary_table(results_path: Path) -> str:
    """Median per model, task, image size, batch size and training-set size of the headline metrics (over
    seeds), plus the cells' status counts."""
    frame = read_results(results_path)
    if frame.empty:
        return "(no results)"
    lines = []
    ok = frame[frame["status"] == "ok"]
    headline = ok[ok["metric"].isin(["throughput", "peak_memory", "accuracy", "fwd_time", "fwd_bwd_time"])]
    if not headline.empty:
        index = ["model", "attn_backend", "task", "img_size", "batch_size", "train_size", "attn_shape"]
        table = headline.astype({k: object for k in index}).fillna({k: "" for k in index}).pivot_table(
            index=index, columns="metric", values="value", aggfunc="median")
        with pd.option_context("display.width", 160, "display.max_rows", 200, "display.float_format", "{:.4g}".format):
            lines.append(table.to_string())
    counts = frame.drop_duplicates("cell_id")["status"].value_counts()
    lines.append("cells by status: " + ", ".join(f"{k}={v}" for k, v in counts.items()))
    return "\n".join(lines)
