"""The report's figures. Each takes the loaded runs and returns markdown (images with a one-line caption each) or
raises Skip(reason); the tables beside them come from bench/report/tables.py. Throughput figures select cells by
their suite's study tag; accuracy figures never mix budget protocols (one figure per protocol) and mark points that
did not converge."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from ..results import METRICS
from ..spec import ENGINES

from .frame import (DEFAULT_BACKENDS, Runs, accuracy_summary, from_scratch_on_whole_datasets, in_study, ok_metric,
                   unpaired)
from .fits import accuracy, data_curves, frontier_curves
from .style import Skip, save, style_of
from .tables import crossover_statements, latency_percentiles, latency_table

PROTOCOL_TITLES = {"converged": "converged (until a validation plateau, best checkpoint)",
                   "fixed": "fixed (a set number of epochs)",
                   "compute-equal": "compute-equal (the same training budget for every model)"}


def _mark_not_converged(ax, points: pd.DataFrame, x: str, y: str) -> None:
    """Ring the converged-protocol points that reached their cap (other protocols stop by design)."""
    bad = points[(points["protocol"] == "converged") & ~points["converged"]]
    if not bad.empty:
        ax.scatter(bad[x], bad[y], marker="o", s=150, facecolors="none", edgecolors="black", linewidths=1.2,
                   zorder=5, label="not converged")


def _legend_outside(fig, ax) -> None:
    """The legend of `ax` to the right of the figure, where it hides no point."""
    handles, labels = ax.get_legend_handles_labels()
    if ax.get_legend():
        ax.get_legend().remove()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)


def _label_lone_points(ax, points: pd.DataFrame, x: str, y: str) -> None:
    """A panel with a single x value draws no lines: name its points."""
    if points[x].nunique() == 1:
        for _, r in points.iterrows():
            ax.annotate(r["label"], (r[x], r[y]), fontsize=8, xytext=(8, -3), textcoords="offset points")


# ------------------------------------------------------------------------------------------ accuracy


def data_efficiency(runs: Runs) -> str:
    summary = from_scratch_on_whole_datasets(accuracy_summary(runs.rows))
    if summary.empty:
        raise Skip("no from-scratch accuracy on a whole dataset (task train_eval; suites/data_efficiency.yaml)")
    parts = []
    for (protocol, machine), group in summary.groupby(["protocol", "machine"]):
        budgets = sorted(group["budget"].unique(), key=lambda b: group[group["budget"] == b]["subset"].nunique(),
                         reverse=True)
        fig, axes = plt.subplots(1, len(budgets), figsize=(6.4 * len(budgets), 4.4), squeeze=False)
        style = style_of(group)
        for ax, budget in zip(axes[0], budgets):
            points = group[group["budget"] == budget].sort_values("subset")
            sns.lineplot(data=points, x="subset", y="mean", ax=ax, **style, dashes=False, legend=ax is axes[0][0])
            for label, line in points.groupby("label"):
                ax.fill_between(line["subset"], line["low"], line["high"], alpha=0.15,
                                color=style["palette"][label])
            _mark_not_converged(ax, points, "subset", "mean")
            _label_lone_points(ax, points, "subset", "mean")
            for curve in (c for c in data_curves(runs) if (c.machine, c.group) == (machine, budget) and c.fit):
                _draw_fit(ax, curve, style["palette"][curve.label])
            ax.set(xscale="log", xlabel="training images (log; validation: a fixed 1,000 more)",
                   ylabel="test top-1 accuracy (%)", title=f"budget: {budget.label()}")
        _legend_outside(fig, axes[0][0])
        fig.suptitle(f"Data efficiency on {group['dataset'].iloc[0]}, {machine}: {PROTOCOL_TITLES[protocol]}")
        seeds = f"{int(group['seeds'].min())}-{int(group['seeds'].max())}"
        parts.append(save(fig, runs.out, f"data_efficiency_{protocol}_{machine}.png",
                          f"Lines: mean over {seeds} seeds, bands: 95 % t interval; ringed: did not converge "
                          "(reached its cap before a validation plateau). Thin lines: the fitted envelope law "
                          "learning curve (converged points only), solid over the measured range, dashed beyond it "
                          "(extrapolation), with its bootstrap band. Look for where the ViT lines reach or cross "
                          "the CNN's."))
    crossings = [f"- {s}" for s in crossover_statements(runs)]
    return "\n\n".join(parts) + "\n\n**Crossover.**\n\n" + "\n".join(crossings)


def _draw_fit(ax, curve, colour, factor: float = 100) -> None:
    """A fitted learning curve: solid over the measured range, dashed out to `factor` times its largest size."""
    for xs, dash in ((np.geomspace(curve.x_min, curve.x_max, 40), "-"),
                     (np.geomspace(curve.x_max, factor * curve.x_max, 40), "--")):
        predicted = [accuracy(e) for e in curve.fit.predict([(x,) for x in xs])]
        ax.plot(xs, [p.estimate for p in predicted], dash, color=colour, linewidth=1, alpha=0.9)
        ax.fill_between(xs, [p.low for p in predicted], [p.high for p in predicted], color=colour, alpha=0.08)


def backtest_figure(runs: Runs) -> str:
    """Each fitted curve's largest size predicted from the others, against what was measured there."""
    curves = [c for c in data_curves(runs) + frontier_curves(runs) if c.backtest is not None]
    if not curves:
        raise Skip("no learning curve with enough converged sizes for a back-test (a fit needs 4 sizes, a "
                   "back-test 5)")
    fig, axes = plt.subplots(1, len(curves), figsize=(4.2 * len(curves), 3.8), squeeze=False)
    for ax, curve in zip(axes[0], curves):
        sizes = sorted(curve.points)
        means = [100 * (1 - np.mean(curve.points[n])) for n in sizes]
        ax.plot(sizes, means, "o", color="black", label="measured (mean over seeds)")
        for held in curve.backtest.held_out:
            predicted = accuracy(held.predicted)
            ax.errorbar([held.coords[0]], [predicted.estimate], yerr=[[predicted.estimate - predicted.low],
                                                                      [predicted.high - predicted.estimate]],
                        fmt="s", color="tab:red", capsize=4, label="predicted without it")
        ax.set(xscale="log", title=f"{curve.label}: off by {curve.backtest.mean_abs_error * 100:.1f} points",
               xlabel="training FLOPs (log)" if curve.group == "frontier" else "training images (log)",
               ylabel="test top-1 accuracy (%)")
    axes[0][0].legend(fontsize=7, loc="lower right")
    fig.suptitle("Learning-curve back-test: the largest size predicted from the others (3 points off or less: "
                 "reliable)")
    return save(fig, runs.out, "backtest.png", "Black: measured means; red: the envelope law fitted without the "
                                               "largest size predicting its mean, with a 95 % prediction interval "
                                               "(the curve's uncertainty and one new cell's seed noise). A "
                                               "forecast is printed as an answer only when its curves pass this "
                                               "test.")


def latency(runs: Runs) -> str:
    """Median call time with whiskers to the 99th percentile, per engine, model and batch: percentiles of every
    call of the model's cells pooled (never an average of the cells' percentiles), with the cells' own medians."""
    table = latency_percentiles(runs)
    parts = []
    for machine, group in table.groupby("machine"):
        engines = sorted(group["engine"].unique(), key=list(ENGINES).index)
        fig, axes = plt.subplots(1, len(engines), figsize=(4.6 * len(engines), 4), squeeze=False, sharey=True)
        labels = sorted(group["label"].unique())
        for ax, engine in zip(axes[0], engines):
            mine = group[group["engine"] == engine]
            for i, (batch, points) in enumerate(mine.groupby("batch_size")):
                xs = [labels.index(label) + 0.15 * (i - 0.5) for label in points["label"]]
                ax.errorbar(xs, points["p50"], yerr=[np.zeros(len(points)), points["p99"] - points["p50"]],
                            fmt="o", capsize=3, label=f"batch {batch}")
            ax.set_xticks(range(len(labels)), labels, rotation=35, ha="right", fontsize=8)
            ax.set(yscale="log", title=engine, ylabel="time per call (ms, log): p50, whisker to p99")
        axes[0][0].legend(fontsize=8)
        fig.suptitle(f"Deployment latency on {machine}: one call at small batches, per engine")
        parts.append(save(fig, runs.out, f"latency_{machine}.png", "Points: median call time; whiskers: the 99th "
                                                                   "percentile, of every call of the model's cells "
                                                                   "pooled. Lower is better; compare models "
                                                                   "within a panel and engines across panels."))
        parts.append(latency_table(group))
    return "\n\n".join(parts)


def transfer(runs: Runs) -> str:
    summary = accuracy_summary(runs.rows, task=("train_eval", "finetune", "linear_probe"))
    targets = set(summary.loc[summary["task"].isin(["finetune", "linear_probe"]), "dataset"])
    summary = summary[summary["dataset"].isin(targets)]
    if summary.empty:
        raise Skip("no fine-tune or linear-probe cells (suites/pretraining.yaml)")
    parts = []
    for (protocol, machine, dataset), group in summary.groupby(["protocol", "machine", "dataset"]):
        group = group.assign(series=group["label"] + ", " + group["route_text"])
        fig, ax = plt.subplots(figsize=(8, 4.8))
        sns.lineplot(data=group.sort_values("subset"), x="subset", y="mean", hue="series", style="route_text",
                     markers=True, dashes=False, ax=ax)
        for _, line in group.groupby("series"):
            ax.fill_between(line["subset"], line["low"], line["high"], alpha=0.12)
        _mark_not_converged(ax, group, "subset", "mean")
        ax.set(xscale="log", xlabel=f"labeled training images of {dataset} (log)", ylabel="test top-1 accuracy (%)")
        ax.legend(fontsize=7, loc="lower right")
        ax.set_title(f"Transfer to {dataset}, {machine}, {PROTOCOL_TITLES[protocol]}", fontsize=10)
        parts.append(save(fig, runs.out, f"transfer_{protocol}_{machine}.png",
                          "Routes to a ViT with few labels: from scratch, fine-tuned from a masked autoencoder, "
                          "fine-tuned from supervised pretraining, and the ResNet from scratch; bands: seeds."))
    return "\n\n".join(parts)


def accuracy_vs_compute(runs: Runs) -> str:
    acc = ok_metric(runs.rows, "accuracy", task=["train_eval", "finetune", "linear_probe"])
    if acc.empty:
        raise Skip("no accuracy cells")
    costs = runs.rows[runs.rows["metric"].isin(["train_flops", "train_time"]) & (runs.rows["status"] == "ok")]
    if costs["metric"].nunique() < 2:
        raise Skip("the accuracy cells recorded no training FLOPs and time")
    costs = costs.pivot_table(index=["run_dir", "cell_id"], columns="metric", values="value", aggfunc="first")
    acc = acc.join(costs, on=["run_dir", "cell_id"]).assign(accuracy=lambda f: f["value"] * 100)
    parts = []
    for (protocol, machine), group in acc.groupby(["protocol", "machine"]):
        fig, axes = plt.subplots(1, 2, figsize=(12.5, 4.4))
        style = style_of(group)
        for ax, x, xlabel in ((axes[0], "train_flops", "training FLOPs (log)"),
                              (axes[1], "train_time", f"training time on {machine} (s, log)")):
            sns.scatterplot(data=group, x=x, y="accuracy", size="subset", sizes=(25, 160), ax=ax,
                            legend=ax is axes[0], **style)
            ax.set(xscale="log", xlabel=xlabel, ylabel="test top-1 accuracy (%)")
        fitted = frontier_curves(runs) if protocol == "converged" else []  # the frontier is fitted within one regime
        for curve in (c for c in fitted if c.machine == machine and c.fit):
            colour = "tab:blue" if curve.family == "vit" else "tab:orange"
            _draw_fit(axes[0], curve, colour, factor=10)
        axes[0].legend(fontsize=7, loc="lower right")
        fig.suptitle(f"Accuracy against training compute, {machine}: {PROTOCOL_TITLES[protocol]}")
        parts.append(save(fig, runs.out, f"accuracy_vs_compute_{protocol}_{machine}.png",
                          "As in the ViT paper's Figure 5: per cell, accuracy against what it cost to train "
                          "(marker size: training images); the upper-left points are the efficient ones. Lines: each "
                          "family's compute frontier fitted (blue ViT, orange CNN; dashed beyond the measured "
                          "range)."))
    return "\n\n".join(parts)


def training_curves(runs: Runs) -> str:
    curves = runs.curves
    if curves.empty:
        raise Skip("no training curves (curves/*.json of accuracy cells)")
    parts = []
    supervised = curves[curves["task"] != "pretrain_mae"]
    for (protocol, machine), group in supervised.groupby(["protocol", "machine"]):
        sizes = sorted(group["subset"].dropna().unique())
        for x, xlabel, name in (("epoch", "epochs", "epochs"), ("images_seen", "images seen (log)", "images")):
            fig, axes = plt.subplots(2, len(sizes), figsize=(3.4 * len(sizes), 6), squeeze=False, sharex="col")
            for col, size in enumerate(sizes):
                points = group[group["subset"] == size]
                for row, (metric, ylabel) in enumerate((("train_loss", "training loss"),
                                                        ("val_accuracy", "validation accuracy"))):
                    ax = axes[row][col]
                    sns.lineplot(data=points, x=x, y=metric, units="curve", estimator=None, ax=ax,
                                 legend=row == 0 and col == 0, **{**style_of(points), "style": "route_text",
                                                                  "markers": False, "style_order": None})
                    ax.set(xlabel=xlabel if row else "", ylabel=ylabel if col == 0 else "",
                           xscale="log" if x == "images_seen" else "linear")
                    if row == 0:
                        ax.set_title(f"{int(size):,} images", fontsize=10)
            if axes[0][0].get_legend():
                axes[0][0].legend(fontsize=6)
            fig.suptitle(f"Training curves against {xlabel.split(' (')[0]}, {machine}: {PROTOCOL_TITLES[protocol]}")
            parts.append(save(fig, runs.out, f"curves_{protocol}_{machine}_{name}.png",
                              "One line per cell (seed); a flat validation curve at the end means the budget "
                              "sufficed, a still-rising one that it did not."))
    mae = curves[curves["task"] == "pretrain_mae"]
    if not mae.empty:
        fig, ax = plt.subplots(figsize=(6.5, 4))
        sns.lineplot(data=mae.melt(id_vars=["images_seen", "curve", "label"], value_vars=["train_loss",
                                                                                             "recon_loss"]),
                     x="images_seen", y="value", hue="variable", units="curve", estimator=None, ax=ax)
        ax.set(xscale="log", xlabel="images seen (log)", ylabel="reconstruction loss (masked patches, MSE)")
        fig.suptitle("MAE pretraining: training and held-out reconstruction loss")
        parts.append(save(fig, runs.out, "curves_mae.png", "Held-out loss: the same masks on 2% of the unlabeled "
                                                           "images, never trained on."))
    return "\n\n".join(parts)


# ------------------------------------------------------------------------------------------ throughput


def _throughput(runs: Runs, study: str, metrics=("throughput",)) -> pd.DataFrame:
    rows = unpaired(runs.rows[runs.rows["task"].isin(["infer", "train"]) & (runs.rows["status"] == "ok")])
    rows = in_study(rows[rows["metric"].isin(metrics)], study)
    rows = rows[rows["attn_backend_used"].isin(DEFAULT_BACKENDS)]
    if rows.empty:
        raise Skip(f"no throughput cells tagged study: {study} (suites/scaling.yaml)")
    return rows


def _settings(frame: pd.DataFrame) -> str:
    parts = []
    for (machine, task), g in frame.groupby(["machine", "task"]):
        batches = ", ".join(map(str, sorted(g["batch_size"].unique())))
        sizes = ", ".join(map(str, sorted(g["img_size"].unique())))
        parts.append(f"{machine} {task}: batch {batches}, {sizes} px, {', '.join(sorted(g['dtype'].unique()))}")
    return "; ".join(parts)


def scaling_by_size(runs: Runs) -> str:
    thr = _throughput(runs, "scaling-by-size")
    names = []
    for x, xlabel, name in (("params", "parameters (log)", "throughput_vs_params.png"),
                            ("gflops", "forward GFLOPs per image (log)", "throughput_vs_gflops.png")):
        grid = sns.relplot(data=thr, x=x, y="value", col="task", row="machine" if thr["machine"].nunique() > 1
                           else None, s=70, height=4, aspect=1.2, facet_kws={"sharey": False}, **style_of(thr))
        grid.set(xscale="log", yscale="log")
        for (row, col, _), sub in grid.facet_data():
            for _, r in sub.iterrows():
                grid.axes[row, col].annotate(r["label"].replace("vit:", ""), (r[x], r["value"]), fontsize=7,
                                             alpha=0.8, xytext=(3, 3), textcoords="offset points")
        grid.set_axis_labels(xlabel, "throughput (images/s, log)")
        grid.figure.suptitle(f"Throughput against model size ({_settings(thr)})", y=1.03)
        names.append(save(grid.figure, runs.out, name, "Points right of and below a line through the CNNs cost "
                                                        "more per image than their size predicts."))
    return "\n\n".join(names)


def patch_size(runs: Runs) -> str:
    vits = _throughput(runs, "patch-size", ("throughput", "peak_memory"))
    vits = vits[vits["patch"].notna()].assign(tokens=lambda f: (f["img_size"] // f["patch"]) ** 2 + 1)
    if vits["tokens"].nunique() < 2:
        raise Skip("the patch-size study needs a ViT at two or more sequence lengths")
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for ax, metric, ylabel in ((axes[0], "throughput", "throughput (images/s, log)"),
                               (axes[1], "peak_memory", "peak step memory (MiB, log)")):
        sub = vits[vits["metric"] == metric]
        sns.lineplot(data=sub, x="tokens", y="value", hue="machine", style="task", markers=True, ax=ax,
                     estimator="median", errorbar=None)
        ax.set(xscale="log", yscale="log", xlabel="sequence length N = (image/patch)^2 + 1 (log)", ylabel=ylabel)
    fig.suptitle(f"Native ViT: the cost of the sequence length ({_settings(vits)})")
    return save(fig, runs.out, "sequence_length.png", "A slope steeper than 1 on throughput means attention's N^2 "
                                                      "has started to dominate.")


def image_size(runs: Runs) -> str:
    thr = _throughput(runs, "image-size")
    thr = thr[thr.groupby(["label", "task", "machine"])["img_size"].transform("nunique") > 1]
    if thr.empty:
        raise Skip("the image-size study needs a model at two or more image sizes")
    grid = sns.relplot(data=thr, x="img_size", y="value", kind="line", estimator="median", errorbar=None,
                       col="task", height=4, aspect=1.3, **{**style_of(thr), "style": "machine", "markers": True,
                                                            "style_order": None}, facet_kws={"sharey": False})
    grid.set(yscale="log", xlabel="image size (px)", ylabel="throughput (images/s, log)")
    grid.figure.suptitle(f"Throughput against image size ({_settings(thr)})", y=1.03)
    return save(grid.figure, runs.out, "image_size.png", "The ViT's cost grows with the square of the tokens, the "
                                                         "CNN's with the pixels.")


def batch_size(runs: Runs) -> str:
    mem = _throughput(runs, "batch-size", ("peak_memory", "throughput"))
    mem = mem[mem.groupby(["label", "task", "machine", "metric"])["batch_size"].transform("nunique") > 1]
    if mem.empty:
        raise Skip("the batch-size study needs a model at two or more batch sizes")
    grid = sns.relplot(data=mem, x="batch_size", y="value", col="metric", kind="line", height=4, aspect=1.3,
                       facet_kws={"sharey": False}, **{**style_of(mem), "style": "machine", "markers": True,
                                                       "style_order": None})
    grid.set(xscale="log", yscale="log", xlabel="batch size (log)")
    grid.axes.flat[0].set_ylabel("value (MiB or images/s, log)")
    grid.figure.suptitle(f"Peak step memory and throughput against batch size ({_settings(mem)})", y=1.03)
    return save(grid.figure, runs.out, "batch_size.png", "Memory should grow linearly with the batch; throughput "
                                                         "stops growing once the device is busy.")


def pareto(runs: Runs) -> str:
    """Per device model: accuracy at the largest size against inference throughput (the budget with most models)."""
    summary = from_scratch_on_whole_datasets(accuracy_summary(runs.rows))
    thr = unpaired(ok_metric(runs.rows, "throughput", task="infer"))
    speed = thr[thr["attn_backend_used"].isin(DEFAULT_BACKENDS)].groupby(["machine", "label"], as_index=False)["value"]
    parts = []
    for machine, mine in summary.groupby("machine"):
        largest = mine[mine["subset"] == mine.groupby(["protocol", "budget"])["subset"].transform("max")]
        if largest.empty:  # no protocol recorded: nothing to choose a budget by
            continue
        protocol, budget = largest.groupby(["protocol", "budget"])["label"].nunique().idxmax()
        acc = largest[(largest["protocol"] == protocol) & (largest["budget"] == budget)]
        both = acc.merge(speed.max(), on=["machine", "label"]).sort_values("value", ascending=False)
        if both.empty:
            continue
        both["front"] = both["mean"] >= both["mean"].cummax()
        fig, ax = plt.subplots(figsize=(7, 4.5))
        sns.scatterplot(data=both, x="value", y="mean", s=90, ax=ax, **style_of(both))
        front = both[both["front"]]
        ax.plot(front["value"], front["mean"], "--", color="grey", label="Pareto front")
        for _, r in both.iterrows():
            ax.annotate(r["label"], (r["value"], r["mean"]), fontsize=8, xytext=(4, 2), textcoords="offset points")
        ax.set(xscale="log", xlabel="inference throughput (images/s, log; scaling suite, largest batch measured)",
               ylabel=f"test accuracy (%) at {int(acc['subset'].max()):,} images")
        ax.legend(fontsize=7)
        ax.set_title(f"Accuracy against speed, {machine}: {protocol}, {budget.label()}", fontsize=10)
        parts.append(save(fig, runs.out, f"pareto_{machine}.png", "Models on the dashed front are the ones to choose "
                                                                   "from: none is both faster and more accurate."))
    if not parts:
        raise Skip("needs accuracy (data_efficiency) and inference throughput (scaling) of a model on one device")
    return "\n\n".join(parts)


def attention_kernels(runs: Runs) -> str:
    att = runs.rows[(runs.rows["task"] == "attention") & (runs.rows["status"] == "ok")].copy()
    if att.empty:
        raise Skip("no attention-kernel cells (suites/attention.yaml)")
    att["shape"] = ["x".join(map(str, shape)) for shape in att["attn_shape"]]
    order = ["x".join(map(str, s)) for s in sorted(set(att["attn_shape"]), key=lambda s: (s[2], s))]
    parts = []
    for kind, passes in (("time", {"fwd_time": "forward", "fwd_bwd_time": "forward+backward"}),
                         ("tflops", {"fwd_tflops": "forward", "fwd_bwd_tflops": "forward+backward"})):
        unit = METRICS[next(iter(passes))].unit
        sub = att[att["metric"].isin(list(passes))].copy()
        sub["pass"] = sub["metric"].map(passes)
        sub["series"] = sub["attn_backend"] + " " + sub["dtype"]
        grid = sns.catplot(data=sub, x="shape", y="value", hue="series", col="pass", order=order,
                           row="machine" if sub["machine"].nunique() > 1 else None, kind="point",
                           estimator="median", errorbar=None, height=4.2, aspect=1.3, sharey=False)
        if kind == "time":
            grid.set(yscale="log")
        for ax in grid.axes.flat:
            ax.tick_params(axis="x", labelrotation=35)
        grid.set_axis_labels("shape batch x heads x N x head dim (ordered by N)",
                             f"{'time per call' if kind == 'time' else 'achieved'} ({unit})")
        grid.figure.suptitle(f"Attention kernels: {'time per call' if kind == 'time' else 'achieved TFLOP/s'}",
                             y=1.03)
        parts.append(save(grid.figure, runs.out, f"attention_{kind}.png",
                          "Lower time (higher TFLOP/s) is better; compare backends within one shape."))
    return "\n\n".join(parts)
