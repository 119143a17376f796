"""The report's first section: the answer to "ViT or ResNet, which size and patch, for my data and hardware?",
generated from the results, each number with a link to the figure or table it comes from and the caveats that
apply to it (not converged, a single seed, a noisy timing)."""

from __future__ import annotations

import pandas as pd

from .data import (DEFAULT_BACKENDS, Runs, accuracy_summary, budget_label, from_scratch_on_whole_datasets, ok_metric,
                   unpaired)
from .figures import crossover_statements

THRESHOLDS = (80.0, 85.0, 90.0)  # "the fastest model at or above X% test accuracy"


def _acc(point: pd.Series, named: bool = True) -> str:
    """'`resnet9` 91.2 ± 0.3 % (2 seeds)' with caveats; without the name if not `named`."""
    spread = (point["high"] - point["low"]) / 2
    seeds = int(point["seeds"])
    caveats = ([] if point["converged"] else ["not converged"]) + (["1 seed"] if seeds == 1 else [])
    text = (f"`{point['label']}` " if named else "") + f"{point['mean']:.1f}" + (f" ± {spread:.1f}" if seeds > 1 else "") + " %"
    return text + (f" ({', '.join(caveats)})" if caveats else f" ({seeds} seeds)")


def accuracy_answer(runs: Runs, device: str) -> list[str]:
    summary = from_scratch_on_whole_datasets(accuracy_summary(runs.rows))
    summary = summary[summary["device"] == device]
    lines = []
    for (dataset, protocol), group in summary.groupby(["dataset", "protocol"]):
        figure = f"data_efficiency_{protocol}_{device}.png"
        lines += [f"**Accuracy on {dataset}, {protocol} protocol** ([figure]({figure})):", "",
                  "| training images | budget | best ViT | best CNN | ViT - CNN (points) |", "|---|---|---|---|---|"]
        for (budget, subset), point in group.groupby(["budget", "subset"]):
            best = {f: point[point["family"] == f].sort_values("mean").iloc[-1] for f in ("vit", "cnn")
                    if (point["family"] == f).any()}
            margin = f"{best['vit']['mean'] - best['cnn']['mean']:+.1f}" if len(best) == 2 else "n/a"
            lines.append(f"| {int(subset):,} | {budget_label(budget)} | {_acc(best['vit']) if 'vit' in best else '-'}"
                         f" | {_acc(best['cnn']) if 'cnn' in best else '-'} | {margin} |")
        lines.append("")
    crossings = [s for s in crossover_statements(runs) if f" on {device}," in s]
    if crossings:
        lines += ["**Crossover** ([data efficiency](#data-efficiency)):", ""] + [f"- {s}" for s in crossings] + [""]
    return lines


def transfer_answer(runs: Runs, device: str) -> list[str]:
    """Few labels: every route to a ViT and the CNN from scratch, per labeled size; does the MAE route reach
    the CNN?"""
    summary = accuracy_summary(runs.rows, task=("train_eval", "finetune", "linear_probe"))
    summary = summary[(summary["device"] == device) & summary["dataset"].str.contains(":")]
    lines = []
    for (dataset, protocol, budget), group in summary.groupby(["dataset", "protocol", "budget"]):
        if set(group["route"]) == {"from scratch"}:
            continue
        group = group.assign(series=group["label"] + ", " + group["route"])
        sizes = sorted(group["subset"].unique())
        lines += [f"**Few labels: {dataset}, {protocol} protocol, {budget_label(budget)}** ([figure]"
                  f"(transfer_{protocol}_{device}.png), [gain table](#mae-gain-over-training-from-scratch)):", "",
                  "| route | " + " | ".join(f"{int(n):,} labels" for n in sizes) + " |",
                  "|---|" + "---|" * len(sizes)]
        for series, line in group.groupby("series"):
            by_size = line.set_index("subset")
            lines.append(f"| {series} | " + " | ".join(_acc(by_size.loc[n], named=False) if n in by_size.index
                                                      else "-" for n in sizes) + " |")
        mae = group[(group["route"] == "MAE (unlabeled) -> fine-tune") & (group["family"] == "vit")]
        cnn = group[(group["route"] == "from scratch") & (group["family"] == "cnn")]
        margins = [(n, mae.loc[mae["subset"] == n, "mean"].max() - cnn.loc[cnn["subset"] == n, "mean"].max())
                   for n in sizes if (mae["subset"] == n).any() and (cnn["subset"] == n).any()]
        if margins:
            reached = [f"{int(n):,}" for n, m in margins if m >= 0]
            gaps = [m for _, m in margins]
            lines += ["", f"- The MAE-initialised ViT reaches the CNN at {', '.join(reached)} labels." if reached else
                      f"- The MAE-initialised ViT does not reach the CNN at any labeled size measured: it trails by "
                      f"{-max(gaps):.1f}-{-min(gaps):.1f} points."]
        lines.append("")
    return lines


def fastest_answer(runs: Runs, device: str) -> list[str]:
    summary = from_scratch_on_whole_datasets(accuracy_summary(runs.rows))
    summary = summary[summary["device"] == device]
    thr = unpaired(ok_metric(runs.rows, "throughput", task="infer", device=device))
    thr = thr[thr["attn_backend_used"].isin(DEFAULT_BACKENDS)]
    if summary.empty or thr.empty:
        return []
    speed = thr.groupby("label")["value"].max()
    lines = ["**Fastest model at or above an accuracy** (test accuracy at the largest training size of each "
             f"protocol and budget; inference throughput from the scaling run on {device}, [Pareto figure]"
             f"(pareto_{device}.png)):", ""]
    for (protocol, budget, _), group in summary.groupby(["protocol", "budget", "dataset"]):
        largest = group[group["subset"] == group["subset"].max()]
        for threshold in THRESHOLDS:
            qualified = largest[(largest["mean"] >= threshold) & largest["label"].isin(speed.index)]
            if qualified.empty:
                continue
            best = qualified.assign(speed=qualified["label"].map(speed)).sort_values("speed").iloc[-1]
            lines.append(f"- >= {threshold:.0f} % on {best['dataset']} ({protocol}, {budget_label(budget)}, "
                         f"{int(best['subset']):,} images): {_acc(best)}, {best['speed']:,.0f} img/s")
    return lines + [""] if len(lines) > 2 else []


def speed_answer(runs: Runs, device: str) -> list[str]:
    lines = []
    ratios = ok_metric(runs.rows, "throughput_ratio", device=device)
    if not ratios.empty:
        lines += ["**Paired speed ratios** (alternated in one process; [table](#paired-comparisons)):", ""]
        for _, r in ratios.sort_values(["label", "task"]).iterrows():
            noisy = f"; noisy: {r['noisy']}" if isinstance(r.get("noisy"), str) and r["noisy"] else ""
            verdict = "faster" if r["ci_low"] > 1 else "slower" if r["ci_high"] < 1 else "no difference shown"
            lines.append(f"- `{r['label']}` vs `{r['paired_with']}`, {r['task']} batch {int(r['batch_size'])}: "
                         f"{r['value']:.2f}x [{r['ci_low']:.2f}, {r['ci_high']:.2f}] ({verdict}{noisy})")
        lines.append("")
    thr = unpaired(ok_metric(runs.rows, "throughput", device=device, task=["infer", "train"]))
    mem = unpaired(ok_metric(runs.rows, "peak_memory", device=device, task=["train"]))
    reference = thr[thr["label"] == "resnet50"]
    natives = thr[(thr["impl"] == "native") & (thr["family"] == "vit")]
    if not reference.empty and not natives.empty:
        lines += ["**Native ViT against ResNet-50** (separate cells, not paired: within this machine's noise; "
                  "[figure](throughput_vs_params.png)):", ""]
        for (label, task, batch, px), r in natives.groupby(["label", "task", "batch_size", "img_size"]):
            ref = reference[(reference["task"] == task) & (reference["batch_size"] == batch)
                            & (reference["img_size"] == px)]
            if ref.empty:
                continue
            ratio = r["value"].median() / ref["value"].median()
            mine, theirs = (mem[(mem["label"] == n) & (mem["batch_size"] == batch) & (mem["img_size"] == px)]
                            for n in (label, "resnet50"))
            memory = (f", peak training memory {mine['value'].median() / theirs['value'].median():.2f}x"
                      if task == "train" and not mine.empty and not theirs.empty else "")
            lines.append(f"- `{label}` {task} batch {batch}, {px} px: throughput {ratio:.2f}x ResNet-50's{memory}")
        lines.append("")
    noisy = thr[thr["noisy"].notna() & (thr["noisy"].astype(str) != "")]
    if not noisy.empty:
        lines += [f"Caveat: {noisy['cell_id'].nunique()} throughput cell(s) on {device} were flagged noisy "
                  f"(busy machine or wide spread): {', '.join(sorted(noisy['label'].unique()))}; see the `noisy` "
                  "column.", ""]
    return lines


def answer(runs: Runs) -> str:
    parts = ["## Answer", ""]
    for device in sorted(runs.rows["device"].unique()):
        lines = (accuracy_answer(runs, device) + transfer_answer(runs, device) + fastest_answer(runs, device)
                 + speed_answer(runs, device))
        if lines:
            name = runs.rows.loc[runs.rows["device"] == device, "device_name"].dropna()
            parts += [f"### On {device}" + (f" ({name.iloc[0]})" if len(name) else ""), ""] + lines
    if len(parts) == 2:
        parts.append("_No accuracy or throughput results to answer from._")
    return "\n".join(parts)
