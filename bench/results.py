"""The tidy results file: one row per measurement, written atomically so a kill at any moment leaves it valid."""

from __future__ import annotations

import csv
import io
import os
import tempfile
from pathlib import Path

import pandas as pd

COLUMNS = [
    "suite", "run_id", "cell_id", "model", "family", "impl", "variant", "patch", "params", "gflops", "img_size",
    "dataset", "train_size", "task", "batch_size", "dtype", "device", "attn_backend", "compile", "metric", "value",
    "unit", "p20", "p80", "n_repeats", "status", "error", "seed", "git_sha", "torch", "timm", "triton", "gpu",
    "timestamp",
    # added beyond the design's schema
    "attn_shape", "channels_last", "concurrency", "steps", "epochs", "recipe", "init",
]


def read_results(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        return pd.DataFrame(columns=COLUMNS)
    return pd.read_csv(path, dtype={"cell_id": str, "error": str})  # a hex id such as "1234e5678901" is not a float


def failed_cell_ids(frame: pd.DataFrame) -> set[str]:
    """Cells with a row whose status is neither ok nor skipped."""
    return set(frame.loc[~frame["status"].isin(["ok", "skipped"]), "cell_id"])


def write_atomic(path: Path, data: str) -> None:
    """Write to a temp file in the same folder, fsync, then rename over the target (atomic on POSIX)."""
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


def append_rows(path: str | Path, rows: list[dict], replace_cell: str | None = None) -> None:
    """Add rows to results.csv by rewriting it atomically (the file stays small: one row per measurement).

    replace_cell drops that cell's earlier rows first (a failed cell run again with --retry-failed)."""
    path = Path(path)
    old = path.read_text() if path.exists() else ""
    if replace_cell is not None and old:
        frame = read_results(path)
        frame = frame[frame["cell_id"] != replace_cell]
        buf = io.StringIO()
        frame.reindex(columns=COLUMNS).to_csv(buf, index=False)
        old = buf.getvalue()
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="raise")
    if not old:
        writer.writeheader()
    for row in rows:
        writer.writerow({k: row.get(k, "") for k in COLUMNS})
    write_atomic(path, old + buf.getvalue())
