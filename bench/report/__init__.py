"""python -m bench report RUN_DIR [RUN_DIR ...]: report.md, opening with the answer (generated from the data),
then seaborn figures by study, short tables, and the full metrics as CSV beside it. Reads result files only.
Several run dirs (a CPU run and a GPU run, or runs on two CPU models) are facetted or sectioned by device model
(frame.machines), as the Answer is; a cell id that repeats across run dirs is a cell of each, and a training cell
repeated on one device model is one seed measured again (frame.per_seed), never another seed."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..env import ENVIRONMENT_KEYS
from ..measure.phases import phase_split
from ..results import setting_columns
from . import figures, grid_figures, robustness, tables
from .artifacts import artifacts
from .answer import answer
from .frame import Runs, flagged, load, seed_keys
from .style import Skip

SECTIONS = [  # (title, figure function)
    ("Data efficiency", figures.data_efficiency),
    ("Model size x data size", grid_figures.model_data_grid),
    ("Transfer and self-supervised pretraining", figures.transfer),
    ("Robustness: corruptions, occlusion, calibration", robustness.section),
    ("MAE gain over training from scratch", tables.mae_gain),
    ("MAE reconstructions", lambda runs: artifacts(runs, "recon_loss")),
    ("Learning-curve back-test", figures.backtest_figure),
    ("Accuracy against training compute", figures.accuracy_vs_compute),
    ("Training curves", figures.training_curves),
    ("Scaling by model size", figures.scaling_by_size),
    ("Sequence length (patch size)", figures.patch_size),
    ("Image size", figures.image_size),
    ("Batch size", figures.batch_size),
    ("Deployment latency", figures.latency),
    ("Paired comparisons", tables.paired_table),
    ("Accuracy against speed", figures.pareto),
    ("Attention kernels", figures.attention_kernels),
    ("Attention maps", lambda runs: artifacts(runs, "checkpoint_accuracy")),
]


def mixed_environment(env: dict) -> list[str]:
    """What changed when a run was resumed with --allow-mixed-versions: 'torch 2.11.0 -> 2.14.1', ..."""
    changes = []
    for entry in env.get("resumed", []):
        changes += [f"{key} {env.get(key)} -> {entry[key]}" for key in (*ENVIRONMENT_KEYS, "code_version")
                    if key in entry and str(entry[key]) != str(env.get(key))]
    return list(dict.fromkeys(changes))


def _environments(runs: Runs) -> str:
    lines = []
    for run_dir, env in runs.envs.items():
        dirty = " (uncommitted changes)" if env.get("git_dirty") else ""
        mixed = mixed_environment(env)
        lines.append(f"- `{run_dir}`: {env.get('device_name', '?')} ({env.get('device', '?')}), torch "
                     f"{env.get('torch', '?')}, timm {env.get('timm', '?')}, triton {env.get('triton', '?')}, code "
                     f"{str(env.get('code_version', '?'))[:12]}{dirty}"
                     + (f". **Mixed environments** (resumed with --allow-mixed-versions): {'; '.join(mixed)}"
                        if mixed else ""))
    return "\n".join(lines)


def _varying(frame: pd.DataFrame, columns: list[str]) -> list[str]:
    """The columns whose values differ between rows (the ones that tell rows apart in a table)."""
    return [c for c in columns if frame[c].astype(str).nunique() > 1]


def failure_table(runs: Runs) -> str:
    """The cells that failed, were skipped or diverged; then the values left out as no measurement."""
    excluded = "".join(f"\n- `{line}`" for line in runs.excluded)
    if excluded:
        excluded = ("\n\nLeft out everywhere in this report, as values no measurement can have (each metric's valid "
                    f"range: bench/results.py):{excluded}")
    rows = runs.rows
    bad = rows[(rows["status"] != "ok") | flagged(rows["diverged"])].drop_duplicates(["run_dir", "cell_id"]).copy()
    if bad.empty:
        return "_None: every cell finished ok._" + excluded
    mark = flagged(bad["diverged"])
    bad.loc[mark, "error"] = bad.loc[mark, "diverged"]
    bad.loc[mark, "status"] = "ok, diverged"
    cols = ["machine", "label", *_varying(bad, [c for c in setting_columns() if c not in ("device", "model")]),
            "status", "error"]
    bad = bad[cols].astype(object).fillna("")
    bad["error"] = bad["error"].astype(str).str.slice(0, 140)
    return bad.to_markdown(index=False) + excluded


def capped_cells(runs: Runs, shown: int = 5) -> str:
    """Cells whose train_size asked for more images than their dataset gave (train_size_used): they trained on all
    of it, the same images as a larger or null train_size."""
    cells = runs.rows.drop_duplicates(["run_dir", "cell_id"])
    capped = cells[cells["train_size"].notna() & (cells["train_size"] > cells["train_size_used"])]
    if capped.empty:
        return ""
    listed = [f"{label} on {data}: {int(asked):,} -> {int(used):,}" for label, data, asked, used in
              zip(capped["label"], capped["dataset"], capped["train_size"], capped["train_size_used"])]
    more = f" and {len(listed) - shown} more" if len(listed) > shown else ""
    return (f"\n**Capped:** {len(capped)} cell(s) asked for more training images than their dataset gives and trained "
            f"on all of them (train_size -> train_size_used): {'; '.join(listed[:shown])}{more}.")


def repeated_cells(runs: Runs) -> str:
    """Training cells (a setting and seed on one device model) found in more than one run dir: one seed each."""
    rows = runs.rows[runs.rows["metric"].isin(["accuracy", "robust_accuracy"]) & (runs.rows["status"] == "ok")
                     & ~flagged(runs.rows["diverged"])]
    repeats = rows.groupby(seed_keys(), dropna=False, sort=False)["run_dir"].nunique()
    repeated = repeats[repeats > 1]
    if repeated.empty:
        return ""
    return (f"\n**Repeated:** {len(repeated)} cell(s) (a setting and seed on one device model) ran in more than one "
            f"run dir, {int(repeated.sum())} times in all: each seed's repeats are averaged into one value and "
            "counted as one seed, never as more seeds.")


def metrics_csv(runs: Runs, out: Path) -> str:
    """Median, min, max over rows (seeds, or repeats' medians) of every metric per setting (the spec's axes less
    the seed, and the device model): the full table, as CSV."""
    ok = runs.rows[runs.rows["status"] == "ok"]
    keys = [*setting_columns(), "device_name", "paired_with", "metric", "unit"]
    table = ok.groupby(keys, dropna=False, sort=False)["value"].agg(
        median="median", min="min", max="max", n="count").reset_index()
    table[keys] = table[keys].astype(object).where(table[keys].notna(), "")
    table.sort_values(keys, key=lambda c: c.astype(str)).to_csv(out / "metrics.csv", index=False)
    return f"All {len(table)} metrics (median, min, max, count over rows): [metrics.csv](metrics.csv); every row of " \
           "every run: [results_combined.csv](results_combined.csv)."


def time_table(runs: Runs) -> str:
    """Where each run's time went, per device model: its cells' wall time split into phases
    (bench/measure/phases.py: phase_split, as the runner's time summary)."""
    cells = runs.rows.drop_duplicates(["run_dir", "cell_id"])
    if cells["cell_wall_s"].isna().all():
        return "_No timing breakdown in these runs._"
    table = pd.DataFrame([{"run_dir": run_dir, "machine": machine, "cells": len(group),
                           **{f"{name}_s": seconds for name, seconds in phase_split(group).items()}}
                          for (run_dir, machine), group in cells.groupby(["run_dir", "machine"])])
    table["overhead per cell (s)"] = (table["wall_s"] - table["train_s"]) / table["cells"]
    return ("Seconds summed over each run's cells (train: the timed region; other: process start and reaping as the "
            "runner saw it).\n\n" + table.to_markdown(index=False, floatfmt=".1f"))


def write_report(run_dirs: list[Path], out: Path) -> Path:
    runs = load(run_dirs, out)  # the runs are read (and refused) before anything is written
    out.mkdir(parents=True, exist_ok=True)
    parts = ["# vitbench report", "", "Runs:", _environments(runs), "", answer(runs)]
    for title, figure in SECTIONS:
        parts.append(f"\n## {title}\n")
        try:
            parts.append(figure(runs))
        except Skip as why:
            parts.append(f"_Skipped: {why}._")
    parts += ["\n## Where the time went\n", time_table(runs),
              "\n## Failed, out-of-memory, timed-out, skipped and diverged cells, impossible values\n",
              failure_table(runs), capped_cells(runs) + repeated_cells(runs),
              "\n## All metrics\n", metrics_csv(runs, out)]
    runs.rows.drop(columns=["run_dir"]).to_csv(out / "results_combined.csv", index=False)
    report = out / "report.md"
    report.write_text("\n".join(parts) + "\n")
    return report


__all__ = ["write_report"]
