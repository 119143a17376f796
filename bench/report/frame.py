"""What the report reads: the runs' cell records (cells/<cell_id>.json: the typed spec and its rows), their
environment records, their training curves and the files tasks wrote. Never a checkpoint or a model: figures that
need one are drawn by a task into artifacts/. Values of the spec are used as the spec holds them (a Budget, a
shape tuple, a tuple of study tags), never parsed back out of text."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..data import is_class_range
from ..paths import RunPaths
from ..results import flagged, read_records, records_frame, setting_columns, without_impossible
from ..spec import Budget, CellSpec
from ..stats import Interval, mean_interval, median_interval
from ..tasks import TASKS

DEFAULT_BACKENDS = ("sdpa", "triton", "none")  # a model's usual attention ("none": CNNs); math is a comparison


@dataclass(eq=False)  # hashable by identity: what is computed from it is cached per report
class Runs:
    rows: pd.DataFrame  # every row of every run, with run_dir, machine, label, subset, route, route_text added
    curves: pd.DataFrame  # one row per curve point of the accuracy cells, with their cell's columns; `curve` (its
    # file) tells the curves apart, a cell id repeating across run dirs
    envs: dict[Path, dict]  # each run's env.json
    out: Path
    excluded: list[str]  # one line per row left out: a value no measurement can have (results.without_impossible)

    @property
    def run_dirs(self) -> list[Path]:
        return list(self.envs)


# How an accuracy cell's weights were obtained: a key the report joins on, and its text for people.
ROUTE_TEXT = {"scratch": "from scratch", "mae-finetune": "MAE (unlabeled) -> fine-tune",
              "supervised-finetune": "supervised on {init} -> fine-tune", "mae-probe": "MAE encoder, linear probe",
              "supervised-probe": "{init} encoder, linear probe", "mae-pretraining": "MAE pretraining"}


def route(spec: CellSpec) -> str:
    """The route key of a cell (ROUTE_TEXT): where its weights start, as its task reads them (the checkpoint its
    Task.reads_checkpoint names: a pretrain_mae cell's, or any other)."""
    task = spec.task
    ref = TASKS[task].reads_checkpoint(spec) if task in TASKS else None
    source = "mae" if ref is not None and "pretrain_mae" in ref.tasks else "supervised"
    if task == "linear_probe":
        return f"{source}-probe"
    if task == "finetune":
        return f"{source}-finetune"
    return "mae-pretraining" if task == "pretrain_mae" else "scratch"


def load(run_dirs: list[Path], out: Path) -> Runs:
    frames, envs, excluded = [], {}, []
    for run_dir in run_dirs:
        records = read_records(run_dir)
        frame = records_frame(records).assign(route=[route(record.spec) for record in records for _ in record.rows])
        frame, said = without_impossible(frame, run_dir)
        frames.append(frame.assign(run_dir=str(run_dir)))
        excluded += said
        env_path = RunPaths(run_dir).env_json
        envs[run_dir] = json.loads(env_path.read_text()) if env_path.exists() else {}
    rows = pd.concat(frames, ignore_index=True)
    rows["machine"] = machines(rows)
    rows["label"] = rows["model"].fillna(rows["attn_backend"])
    rows["subset"] = rows["train_size_used"]  # training images (validation: a fixed set apart, val_size)
    rows["route"] = rows.pop("route")  # read per record above; placed here, results_combined.csv's column order
    rows["route_text"] = [ROUTE_TEXT[r].format(init=i) for r, i in zip(rows["route"], rows["init"])]
    rows["class_subset"] = [isinstance(d, str) and d != "synthetic" and is_class_range(d) for d in rows["dataset"]]
    rows = one_rule_per_protocol(rows)
    return Runs(rows, _curves(rows, run_dirs), envs, out, excluded)


def machines(rows: pd.DataFrame) -> pd.Series:
    """The device model each row ran on, as every section, table and figure name of the report groups by: the
    device ('cpu', 'cuda') where the runs hold one model of it, else the device and its model ('cpu-amd-epyc-7b13')."""
    names = rows["device_name"].fillna("?").astype(str)
    several = names.groupby(rows["device"]).transform("nunique") > 1
    slug = names.str.lower().str.replace(r"[^a-z0-9]+", "-", regex=True).str.strip("-")
    return rows["device"].where(~several, rows["device"] + "-" + slug)


def one_rule_per_protocol(rows: pd.DataFrame) -> pd.DataFrame:
    """Converged-protocol cells grouped by their rule, not their cap (Budget.rule: a converged cell trains the same
    under any larger cap). Where one setting ran under several caps (a size rerun with a larger cap after it
    reached the first), the cells with the largest cap stand and the others are dropped from the report; budget
    becomes the rule (the cell records keep the budget that ran)."""
    budgets = rows["budget"]
    converged = np.array([isinstance(b, Budget) and b.protocol == "converged" for b in budgets], dtype=bool)
    converged &= rows["train_size_used"].notna().to_numpy()  # a training cell's rows (not a reader's, robustness)
    if not converged.any():
        return rows
    mine = rows[converged]
    cap = [b.cap_images(int(n), int(batch)) for b, n, batch in
           zip(mine["budget"], mine["train_size_used"], mine["batch_size_used"].fillna(mine["batch_size"]))]
    mine = mine.assign(budget=[b.rule() for b in mine["budget"]], cap=cap)
    largest = mine.groupby(seed_keys(), dropna=False, sort=False)["cap"].transform("max")
    mine = mine[mine["cap"] == largest].drop(columns="cap")
    return pd.concat([rows[~converged], mine]).sort_index()


def _curves(rows: pd.DataFrame, run_dirs: list[Path]) -> pd.DataFrame:
    cells = rows.drop_duplicates(["run_dir", "cell_id"]).set_index(["run_dir", "cell_id"])
    points = []
    for run_dir in run_dirs:
        for path in sorted(RunPaths(run_dir).curves_dir.glob("*.json")):
            if (str(run_dir), path.stem) in cells.index:
                points += [{"run_dir": str(run_dir), "cell_id": path.stem, "curve": str(path), **point}
                           for point in json.loads(path.read_text())["curve"]]
    if not points:
        return pd.DataFrame()
    columns = ["label", "family", "impl", "task", "route", "route_text", "subset", "seed", "protocol", "budget",
               "machine", "dataset", "converged"]
    return pd.DataFrame(points).join(cells[columns], on=["run_dir", "cell_id"])


def ok_metric(rows: pd.DataFrame, metric: str, **where) -> pd.DataFrame:
    frame = rows[(rows["status"] == "ok") & (rows["metric"] == metric)]
    for column, value in where.items():
        frame = frame[frame[column].isin(value if isinstance(value, (list, tuple, set)) else [value])]
    return frame.copy()


def cell_value(frame: pd.DataFrame, rows: pd.DataFrame, metric: str) -> pd.Series:
    """For each row of `frame`, the value of `metric` in its own cell: the same cell id in the same run dir (an id
    repeats across run dirs, on another machine or in a rerun); NaN where that cell has none."""
    values = ok_metric(rows, metric).groupby(["run_dir", "cell_id"])["value"].first().rename("cell_value")
    return frame.join(values, on=["run_dir", "cell_id"])["cell_value"]


def in_study(frame: pd.DataFrame, study: str) -> pd.DataFrame:
    """Rows of cells tagged with `study` in their suite."""
    return frame[np.array([study in tags for tags in frame["study"]], dtype=bool)]


def unpaired(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows of ordinary cells; paired cells (compare_to) give the ratio table, not the figures."""
    return frame[frame["compare_to"].isna()]


def all_true(column: pd.Series) -> bool:
    """Whether every value is True (None, unknown, is not)."""
    return bool(np.all(column == True))  # noqa: E712 - elementwise, None compares False


def seed_keys() -> list[str]:
    """The columns that name one training seed: its setting (the spec's axes less the seed), the device model it ran
    on, and the seed. Cells alike in all of them are one seed measured again (per_seed)."""
    return [*setting_columns(), "device_name", "machine", "seed"]


def per_seed(frame: pd.DataFrame, keys: list[str], values: list[str], every: list[str] = ()) -> pd.DataFrame:
    """One row per value of `keys` (a setting and its seed): a cell that ran again in another run dir on the same
    device model (a rerun) is the same seed measured twice, never another seed, so its `values` are averaged and
    its `every` columns hold only where all repeats hold; other columns take the first value a repeat has."""
    how = {c: "first" for c in frame.columns if c not in keys} | {c: "mean" for c in values}
    how |= {c: all_true for c in every}
    return frame.groupby(keys, dropna=False, sort=False).agg(how).reset_index()


def accuracy_summary(rows: pd.DataFrame, task=("train_eval",)) -> pd.DataFrame:
    """Test accuracy (%) per setting, seeds pooled: mean, its 95 % t interval (low, high; the mean itself for one
    seed), the seeds and their values, whether every seed converged; one row per value of the spec's axes (less
    the seed) and device model; the mean images seen and training FLOPs over the seeds (images, flops). Diverged
    trainings are left out; a seed run in several run dirs is one seed (per_seed)."""
    acc = ok_metric(rows, "accuracy", task=list(task))
    acc = acc[~flagged(acc["diverged"])]  # a diverged training is no measurement (the failure table lists it)
    if acc.empty:
        return acc
    acc["accuracy"] = acc["value"] * 100
    for metric in ("images_seen", "train_flops"):  # what each cell's training cost, beside its accuracy
        acc[metric] = cell_value(acc, rows, metric)
    acc = per_seed(acc, seed_keys(), ["accuracy", "images_seen", "train_flops"], every=["converged"])
    keys = [key for key in seed_keys() if key != "seed"]  # the setting on its device model: seeds pooled
    acc = acc.sort_values("seed")  # values in seed order: seed i of one model pairs with seed i of another
    summary = acc.groupby(keys, dropna=False, sort=False).agg(
        mean=("accuracy", "mean"), seeds=("seed", "nunique"),
        converged=("converged", all_true),
        values=("accuracy", list), seed_list=("seed", list), label=("label", "first"), family=("family", "first"),
        impl=("impl", "first"), subset=("subset", "first"), route=("route", "first"),
        route_text=("route_text", "first"), protocol=("protocol", "first"), class_subset=("class_subset", "first"),
        images=("images_seen", "mean"), flops=("train_flops", "mean"))
    intervals = [mean_interval(values) for values in summary["values"]]  # 95 % t; a single seed has none
    summary["low"] = [m if math.isnan(i.low) else i.low for m, i in zip(summary["mean"], intervals)]
    summary["high"] = [m if math.isnan(i.high) else i.high for m, i in zip(summary["mean"], intervals)]
    return summary.reset_index()


def from_scratch_on_whole_datasets(summary: pd.DataFrame) -> pd.DataFrame:
    """The data-efficiency points: models trained from scratch on a whole dataset, never on a class subset such
    as the transfer study's fashion-mnist:5-9 (a 5-class task does not answer the 10-class question)."""
    return summary[(summary["route"] == "scratch") & ~summary["class_subset"]]


def samples_of(text) -> list[float]:
    """A row's raw per-repeat values (the ';'-separated `samples` column); [] where none were kept."""
    return [float(v) for v in text.split(";")] if isinstance(text, str) and text else []


def latency_samples(runs: Runs, machine: str | None = None) -> pd.DataFrame:
    """Per model, engine, batch, dtype and image size: `calls`, one list of per-call times (ms) per cell side (the
    eager sides of several paired cells kept apart: a cell's calls share its moment of the machine)."""
    lat = ok_metric(runs.rows, "latency_p50", **({} if machine is None else {"machine": machine}))
    lat = lat.dropna(subset=["samples"])
    lat = lat.assign(calls=[samples_of(s) for s in lat["samples"]])
    return lat.groupby(["machine", "label", "family", "impl", "engine", "batch_size", "dtype", "img_size"],
                       as_index=False)["calls"].agg(list)


def paired_ratio(row: pd.Series) -> Interval:
    """A paired cell's ratio with its interval, from the row's per-pair ratios (order statistics: bench/stats); a
    row without samples keeps the interval it recorded."""
    if samples_of(row["samples"]):
        return median_interval(samples_of(row["samples"]))
    return Interval(row["value"], row["ci_low"], row["ci_high"], int(row["n_repeats"]), "recorded")

