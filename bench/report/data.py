"""What the report reads: the runs' results.csv (validated), their training curves and the files tasks wrote.
Never a checkpoint or a model: figures that need one are drawn by a task into artifacts/."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..results import read_results

DEFAULT_BACKENDS = ("sdpa", "triton", "none")  # a model's usual attention ("none": CNNs); math is a comparison


@dataclass
class Runs:
    rows: pd.DataFrame  # every row of every run, with run_dir, label, subset, route added
    curves: pd.DataFrame  # one row per curve point of the accuracy cells, with their cell's columns
    run_dirs: list[Path]
    out: Path


def route(task: str, init) -> str:
    """How an accuracy cell's weights were obtained, in words (the transfer study's routes)."""
    init = "" if not isinstance(init, str) else init
    if task == "linear_probe":
        return "MAE encoder, linear probe" if init.startswith("mae:") else f"{init} encoder, linear probe"
    if task == "finetune":
        if init.startswith("mae:"):
            return "MAE (unlabeled) -> fine-tune"
        return f"supervised on {init} -> fine-tune"
    if task == "pretrain_mae":
        return "MAE pretraining"
    return "from scratch"


def load(run_dirs: list[Path], out: Path) -> Runs:
    frames = []
    for run_dir in run_dirs:
        frame = read_results(run_dir / "results.csv")
        frame["run_dir"] = str(run_dir)
        frames.append(frame)
    rows = pd.concat(frames, ignore_index=True)
    rows["device"] = rows["device"].fillna("?")
    rows["label"] = rows["model"].fillna(rows["attn_backend"])
    rows["subset"] = rows["train_size_used"] + rows["val_size"]  # images the cell drew (training + validation)
    rows["route"] = [route(t, i) for t, i in zip(rows["task"], rows["init"])]
    rows["study"] = rows["study"].astype(object).fillna("")
    return Runs(rows, _curves(rows, run_dirs), run_dirs, out)


def _curves(rows: pd.DataFrame, run_dirs: list[Path]) -> pd.DataFrame:
    cells = rows.drop_duplicates("cell_id").set_index("cell_id")
    points = []
    for run_dir in run_dirs:
        for path in sorted((run_dir / "curves").glob("*.json")):
            if path.stem not in cells.index:
                continue
            for point in json.loads(path.read_text())["curve"]:
                points.append({"cell_id": path.stem, **point})
    if not points:
        return pd.DataFrame()
    columns = ["label", "family", "impl", "task", "route", "subset", "seed", "protocol", "budget", "device",
               "dataset", "converged"]
    return pd.DataFrame(points).join(cells[columns], on="cell_id")


def ok_metric(rows: pd.DataFrame, metric: str, **where) -> pd.DataFrame:
    frame = rows[(rows["status"] == "ok") & (rows["metric"] == metric)]
    for column, value in where.items():
        frame = frame[frame[column].isin(value if isinstance(value, (list, tuple, set)) else [value])]
    return frame.copy()


def in_study(frame: pd.DataFrame, study: str) -> pd.DataFrame:
    """Rows of cells tagged with `study` in their suite (a cell may carry several tags, ';'-separated)."""
    return frame[np.array([study in str(tags).split(";") for tags in frame["study"]], dtype=bool)]


def unpaired(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows of ordinary cells; paired cells (compare_to) give the ratio table, not the figures."""
    return frame[frame["compare_to"].isna()]


def accuracy_summary(rows: pd.DataFrame, task=("train_eval",)) -> pd.DataFrame:
    """Test accuracy (%) per curve point: mean, min, max over seeds, seeds, whether every seed converged."""
    acc = ok_metric(rows, "accuracy", task=list(task))
    if acc.empty:
        return acc
    acc["accuracy"] = acc["value"] * 100
    keys = ["device", "device_name", "dataset", "protocol", "budget", "task", "route", "label", "family", "impl",
            "subset"]
    acc[keys] = acc[keys].astype(object).fillna("")
    summary = acc.groupby(keys).agg(mean=("accuracy", "mean"), low=("accuracy", "min"), high=("accuracy", "max"),
                                    seeds=("seed", "nunique"),
                                    converged=("converged", lambda c: bool(np.all(c.astype(str) == "True"))))
    return summary.reset_index()


def from_scratch_on_whole_datasets(summary: pd.DataFrame) -> pd.DataFrame:
    """The data-efficiency points: models trained from scratch on a whole dataset, never on a class subset such
    as the transfer study's fashion-mnist:5-9 (a 5-class task does not answer the 10-class question)."""
    return summary[(summary["route"] == "from scratch") & ~summary["dataset"].str.contains(":")]


def budget_label(budget: str) -> str:
    """'{"seconds":30.0,"evals":4}' -> '30 s'; epochs budgets -> 'up to 200 epochs, early stop'."""
    data = json.loads(budget)
    if "seconds" in data:
        return f"{data['seconds']:g} s"
    if "train_flops" in data:
        return f"{data['train_flops']:.3g} FLOP"
    extra = ", early stop" if data.get("patience") else ""
    cap = f", at most {data['max_images']:,} images" if data.get("max_images") else ""
    return f"up to {data['epochs']:g} epochs{cap}{extra}"
