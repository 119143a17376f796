"""python -m bench report RUN_DIR [RUN_DIR ...]: report.md, opening with the answer (generated from the data),
then seaborn figures by study, short tables, and the full metrics as CSV beside it. Reads result files only.
Several run dirs (a CPU run and a GPU run) are facetted or sectioned by device."""

from __future__ import annotations

import json
from pathlib import Path

from . import figures
from .answer import answer
from .data import Runs, load
from .style import Skip

SECTIONS = [  # (title, figure function)
    ("Data efficiency", figures.data_efficiency),
    ("Transfer and self-supervised pretraining", figures.transfer),
    ("MAE gain over training from scratch", figures.mae_gain),
    ("MAE reconstructions", lambda runs: figures.artifacts(runs, "recon_loss", "MAE reconstruction")),
    ("Accuracy against training compute", figures.accuracy_vs_compute),
    ("Training curves", figures.training_curves),
    ("Scaling by model size", figures.scaling_by_size),
    ("Sequence length (patch size)", figures.patch_size),
    ("Image size", figures.image_size),
    ("Batch size", figures.batch_size),
    ("Paired comparisons", figures.paired_table),
    ("Accuracy against speed", figures.pareto),
    ("Attention kernels", figures.attention_kernels),
    ("Attention maps", lambda runs: figures.artifacts(runs, "checkpoint_accuracy", "attention rollout")),
]


def _environments(runs: Runs) -> str:
    lines = []
    for run_dir in runs.run_dirs:
        env_path = run_dir / "env.json"
        env = json.loads(env_path.read_text()) if env_path.exists() else {}
        lines.append(f"- `{run_dir}`: {env.get('device_name', '?')} ({env.get('device', '?')}), torch "
                     f"{env.get('torch', '?')}, timm {env.get('timm', '?')}, triton {env.get('triton', '?')}, code "
                     f"{str(env.get('code_version', '?'))[:12]}{' (uncommitted changes)' if env.get('git_dirty') else ''}")
    return "\n".join(lines)


def _fill_device_names(runs: Runs) -> None:
    """Rows written before the device_name column existed take it from their run's env.json."""
    runs.rows["device_name"] = runs.rows["device_name"].astype(object)
    for run_dir in runs.run_dirs:
        env_path = run_dir / "env.json"
        if env_path.exists():
            mine = (runs.rows["run_dir"] == str(run_dir)) & runs.rows["device_name"].isna()
            runs.rows.loc[mine, "device_name"] = json.loads(env_path.read_text()).get("device_name")


def failure_table(runs: Runs) -> str:
    bad = runs.rows[runs.rows["status"] != "ok"].drop_duplicates("cell_id")
    if bad.empty:
        return "_None: every cell finished ok._"
    cols = ["device", "label", "task", "batch_size", "img_size", "dtype", "attn_backend", "status", "error"]
    bad = bad[cols].astype(object).fillna("")
    bad["error"] = bad["error"].astype(str).str.slice(0, 140)
    return bad.to_markdown(index=False)


def metrics_csv(runs: Runs, out: Path) -> str:
    """Median, min, max over rows (seeds, or repeats' medians) of every metric: the full table, as CSV."""
    ok = runs.rows[runs.rows["status"] == "ok"].copy()
    keys = ["device", "label", "task", "attn_backend_used", "dtype", "batch_size", "img_size", "dataset",
            "train_size", "budget", "init", "attn_shape", "metric", "unit"]
    ok[keys] = ok[keys].astype(object).fillna("")
    table = ok.groupby(keys, sort=True)["value"].agg(median="median", min="min", max="max", n="count").reset_index()
    table.to_csv(out / "metrics.csv", index=False)
    return f"All {len(table)} metrics (median, min, max, count over rows): [metrics.csv](metrics.csv); every row of " \
           "every run: [results_combined.csv](results_combined.csv)."


def write_report(run_dirs: list[Path], out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    runs = load(run_dirs, out)
    _fill_device_names(runs)
    parts = ["# vitbench report", "", "Runs:", _environments(runs), "", answer(runs)]
    for title, figure in SECTIONS:
        parts.append(f"\n## {title}\n")
        try:
            parts.append(figure(runs))
        except Skip as why:
            parts.append(f"_Skipped: {why}._")
    parts += ["\n## Failed, out-of-memory, timed-out and skipped cells\n", failure_table(runs),
              "\n## All metrics\n", metrics_csv(runs, out)]
    runs.rows.drop(columns=["run_dir"]).to_csv(out / "results_combined.csv", index=False)
    report = out / "report.md"
    report.write_text("\n".join(parts) + "\n")
    return report


__all__ = ["write_report"]
