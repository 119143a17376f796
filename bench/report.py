"""python -m bench report RUN_DIR [RUN_DIR ...]: report.md with seaborn figures and markdown tables.

Every figure is a function of the tidy results (pandas) that returns a caption or raises Skip(reason); a
skipped figure leaves a line in the report saying why. Several run dirs (a CPU run and a GPU run) are
facetted by device.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from .results import read_results  # noqa: E402

sns.set_theme(style="whitegrid", context="notebook")
HUE_ORDER = ["vit", "cnn"]
DEFAULT_BACKENDS = ["sdpa", "triton", "none"]  # a model's usual attention ("none": CNNs); math is a comparison


class Skip(Exception):
    """A figure that cannot be drawn from these results; the message says why."""


# ------------------------------------------------------------------------------------------ loading


def load_runs(run_dirs: list[Path]) -> pd.DataFrame:
    frames = []
    for run_dir in run_dirs:
        frame = read_results(run_dir / "results.csv")
        frame["run_dir"] = str(run_dir)
        frames.append(frame)
    data = pd.concat(frames, ignore_index=True)
    data["device"] = data["device"].fillna("?")
    data["label"] = data["model"]  # specs name the implementation already (vit:, timm:, timm-vit:)
    data["subset"] = data["train_size_used"] + data["val_size"]  # training images the cell drew (train + val)
    return data


def unpaired(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows of ordinary cells; paired cells (compare_to) feed the ratio table, not the figures."""
    return frame[frame["compare_to"].isna()]


def ok_metric(data: pd.DataFrame, metric: str, **where) -> pd.DataFrame:
    rows = data[(data["status"] == "ok") & (data["metric"] == metric)]
    for column, value in where.items():
        rows = rows[rows[column].isin(value if isinstance(value, (list, tuple, set)) else [value])]
    return rows.copy()


def _short_number(value: float) -> str:
    """1500000 -> '1.5M', 20000 -> '20k', 0.05 -> '0.05'."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:g}{suffix}"
    return f"{value:g}"


def _save(fig, out: Path, name: str) -> str:
    for ax in fig.axes:  # plain numbers on log axes, no crowded minor-tick labels
        for axis, scale in ((ax.xaxis, ax.get_xscale()), (ax.yaxis, ax.get_yscale())):
            if scale == "log":
                axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
                axis.set_major_formatter(FuncFormatter(lambda v, _: _short_number(v)))
                axis.set_minor_formatter(NullFormatter())
    fig.savefig(out / name, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return name


def _facet_kwargs(data: pd.DataFrame) -> dict:
    return {"col": "device"} if data["device"].nunique() > 1 else {}


# ---------------------------------------------------------------------------------- data efficiency


def _from_scratch_curves(data: pd.DataFrame) -> pd.DataFrame:
    acc = ok_metric(data, "accuracy", task="train_eval")
    if acc.empty:
        raise Skip("no accuracy rows from task train_eval (run suites/data_efficiency.yaml)")
    full = acc[~acc["dataset"].str.contains(":", na=False)]  # all classes; class ranges are the transfer study
    if full.empty:
        raise Skip("no from-scratch accuracy on a full dataset")
    return full


def fig_data_efficiency(data: pd.DataFrame, out: Path) -> str:
    acc = _from_scratch_curves(data)
    acc = acc.assign(accuracy=acc["value"] * 100)
    grid = sns.relplot(data=acc, x="subset", y="accuracy", hue="label", style="family", kind="line",
                       markers=True, dashes=False, errorbar=("pi", 100), height=4.2, aspect=1.4,
                       **_facet_kwargs(acc))
    grid.set(xscale="log", xlabel="training images (log scale)", ylabel="test top-1 accuracy (%)")
    grid.figure.suptitle("Data efficiency: accuracy vs training-set size (band: min-max over seeds)", y=1.03)
    name = _save(grid.figure, out, "data_efficiency.png")
    seeds = acc.groupby(["label", "subset"])["seed"].nunique().min()
    return f"![data efficiency]({name})\n\nLines: mean over {seeds}+ seeds per point; bands: min to max over seeds."


def crossover_statement(data: pd.DataFrame) -> str:
    """Where the best ViT and the best CNN (means over seeds) swap the lead, by log-linear interpolation."""
    acc = _from_scratch_curves(data)
    lines = []
    for (device, dataset), group in acc.groupby(["device", "dataset"]):
        means = group.groupby(["family", "label", "subset"])["value"].mean().reset_index()
        best = means.groupby(["family", "subset"])["value"].max().unstack("family")
        if not {"vit", "cnn"} <= set(best.columns):
            lines.append(f"- {dataset} on {device}: only one family measured; no crossover to estimate.")
            continue
        gap = (best["vit"] - best["cnn"]).dropna().sort_index()
        leader = lambda g: "ViT" if g > 0 else "CNN"  # noqa: E731
        table = ", ".join(f"{int(n)}: {leader(g)} by {abs(g) * 100:.1f} pts" for n, g in gap.items())
        crossings = [(a, b) for a, b in zip(gap.index[:-1], gap.index[1:]) if np.sign(gap[a]) != np.sign(gap[b])]
        if not crossings:
            lines.append(f"- {dataset} on {device}: no crossover in the measured range "
                         f"({int(gap.index.min())}-{int(gap.index.max())} images); {leader(gap.iloc[-1])} leads "
                         f"throughout. Lead per size: {table}.")
            continue
        for a, b in crossings:
            t = gap[a] / (gap[a] - gap[b])  # zero of the gap, linear in log(size)
            estimate = math.exp(math.log(a) + t * (math.log(b) - math.log(a)))
            lines.append(f"- {dataset} on {device}: {leader(gap[b])} overtakes {leader(gap[a])} between {int(a)} "
                         f"and {int(b)} images (estimated crossover ~{estimate:,.0f}). Lead per size: {table}.")
    return "\n".join(lines)


def fig_transfer(data: pd.DataFrame, out: Path) -> str:
    acc = ok_metric(data, "accuracy", task=["finetune", "train_eval"])
    targets = set(ok_metric(data, "accuracy", task="finetune")["dataset"])
    if not targets:
        raise Skip("no fine-tune cells (task finetune)")
    acc = acc[acc["dataset"].isin(targets)]
    acc = acc.assign(accuracy=acc["value"] * 100,
                     start=np.where(acc["task"] == "finetune", "pretrained, fine-tuned", "from scratch"))
    grid = sns.relplot(data=acc, x="subset", y="accuracy", hue="label", style="start", kind="line",
                       markers=True, errorbar=("pi", 100), height=4.2, aspect=1.4, **_facet_kwargs(acc))
    grid.set(xscale="log", xlabel="training images of the target classes (log scale)",
             ylabel="test top-1 accuracy (%)")
    grid.figure.suptitle(f"Pretrain -> fine-tune vs from scratch on {', '.join(sorted(targets))}", y=1.03)
    return f"![transfer]({_save(grid.figure, out, 'transfer.png')})"


# --------------------------------------------------------------------------------------- scalability


def _throughput(data: pd.DataFrame) -> pd.DataFrame:
    thr = unpaired(ok_metric(data, "throughput", task=["infer", "train"]))
    if thr.empty:
        raise Skip("no throughput rows (run suites/scaling.yaml)")
    return thr


def _like_for_like(frame: pd.DataFrame, same_image_size: bool = False) -> pd.DataFrame:
    """Per device and task, the default attention backends at the most common batch size (and, with
    same_image_size, the most common image size): like against like."""
    frame = frame[frame["attn_backend_used"].isin(DEFAULT_BACKENDS)]
    keep = []
    for _, group in frame.groupby(["device", "task"]):
        if same_image_size:
            group = group[group["img_size"] == group["img_size"].mode()[0]]
        keep.append(group[group["batch_size"] == group["batch_size"].mode()[0]])
    if not keep:
        raise Skip(f"no throughput rows with a default attention backend ({', '.join(DEFAULT_BACKENDS)})")
    return pd.concat(keep)


def fig_throughput_vs_size(data: pd.DataFrame, out: Path) -> str:
    thr = _like_for_like(_throughput(data), same_image_size=True)
    names = []
    for x, xlabel, fname in (("params", "parameters (log scale)", "throughput_vs_params.png"),
                             ("gflops", "GFLOPs per image, forward (log scale)", "throughput_vs_gflops.png")):
        grid = sns.relplot(data=thr, x=x, y="value", hue="family", hue_order=HUE_ORDER, style="impl", col="task",
                           row="device" if thr["device"].nunique() > 1 else None, s=70, height=4, aspect=1.2,
                           facet_kws={"sharey": False})
        grid.set(xscale="log", yscale="log")
        for (row, col, _), sub in grid.facet_data():
            for _, r in sub.iterrows():
                grid.axes[row, col].annotate(r["label"].replace("vit:", ""), (r[x], r["value"]), fontsize=7,
                                             alpha=0.8, xytext=(3, 3), textcoords="offset points")
        grid.set_axis_labels(xlabel, "throughput (images/s, log scale)")
        settings = ", ".join(f"{t}: batch {int(g['batch_size'].iloc[0])} at {int(g['img_size'].iloc[0])} px"
                             for t, g in thr.groupby("task"))
        grid.figure.suptitle(f"Throughput vs {x} ({settings})", y=1.03)
        names.append(_save(grid.figure, out, fname))
    return "\n\n".join(f"![{n}]({n})" for n in names)


def _native_vits(thr: pd.DataFrame) -> pd.DataFrame:
    vits = thr[(thr["family"] == "vit") & thr["patch"].notna()].copy()
    vits["tokens"] = (vits["img_size"] // vits["patch"]) ** 2 + 1
    vits["width"] = vits["variant"].astype(str).str.split("/").str[0]
    return vits


def fig_sequence_length(data: pd.DataFrame, out: Path) -> str:
    thr = _throughput(data)
    mem = unpaired(ok_metric(data, "peak_memory", task=["infer", "train"]))
    vits = _native_vits(_like_for_like(pd.concat([thr, mem])))
    vits = vits[vits["impl"] == "native"]
    lengths = vits.groupby(["width", "device"])["tokens"].transform("nunique")
    vits = vits[lengths > 1]
    if vits.empty:
        raise Skip("no ViT measured at two or more sequence lengths")
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for ax, metric, ylabel in ((axes[0], "throughput", "throughput (images/s, log)"),
                               (axes[1], "peak_memory", "peak step memory (MiB, log)")):
        sub = vits[vits["metric"] == metric]
        sns.lineplot(data=sub, x="tokens", y="value", hue="width", style="task", markers=True, ax=ax,
                     estimator="median", errorbar=None)
        ax.set(xscale="log", yscale="log", xlabel="sequence length N = (img/patch)^2 + 1 (log)", ylabel=ylabel)
    fig.suptitle("Native ViT: cost of the sequence length (smaller patches or larger images)")
    return f"![patch size]({_save(fig, out, 'sequence_length.png')})"


def fig_image_size(data: pd.DataFrame, out: Path) -> str:
    thr = _like_for_like(_throughput(data))
    multi = thr.groupby("model")["img_size"].nunique()
    thr = thr[thr["model"].isin(multi[multi > 1].index)]
    if thr.empty:
        raise Skip("no model measured at two or more image sizes")
    grid = sns.relplot(data=thr, x="img_size", y="value", hue="label", style="task", kind="line", markers=True,
                       estimator="median", errorbar=None, height=4, aspect=1.4, **_facet_kwargs(thr))
    grid.set(yscale="log", xlabel="image size (px)", ylabel="throughput (images/s, log)")
    grid.figure.suptitle(f"Throughput vs image size (batch {', '.join(map(str, sorted(thr['batch_size'].unique())))})",
                         y=1.03)
    return f"![image size]({_save(grid.figure, out, 'image_size.png')})"


def fig_memory_vs_batch(data: pd.DataFrame, out: Path) -> str:
    mem = ok_metric(data, "peak_memory", task=["infer", "train"])
    counts = mem.groupby(["label", "task", "img_size", "attn_backend_used"])["batch_size"].nunique()
    keep = counts[counts > 1].reset_index()[["label", "task", "img_size", "attn_backend_used"]]
    mem = mem.merge(keep)
    if mem.empty:
        raise Skip("no model measured at two or more batch sizes")
    grid = sns.relplot(data=mem, x="batch_size", y="value", hue="label", style="task", kind="line", markers=True,
                       height=4, aspect=1.4, **_facet_kwargs(mem))
    grid.set(xscale="log", yscale="log", xlabel="batch size (log)", ylabel="peak step memory (MiB, log)")
    grid.figure.suptitle("Memory vs batch size", y=1.03)
    return f"![memory vs batch]({_save(grid.figure, out, 'memory_vs_batch.png')})"


def fig_pareto(data: pd.DataFrame, out: Path) -> str:
    acc = _from_scratch_curves(data)
    best = acc[acc["subset"] == acc.groupby("model")["subset"].transform("max")]
    best = best.groupby(["model", "img_size", "device"], as_index=False)["value"].mean()
    thr = unpaired(ok_metric(data, "throughput", task="infer"))
    thr = thr[thr["attn_backend_used"].isin(DEFAULT_BACKENDS)]
    thr = thr.groupby(["model", "img_size", "device", "family"], as_index=False)["value"].max()
    both = best.merge(thr, on=["model", "img_size", "device"], suffixes=("_acc", "_thr"))
    if both.empty:
        raise Skip("no model has both an accuracy and an inference throughput at the same image size and device "
                   "(give a scaling run and a data-efficiency run from the same device)")
    both["accuracy"] = both["value_acc"] * 100
    both = both.sort_values("value_thr", ascending=False)
    both["pareto"] = both["accuracy"] >= both["accuracy"].cummax()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    sns.scatterplot(data=both, x="value_thr", y="accuracy", hue="family", hue_order=HUE_ORDER, s=80, ax=ax)
    front = both[both["pareto"]]
    ax.plot(front["value_thr"], front["accuracy"], "--", color="grey", label="Pareto front")
    for _, r in both.iterrows():
        ax.annotate(r["model"], (r["value_thr"], r["accuracy"]), fontsize=8, xytext=(4, 2), textcoords="offset points")
    ax.set(xscale="log", xlabel="inference throughput (images/s, log)", ylabel="test accuracy (%), largest train size")
    ax.legend()
    ax.set_title("Accuracy vs throughput")
    return f"![pareto]({_save(fig, out, 'pareto.png')})"


# ----------------------------------------------------------------------------------------- attention


def fig_attention(data: pd.DataFrame, out: Path) -> str:
    att = data[(data["task"] == "attention") & (data["status"] == "ok")].copy()
    if att.empty:
        raise Skip("no attention-kernel rows (run suites/attention.yaml)")
    dims = att["attn_shape"].str.split("x", expand=True).astype(int)  # B, H, N, D
    att["backend"] = att["attn_backend"]
    order = sorted(att["attn_shape"].unique(), key=lambda s: (int(s.split("x")[2]), s))  # by sequence length
    names = []
    for kind, unit in (("time", "ms"), ("tflops", "TFLOP/s")):
        sub = att[att["metric"].isin([f"fwd_{kind}", f"fwd_bwd_{kind}"])].copy()
        sub["pass"] = sub["metric"].map({f"fwd_{kind}": "forward", f"fwd_bwd_{kind}": "forward+backward"})
        sub["series"] = sub["backend"] + " " + sub["dtype"]
        grid = sns.catplot(data=sub, x="attn_shape", y="value", hue="series", col="pass", order=order,
                           row="device" if sub["device"].nunique() > 1 else None, kind="point",
                           estimator="median", errorbar=None, height=4.2, aspect=1.3, sharey=False,
                           markers="o", linestyles="-")
        if kind == "time":
            grid.set(yscale="log")
        for ax in grid.axes.flat:
            ax.tick_params(axis="x", labelrotation=35)
        grid.set_axis_labels("shape batch x heads x N x head dim (ordered by N)",
                             f"{'time per call' if kind == 'time' else 'achieved'} ({unit})")
        grid.figure.suptitle(f"Attention kernels: {'time per call' if kind == 'time' else 'achieved TFLOP/s'} "
                             f"at ViT shapes (N = {', '.join(map(str, sorted(dims[2].unique())))})", y=1.03)
        names.append(_save(grid.figure, out, f"attention_{kind}.png"))
    return "\n\n".join(f"![{n}]({n})" for n in names)


# ------------------------------------------------------------------------------------ attention maps


def fig_attention_rollout(data: pd.DataFrame, out: Path) -> str:
    """The figure a rollout cell wrote (the report never loads a model)."""
    cells = ok_metric(data, "checkpoint_accuracy", task="rollout")
    if cells.empty:
        raise Skip("no rollout cell (task rollout, after a pretrain cell of a native ViT)")
    parts = []
    for _, r in cells.iterrows():
        source = Path(r["run_dir"]) / r["artifact"]
        if not source.is_file():
            raise Skip(f"the rollout figure {source} is missing")
        name = f"attention_rollout_{r['cell_id']}.png"
        shutil.copyfile(source, out / name)
        parts.append(f"![attention rollout]({name})\n\n{r['model']} trained on {r['dataset']} "
                     f"(checkpoint test accuracy {r['value'] * 100:.1f}%).")
    return "\n\n".join(parts)


# -------------------------------------------------------------------------------------------- tables


def metric_table(data: pd.DataFrame) -> str:
    ok = data[data["status"] == "ok"].copy()
    if ok.empty:
        return "_no successful cells_"
    keys = ["device", "label", "task", "attn_backend_used", "dtype", "batch_size", "img_size", "dataset", "train_size",
            "attn_shape", "metric", "unit"]
    ok[keys] = ok[keys].astype(object).fillna("")
    table = ok.groupby(keys, sort=True)["value"].agg(median="median", min="min", max="max", n="count").reset_index()
    table = table.rename(columns={"label": "model"})
    return table.to_markdown(index=False, floatfmt=".4g")


def failure_table(data: pd.DataFrame) -> str:
    bad = data[~data["status"].isin(["ok"])].drop_duplicates("cell_id")
    if bad.empty:
        return "_none: every cell finished ok_"
    cols = ["device", "label", "task", "batch_size", "img_size", "dtype", "attn_backend", "attn_shape", "status",
            "error"]
    bad = bad[cols].astype(object).fillna("").rename(columns={"label": "model"})
    bad["error"] = bad["error"].astype(str).str.slice(0, 160)
    return bad.to_markdown(index=False)


def settings_statement(data: pd.DataFrame) -> str:
    envs = []
    for run_dir in data["run_dir"].unique():
        env_path = Path(run_dir) / "env.json"
        if env_path.exists():
            env = json.loads(env_path.read_text())
            envs.append(f"- `{run_dir}`: {env.get('device_name')} ({env.get('device')}), torch {env.get('torch')}, "
                        f"timm {env.get('timm')}, triton {env.get('triton')}, git {str(env.get('git_sha'))[:10]}"
                        f"{' (dirty)' if env.get('git_dirty') else ''}")
    cl = data.loc[data["channels_last"].astype(str) == "True", "label"].unique()
    envs.append("- ResNets on CUDA run channels_last; every model in a cell runs at the cell's dtype (autocast). "
                f"Channels-last models here: {', '.join(cl) if len(cl) else 'none (CPU runs)'}.")
    return "\n".join(envs)


# --------------------------------------------------------------------------------------------- report


FIGURES: list[tuple[str, Callable]] = [
    ("Data efficiency", fig_data_efficiency),
    ("Pretrain -> fine-tune vs from scratch", fig_transfer),
    ("Throughput vs model size", fig_throughput_vs_size),
    ("Sequence length (patch size)", fig_sequence_length),
    ("Image size", fig_image_size),
    ("Memory vs batch size", fig_memory_vs_batch),
    ("Accuracy vs throughput", fig_pareto),
    ("Attention kernels", fig_attention),
]


def write_report(run_dirs: list[Path], out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    data = load_runs(run_dirs)
    parts = [f"# vitbench report\n\nRuns: {', '.join(f'`{d}`' for d in run_dirs)}\n", settings_statement(data)]
    for title, figure in FIGURES:
        parts.append(f"\n## {title}\n")
        try:
            parts.append(figure(data, out))
        except Skip as why:
            parts.append(f"_Skipped: {why}._")
        if figure is fig_data_efficiency:
            try:
                parts.append("\n**Crossover.**\n\n" + crossover_statement(data))
            except Skip:
                pass
    parts.append("\n## Attention maps\n")
    try:
        parts.append(fig_attention_rollout(data, out))
    except Skip as why:
        parts.append(f"_Skipped: {why}._")
    parts += ["\n## Failed, out-of-memory, timed-out and skipped cells\n", failure_table(data),
              "\n## All metrics (median, min, max over rows: seeds or repeats' medians)\n", metric_table(data)]
    data.drop(columns=["run_dir"]).to_csv(out / "results_combined.csv", index=False)
    report = out / "report.md"
    report.write_text("\n".join(parts) + "\n")
    return report
