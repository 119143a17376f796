"""The results schema (one row per measurement, long format) and the files that hold it.

This module owns the columns: every row is built here (RowMaker) and checked against COLUMNS, so an unknown
key is an error, never dropped. Columns come in groups:
  identity     schema_version, suite, run_id, cell_id
  requested    one column per CellSpec field (bench/spec.py): what the suite asked for, the same in ok and
               failure rows
  effective    what actually ran: family, impl, params, attn_backend_used, train_size_used, ...
  measurement  metric, value, unit, p20, p80, samples (the raw per-repeat values), ci_low/ci_high, status, error
  noise, timing  machine load around throughput cells, the noisy flag; where the cell's time went, its wall time
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
from typing import IO, Any, Callable

import pandas as pd

from .paths import CellContext, RunPaths
from .spec import AXES, CellSpec

SCHEMA_VERSION = 3
STATUSES = ("ok", "skipped", "oom", "timeout", "killed", "error")


@dataclass(frozen=True)
class Metric:
    """A registered metric: rows of any other name are refused.

    `valid` is the closed range a measurement of it can have (every metric here is a count, a time, a rate, a loss,
    an error, a ratio or a fraction: none below 0, fractions at most 1). An ok row whose value is missing, NaN,
    infinite or outside that range is no measurement. Readers leave such rows out and say so, naming the cell file
    (`without_impossible`): the report lists them beside its failed cells, compare in its output; every other row of
    the run is read as usual."""

    name: str
    unit: str
    direction: str  # higher | lower (is better) | neither (a fact, never a regression)
    group: str  # speed | latency | compute | memory | energy | accuracy | cost | error | status
    help: str
    valid: tuple[float, float] = (0.0, math.inf)

    def describe_range(self) -> str:
        low, high = self.valid
        return f"valid {low:g} to {high:g}" if math.isfinite(high) else f"valid {low:g} or more"


FRACTION = (0.0, 1.0)
METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("throughput", "img/s", "higher", "speed", "images per second: batch / step time"),
    Metric("step_time", "ms", "lower", "speed", "time of one step (inference, or forward + backward + update)"),
    Metric("throughput_ratio", "x", "higher", "speed", "paired: this side's throughput over the other side's, "
                                                      "alternated in one process"),
    Metric("epoch_time", "s", "lower", "speed", "training seconds per epoch of the cell's training images"),
    Metric("latency_p50", "ms", "lower", "latency", "median time of one call at the cell's batch"),
    Metric("latency_p90", "ms", "lower", "latency", "90th percentile of one call's time"),
    Metric("latency_p99", "ms", "lower", "latency", "99th percentile of one call's time"),
    Metric("latency_ratio", "x", "lower", "latency", "paired: this side's median call time over the other side's, "
                                                     "alternated in one process (below 1: this side is faster)"),
    Metric("fwd_time", "ms", "lower", "speed", "attention forward, per call"),
    Metric("fwd_bwd_time", "ms", "lower", "speed", "attention forward + backward, per call"),
    Metric("achieved_tflops", "TFLOP/s", "higher", "compute", "FLOPs of a step over its time"),
    Metric("mfu", "fraction", "higher", "compute", "achieved over the GPU's dense peak", FRACTION),
    Metric("fwd_tflops", "TFLOP/s", "higher", "compute", "attention forward FLOPs over its time"),
    Metric("fwd_bwd_tflops", "TFLOP/s", "higher", "compute", "attention forward + backward FLOPs over its time"),
    Metric("peak_memory", "MiB", "lower", "memory", "peak of one step minus what was held before it"),
    Metric("model_memory", "MiB", "lower", "memory", "weights, buffers and optimizer state"),
    Metric("energy_per_image", "J/img", "lower", "energy", "GPU energy over the timed steps per image"),
    Metric("avg_power", "W", "neither", "energy", "GPU energy over the timed steps per second"),
    Metric("accuracy", "fraction", "higher", "accuracy", "top-1 accuracy on the test split", FRACTION),
    Metric("val_accuracy", "fraction", "higher", "accuracy", "best validation accuracy (the kept checkpoint)",
           FRACTION),
    Metric("checkpoint_accuracy", "fraction", "higher", "accuracy", "test accuracy the checkpoint was saved with",
           FRACTION),
    Metric("robust_accuracy", "fraction", "higher", "accuracy", "top-1 accuracy on the robustness test subset under "
           "`condition` at `level` (bench/tasks/robustness.py)", FRACTION),
    Metric("ece", "fraction", "lower", "accuracy", "expected calibration error, 15 bins, on the robustness subset: "
           "`condition` clean, or pooled over every corrupted image", FRACTION),
    Metric("test_loss", "nats", "lower", "accuracy", "cross-entropy on the test split"),
    Metric("train_loss", "mse", "lower", "accuracy", "MAE: training reconstruction loss at the end"),
    Metric("recon_loss", "mse", "lower", "accuracy", "MAE: reconstruction loss of held-out images' masked patches"),
    Metric("train_time", "s", "lower", "cost", "training seconds (evaluation excluded)"),
    Metric("train_flops", "FLOP", "neither", "cost", "training FLOPs: forward x 3 per image seen"),
    Metric("images_seen", "images", "neither", "cost", "training images processed"),
    Metric("compile_time", "s", "lower", "cost", "engine compile: torch.compile's first call"),
    Metric("export_time", "s", "lower", "cost", "engine onnxruntime: ONNX export and session creation"),
    Metric("max_error", "abs", "lower", "error", "attention output: max abs error against higher precision"),
    Metric("max_grad_error", "abs", "lower", "error", "attention gradients: max abs error against higher precision"),
    Metric("engine_max_error", "abs", "lower", "error", "a non-eager engine's max abs error against eager, same input"),
    Metric("status", "", "neither", "status", "a failed or skipped cell: see status and error"),
)}
HEADLINE = tuple(METRICS[n].name for n in ("throughput", "throughput_ratio", "latency_p50", "latency_ratio",
                                           "peak_memory", "accuracy", "fwd_time", "fwd_bwd_time"))  # runner summary

IDENTITY = {
    "schema_version": f"version of this schema ({SCHEMA_VERSION})",
    "suite": "suite name", "run_id": "run directory name",
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
    "train_size_used": "training images actually used (the stratified subset, outside the validation set)",
    "val_size": "images of the fixed validation set (the same for every cell of the training split)",
    "batch_size_used": "batch size that ran (accuracy: at most the training images)",
    "init_used": "where fine-tuned weights came from (a path or timm:<name>)",
    "recipe_used": "training recipe that ran (JSON)",
    "protocol": "accuracy budget protocol: converged | fixed | compute-equal",
    "epochs": "epochs trained",
    "steps": "optimizer steps taken",
    "best_epoch": "epoch of the kept (best validation) checkpoint",
    "converged": "converged protocol: training stopped at a validation plateau after its learning-rate drops, "
                 "before the cap (False at the cap, and for the other protocols)",
    "stopped_early": "training ended by its schedule (a plateau) before the budget's cap",
    "channels_last": "CNN ran in channels_last layout",
    "concurrency": "accuracy cells sharing the device", "placement": "where the cell ran (executor:host:device)",
    "paired_with": "paired timing: the other side's model / backend / engine",
    "engine_detail": "how the engine ran (compile mode; ONNX Runtime's provider, threads, version)",
    "effective_batch": "data-parallel: global batch (batch_size_used x nproc)",
    "artifact": "a file the cell wrote, relative to the run dir (a figure and its data)",
    "condition": "robustness: clean, a corruption, patch_drop_aligned / _offset or patch_shuffle",
    "level": "robustness: a corruption's severity (1-5), the share of the image dropped, or shuffled cells per side",
    "method_version": "version of the task's measurement method: results of two versions are not comparable",
    "diverged": "why the training is no measurement ('' = it is): test accuracy at chance, or a loss that rose "
                "tenfold; such cells never count as converged and stay out of the report's answer",
    "data_source": "where the dataset was read from", "data_checksum": "sha256 of the training split's source files",
}
MEASUREMENT = {
    "metric": "what was measured", "value": "the value (median over repeats)", "unit": "its unit",
    "p20": "20th percentile over repeats", "p80": "80th percentile over repeats",
    "n_repeats": "repeats behind the value", "samples": "raw per-repeat values, ';'-separated",
    "ci_low": "interval of a paired ratio's median, low: order statistics of the repeats' ratios, 95 % or more "
              "(5 repeats: their range, 94 %; bench/stats/intervals.py); empty with fewer",
    "ci_high": "the same, high", "status": " | ".join(STATUSES), "error": "why a cell failed or was skipped",
}
NOISE = {
    "load_before": "1-minute load average before the cell's timing", "load_after": "the same, after",
    "usable_cores": "cores this process may run on", "other_cpu": "share of the machine's CPU time used by other "
    "processes while timing", "noisy": "why the timing is suspect ('' = not flagged): spread or busy machine",
}
TIMING = {
    "cell_wall_s": "the cell's wall time, from its launch by the runner until its rows were back",
    "startup_s": "from the launch until the task started (process start, imports)",
    "data_s": "reading and decoding datasets", "setup_s": "building the model, optimizer, FLOP count, compilation",
    "train_s": "the timed region: training steps, or a throughput cell's timed repeats",
    "eval_s": "validation and the final test", "write_s": "writing checkpoints, curves and figures",
}
ENVIRONMENT = {
    "code_version": "git sha, '+dirty.<hash of the diff>' for uncommitted changes",
    "git_sha": "git sha (with -dirty)", "torch": "torch version", "timm": "timm version",
    "triton": "triton version", "gpu": "GPU name ('' on CPU)", "device_name": "the CPU's or GPU's model name: "
    "wall-clock budgets and timings compare only on one device_name", "host": "host name", "timestamp": "row time",
}
COLUMNS: dict[str, str] = {**IDENTITY, **REQUESTED, **EFFECTIVE, **MEASUREMENT, **NOISE, **TIMING, **ENVIRONMENT}
# Renamed from schema 1 (docs/results-schema.md): model / attn_backend / train_size / init were effective values in
# ok rows; they are now always the requested ones, beside attn_backend_used / train_size_used / init_used.
EFFECTIVE_KEYS = set(EFFECTIVE) | set(NOISE) | set(TIMING)


class SchemaError(KeyError):
    pass


class ResultsError(ValueError):
    """An unreadable results file; the message is one line."""


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

    def row(self, metric: str, value, *, p20=None, p80=None, n_repeats=None, samples=None,
            ci_low=None, ci_high=None, status: str = "ok", error: str | None = None, **override) -> dict:
        if status not in STATUSES:
            raise SchemaError(f"status {status!r} not in {STATUSES}")
        if metric not in METRICS:
            raise SchemaError(f"unregistered metric {metric!r}: add it to METRICS in bench/results.py first")
        row = {**self.base, **override, "metric": metric, "value": value, "unit": METRICS[metric].unit, "p20": p20,
               "p80": p80, "n_repeats": n_repeats, "ci_low": ci_low, "ci_high": ci_high, "status": status,
               "error": error,
               "samples": ";".join(f"{s:.6g}" for s in samples) if samples is not None else None,
               "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        _check_keys(row)
        return row

    def failure(self, status: str, error: str) -> dict:
        return self.row("status", None, status=status, error=error[:2000])


# ------------------------------------------------------------------------------------------ files


def write_atomic(path: Path, data: str | Callable[[IO[bytes]], None]) -> None:
    """Write text (UTF-8, whatever the locale) or whatever `data(file)` writes to a temp file in the same folder,
    fsync, then rename over the target (atomic on POSIX); the temp file never outlives a failure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode("utf-8"))
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


NUMBERS = ("value", "p20", "p80", "n_repeats", "ci_low", "ci_high", "params", "gflops", "level", *TIMING)


def check_rows(spec: CellSpec, rows: Any) -> list[dict]:
    """Rows that a cell process or a cell file hands over: a non-empty list of this cell's schema rows, with a
    registered metric and numbers where numbers belong (a file edited by hand is refused, not half-read)."""
    if not isinstance(rows, list) or not rows:
        raise ResultsError("no rows")
    for row in rows:
        if not isinstance(row, dict):
            raise ResultsError(f"a row is not a mapping: {str(row)[:80]}")
        _check_keys(row)
        if row.get("cell_id") != spec.cell_id or row.get("status") not in STATUSES:
            raise ResultsError("a row does not belong to this cell or has no valid status")
        if row.get("metric") not in METRICS:
            raise ResultsError(f"a row has the unregistered metric {str(row.get('metric'))[:40]!r}")
        bad = [name for name in NUMBERS if row.get(name) is not None
               and (isinstance(row[name], bool) or not isinstance(row[name], (int, float)))]
        if bad:
            raise ResultsError(f"a {row['metric']} row has non-numbers in {', '.join(bad)}")
    return rows


def rows_frame(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=list(COLUMNS))


def setting_columns(pooled: tuple[str, ...] = ("seed", "init_cell")) -> list[str]:
    """The requested columns that say what a row measured: the cell spec's identity axes, less `pooled` ones
    (seeds are pooled into a mean, and with them the seed's pretraining cell). Every grouping key of the report,
    metrics.csv and compare starts here, so a new axis is a new key everywhere."""
    return [name for name, f in AXES.items() if f.metadata["identity"] and name not in pooled]


def flagged(column: pd.Series) -> pd.Series:
    """Rows whose text flag (diverged, noisy) says something ('' and missing say nothing)."""
    return column.notna() & (column.astype(str) != "")


TYPED_AXES = ("budget", "attn_shape", "study")  # axes whose CSV text form is a flattening of a typed value


def records_frame(records: list[CellRecord]) -> pd.DataFrame:
    """Every row of the cell records, with the spec's own values where CSV would have flattened them (budget: a
    Budget, attn_shape and study: tuples); mappings stay canonical JSON text, which is hashable."""
    rows = [{**row, **{name: getattr(record.spec, name) for name in TYPED_AXES}}
            for record in records for row in record.rows]
    return pd.DataFrame(rows, columns=list(COLUMNS))


def read_records(run_dir: Path) -> list[CellRecord]:
    """The finished cells of a run dir, for reading (the report, compare); ResultsError (one line) for a dir
    without them or a damaged cell file (`bench run` on the dir moves damaged files aside and reruns them)."""
    paths = RunPaths(Path(run_dir))
    files = sorted(paths.cells_dir.glob("*.json"))
    if not files:
        older = " (it has a results.csv: written by an older vitbench)" if paths.results_csv.exists() else ""
        raise ResultsError(f"{run_dir}: no cell records (cells/*.json){older}; expected a run dir of `python -m "
                           "bench run` of this version")
    records = []
    for file in files:
        try:
            records.append(CellRecord.from_json(file.read_text()))
        except (OSError, ValueError, KeyError, TypeError, RecursionError) as err:
            raise ResultsError(f"{file}: damaged cell record ({type(err).__name__}: {str(err)[:160]}); `python -m "
                               f"bench run` on its run dir reruns that cell") from None
    return records


def _measurable(metric: str, value) -> bool:
    low, high = METRICS[metric].valid
    return isinstance(value, (int, float)) and math.isfinite(value) and low <= value <= high


def without_impossible(frame: pd.DataFrame, run_dir: Path) -> tuple[pd.DataFrame, list[str]]:
    """A run's rows less the ok ones whose value no measurement of their metric can have (Metric.valid), and one
    line per row left out, naming its cell file: 'RUN/cells/<id>.json: accuracy nan (valid 0 to 1)'."""
    measurable = [_measurable(m, v) for m, v in zip(frame["metric"], frame["value"])]
    bad = (frame["status"] == "ok") & ~pd.Series(measurable, index=frame.index, dtype=bool)
    paths = RunPaths(Path(run_dir))
    said = [f"{paths.cell_record(cell)}: {metric} {value:g} ({METRICS[metric].describe_range()})"
            for cell, metric, value in zip(frame.loc[bad, "cell_id"], frame.loc[bad, "metric"],
                                           frame.loc[bad, "value"].astype(float))]
    return frame[~bad], said


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
