"""The results schema (one row per measurement, long format) and the files that hold it.

This module owns the columns: every row is built here (RowMaker) and checked against COLUMNS, so an unknown
key is an error, never dropped. Columns come in groups:
  identity     schema_version, suite, run_id, cell_id
  requested    one column per CellSpec field (bench/spec.py): what the suite asked for, the same in ok and
               failure rows
  effective    what actually ran: family, impl, params, attn_backend_used, train_size_used, ...
  measurement  metric, value, unit, p20, p80, samples (the raw per-repeat values), ci_low/ci_high, status, error
  noise        machine load around throughput cells and the noisy flag
  environment  code_version, git_sha, torch, timm, triton, gpu, host, timestamp

Files: each finished cell's rows go to cells/<cell_id>.json first (atomic); results.csv is derived from those
files and rewritten atomically, so a cut or damaged results.csv is rebuilt and a half-run cell is never done.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from .spec import AXES, CellSpec

SCHEMA_VERSION = 2
STATUSES = ("ok", "skipped", "oom", "timeout", "killed", "error")

IDENTITY = {
    "schema_version": "version of this schema (2)",
    "suite": "suite name",
    "run_id": "run directory name",
    "cell_id": "12 hex digits identifying the cell's requested settings",
}
REQUESTED = {name: f"requested: {f.metadata['help']}" for name, f in AXES.items()}
EFFECTIVE = {
    "family": "vit | cnn | attention",
    "impl": "native | timm | torchvision; for attention rows, the backend",
    "variant": "ViT variant (B/16), model name, or the attention shape",
    "patch": "ViT patch size",
    "params": "parameters",
    "gflops": "forward GFLOPs per image",
    "attn_backend_used": "attention that ran (math | sdpa | triton | none)",
    "train_size_used": "training images actually used (the subset minus its validation split)",
    "val_size": "validation images carved from the subset",
    "batch_size_used": "batch size that ran (accuracy: at most the training images)",
    "init_used": "where fine-tuned weights came from (a path or timm:<name>)",
    "recipe_used": "training recipe that ran (JSON)",
    "protocol": "accuracy budget protocol: converged | compute-equal",
    "epochs": "epochs trained",
    "steps": "optimizer steps taken",
    "best_epoch": "epoch of the kept (best validation) checkpoint",
    "converged": "no validation gain above 0.2 points over the last quarter of the budget (or stopped early)",
    "stopped_early": "training ended by patience before the budget",
    "channels_last": "CNN ran in channels_last layout",
    "concurrency": "accuracy cells sharing the device",
    "placement": "where the cell ran (executor:host:device)",
    "paired_with": "paired timing: the other side's model / backend",
    "effective_batch": "data-parallel: global batch (batch_size_used x nproc)",
    "artifact": "a file the cell wrote, relative to the run dir (a figure and its data)",
}
MEASUREMENT = {
    "metric": "what was measured", "value": "the value (median over repeats)", "unit": "its unit",
    "p20": "20th percentile over repeats", "p80": "80th percentile over repeats",
    "n_repeats": "repeats behind the value", "samples": "raw per-repeat values, ';'-separated",
    "ci_low": "95% confidence interval, low (paired ratios)", "ci_high": "95% confidence interval, high",
    "status": " | ".join(STATUSES), "error": "why a cell failed or was skipped",
}
NOISE = {
    "load_before": "1-minute load average before the cell's timing", "load_after": "the same, after",
    "usable_cores": "cores this process may run on", "other_cpu": "share of the machine's CPU time used by other "
    "processes while timing", "noisy": "why the timing is suspect ('' = not flagged): spread or busy machine",
}
ENVIRONMENT = {
    "code_version": "git sha, '+dirty.<hash of the diff>' for uncommitted changes",
    "git_sha": "git sha (with -dirty)", "torch": "torch version", "timm": "timm version",
    "triton": "triton version", "gpu": "GPU name ('' on CPU)", "device_name": "the CPU's or GPU's model name: "
    "wall-clock budgets and timings compare only on one device_name", "host": "host name", "timestamp": "row time",
}
COLUMNS: dict[str, str] = {**IDENTITY, **REQUESTED, **EFFECTIVE, **MEASUREMENT, **NOISE, **ENVIRONMENT}
# Renamed from schema 1 (documented in the README): model / attn_backend / train_size / init were effective values
# in ok rows; they are now always the requested ones, beside attn_backend_used / train_size_used / init_used.
EFFECTIVE_KEYS = set(EFFECTIVE) | set(NOISE)


class SchemaError(KeyError):
    pass


class ResultsError(ValueError):
    """An unreadable results file; the message is one line."""


@dataclass(frozen=True)
class CellContext:
    """What a cell needs beyond its spec: where it writes and how it is placed."""

    suite: str
    run_id: str
    run_dir: Path
    concurrency: int = 1
    placement: str = "local"

    def to_dict(self) -> dict:
        return {"suite": self.suite, "run_id": self.run_id, "run_dir": str(self.run_dir),
                "concurrency": self.concurrency, "placement": self.placement}

    @classmethod
    def from_dict(cls, data: dict) -> "CellContext":
        return cls(**{**data, "run_dir": Path(data["run_dir"])})


def _check_keys(keys) -> None:
    unknown = sorted(set(keys) - set(COLUMNS))
    if unknown:
        raise SchemaError(f"unknown result column(s) {unknown}: add them to bench/results.py first")


class RowMaker:
    """Rows of one cell: identity, requested and environment columns once; effective ones as they become
    known (`set`); then one call per metric."""

    def __init__(self, spec: CellSpec, ctx: CellContext, **effective):
        from .env import row_environment

        self.spec = spec
        self.base: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "suite": ctx.suite, "run_id": ctx.run_id,
                                     "cell_id": spec.cell_id, "concurrency": ctx.concurrency,
                                     "placement": ctx.placement}
        self.base.update({name: spec.column_value(name) for name in AXES})
        self.base.update(row_environment(spec.device))
        self.set(**effective)

    def set(self, **effective) -> "RowMaker":
        bad = set(effective) - EFFECTIVE_KEYS
        if bad:
            raise SchemaError(f"not an effective or noise column: {sorted(bad)}")
        self.base.update(effective)
        return self

    def row(self, metric: str, value, unit: str, *, p20=None, p80=None, n_repeats=None, samples=None,
            ci_low=None, ci_high=None, status: str = "ok", error: str | None = None, **override) -> dict:
        if status not in STATUSES:
            raise SchemaError(f"status {status!r} not in {STATUSES}")
        row = {**self.base, **override, "metric": metric, "value": value, "unit": unit, "p20": p20, "p80": p80,
               "n_repeats": n_repeats, "ci_low": ci_low, "ci_high": ci_high, "status": status, "error": error,
               "samples": ";".join(f"{s:.6g}" for s in samples) if samples is not None else None,
               "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        _check_keys(row)
        return row

    def failure(self, status: str, error: str) -> dict:
        return self.row("status", None, "", status=status, error=error[:2000])


# ------------------------------------------------------------------------------------------ files


def write_atomic(path: Path, data: str) -> None:
    """Write to a temp file in the same folder, fsync, then rename over the target (atomic on POSIX)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _json_safe(value):
    return None if isinstance(value, float) and not math.isfinite(value) else value


@dataclass
class CellRecord:
    """A finished cell: its spec and its rows (cells/<cell_id>.json)."""

    spec: CellSpec
    rows: list[dict]

    @property
    def failed(self) -> bool:
        return any(r["status"] not in ("ok", "skipped") for r in self.rows)

    def to_json(self) -> str:
        rows = [{k: _json_safe(v) for k, v in r.items()} for r in self.rows]
        return json.dumps({"schema_version": SCHEMA_VERSION, "cell_id": self.spec.cell_id,
                           "spec": self.spec.to_dict(), "rows": rows}, default=str)

    @classmethod
    def from_json(cls, text: str) -> "CellRecord":
        data = json.loads(text)
        if data.get("schema_version") != SCHEMA_VERSION:
            raise ResultsError(f"schema version {data.get('schema_version')!r}, expected {SCHEMA_VERSION}")
        spec = CellSpec.from_dict(data["spec"])
        if spec.cell_id != data["cell_id"]:
            raise ResultsError(f"cell id {data['cell_id']} does not match its spec ({spec.cell_id})")
        return cls(spec, check_rows(spec, data["rows"]))


def check_rows(spec: CellSpec, rows: Any) -> list[dict]:
    """Rows that a cell process or a cell file hands over: a non-empty list of this cell's schema rows."""
    if not isinstance(rows, list) or not rows:
        raise ResultsError("no rows")
    for row in rows:
        if not isinstance(row, dict):
            raise ResultsError(f"a row is not a mapping: {str(row)[:80]}")
        _check_keys(row)
        if row.get("cell_id") != spec.cell_id or row.get("status") not in STATUSES:
            raise ResultsError("a row does not belong to this cell or has no valid status")
    return rows


def rows_frame(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=list(COLUMNS))


def write_results_csv(path: Path, rows: list[dict]) -> None:
    write_atomic(path, rows_frame(rows).to_csv(index=False))


def read_results(path: str | Path) -> pd.DataFrame:
    """A results.csv written by this schema version; ResultsError (one line) for anything else."""
    path = Path(path)
    try:
        frame = pd.read_csv(path, dtype={"cell_id": str, "error": str, "samples": str}, low_memory=False)
    except FileNotFoundError:
        raise ResultsError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise ResultsError(f"{path}: not a readable results file ({type(err).__name__}: "
                           f"{str(err).splitlines()[0] if str(err) else ''})") from None
    missing = [c for c in ("schema_version", "cell_id", "metric", "value", "status") if c not in frame.columns]
    if missing:
        raise ResultsError(f"{path}: not a vitbench results file of schema {SCHEMA_VERSION} (missing columns "
                           f"{', '.join(missing)}); re-run the suite with this version")
    versions = set(pd.to_numeric(frame["schema_version"], errors="coerce").dropna().astype(int))
    if versions != {SCHEMA_VERSION} and len(frame):
        raise ResultsError(f"{path}: schema version(s) {sorted(versions) or 'unreadable'}, expected {SCHEMA_VERSION}")
    bad_status = set(frame["status"].dropna()) - set(STATUSES)
    if bad_status or frame["status"].isna().any():
        raise ResultsError(f"{path}: damaged rows (status {sorted(map(str, bad_status)) or 'missing'})")
    return frame.reindex(columns=list(dict.fromkeys([*COLUMNS, *frame.columns])))
