"""The report's markdown tables and statements (no figure): the MAE gain, the paired ratios, the pooled latency
percentiles and where the best ViT and CNN swap the lead. Each table function takes the loaded runs and returns
markdown or raises Skip(reason), as a figure does."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .frame import (Runs, accuracy_summary, from_scratch_on_whole_datasets, latency_samples, ok_metric, paired_ratio,
                    per_seed, seed_keys)
from .style import Skip


def mae_gain(runs: Runs) -> str:
    """Per MAE encoder and labeled size: accuracy of the MAE-initialised ViT minus the same ViT (dtype, image size)
    from scratch, seed by seed; a seed run in several run dirs is one seed (frame.per_seed)."""
    acc = ok_metric(runs.rows, "accuracy", task=["train_eval", "finetune"])
    acc = acc[acc["family"] == "vit"]
    mae = acc[acc["route"] == "mae-finetune"]
    scratch = acc[acc["route"] == "scratch"]
    mae, scratch = (per_seed(side, seed_keys(), ["value"]) for side in (mae, scratch))
    keys = ["machine", "dataset", "protocol", "budget", "label", "dtype", "img_size", "subset", "seed"]
    pairs = mae.merge(scratch[[*keys, "value"]], on=keys, suffixes=("_mae", "_scratch"))
    if pairs.empty:
        raise Skip("needs a ViT fine-tuned from an MAE encoder and the same ViT from scratch on the same subsets")
    pairs["gain"] = (pairs["value_mae"] - pairs["value_scratch"]) * 100
    table = pairs.groupby(["machine", "label", "init", "subset"]).agg(
        mae=("value_mae", lambda v: f"{v.mean() * 100:.1f}"),
        scratch=("value_scratch", lambda v: f"{v.mean() * 100:.1f}"),
        gain=("gain", lambda g: f"{g.mean():+.1f} (seeds {', '.join(f'{x:+.1f}' for x in g)})"),
        seeds=("seed", "nunique")).reset_index()
    table["subset"] = table["subset"].map(lambda n: f"{int(n):,}")
    table = table.rename(columns={"subset": "labeled images", "init": "encoder"})
    return ("Test accuracy (%) fine-tuned from the MAE encoder against from scratch, same model, dtype, subset, seed "
            "and budget; the gain is in points.\n\n" + table.to_markdown(index=False))


def paired_table(runs: Runs) -> str:
    ratios = pd.concat([ok_metric(runs.rows, "throughput_ratio"), ok_metric(runs.rows, "latency_ratio")])
    if ratios.empty:
        raise Skip("no paired cells (compare_to in suites/scaling.yaml)")
    table = pd.DataFrame({
        "device": ratios["machine"], "model": ratios["label"], "engine": ratios["engine"],
        "against": ratios["paired_with"], "task": ratios["task"], "batch": ratios["batch_size"],
        "px": ratios["img_size"], "ratio": ratios["metric"],
        "value": [f"{i.estimate:.3f} [{i.low:.3f}, {i.high:.3f}] ({i.method})" if i.has_interval else
                  f"{i.estimate:.3f} (no interval from {i.n})"
                  for i in (paired_ratio(r) for _, r in ratios.iterrows())],
        "repeats": ratios["n_repeats"]})
    return ("Both sides timed alternately (ABBA) in one process; the median of the per-pair ratios with its "
            "order-statistic interval (95 % or more; with 5 pairs their range, 94 %): "
            "throughput_ratio is the model's throughput over `against`'s (above 1: faster); latency_ratio its median "
            "call time over `against`'s (below 1: faster). An interval that excludes 1 is a real difference on that "
            "machine.\n\n" + table.to_markdown(index=False))


def latency_percentiles(runs: Runs) -> pd.DataFrame:
    """Per device model, engine, model and batch: percentiles of every call of the model's cells pooled (never an
    average of the cells' percentiles), with the cells' own medians."""
    samples = latency_samples(runs)
    if samples.empty:
        raise Skip("no latency cells (task latency, the deployment study of suites/scaling.yaml)")
    pooled = samples["calls"].map(np.concatenate)
    return samples[["machine", "engine", "label", "batch_size"]].assign(
        cells=samples["calls"].map(len), calls=pooled.map(len), p50=pooled.map(np.median),
        p99=pooled.map(lambda x: np.percentile(x, 99)),
        cell_p50s=samples["calls"].map(lambda cells: ", ".join(f"{np.median(c):.3g}" for c in cells)))


def latency_table(group: pd.DataFrame) -> str:
    """One device model's rows of latency_percentiles, as markdown."""
    shown = group.assign(p50=group["p50"].map("{:.3g}".format), p99=group["p99"].map("{:.3g}".format))
    return (shown.rename(columns={"label": "model", "batch_size": "batch", "p50": "p50 (ms)", "p99": "p99 (ms)",
                                  "cell_p50s": "each cell's p50 (ms)"})
            .to_markdown(index=False))


def crossover_statements(runs: Runs) -> list[str]:
    """Where the best ViT and the best CNN (means over seeds) swap the lead, per machine, protocol and budget."""
    summary = from_scratch_on_whole_datasets(accuracy_summary(runs.rows))
    lines = []
    for (machine, dataset, protocol, budget), group in summary.groupby(["machine", "dataset", "protocol", "budget"]):
        best = group.groupby(["family", "subset"])["mean"].max().unstack("family")
        where = f"{dataset} on {machine}, {protocol}, {budget.label()}"
        if not {"vit", "cnn"} <= set(best.columns):
            lines.append(f"{where}: only one family measured.")
            continue
        gap = (best["vit"] - best["cnn"]).dropna().sort_index()
        lead = lambda g: "ViT" if g > 0 else "CNN"  # noqa: E731
        if len(gap) == 1:
            n, g = gap.index[0], gap.iloc[0]
            lines.append(f"{where}: one size measured ({int(n):,} images): {lead(g)} leads by {abs(g):.1f} points.")
            continue
        crossings = [(a, b) for a, b in zip(gap.index[:-1], gap.index[1:]) if np.sign(gap[a]) != np.sign(gap[b])]
        if not crossings:
            lines.append(f"{where}: no crossover in the measured range ({int(gap.index.min()):,}-"
                         f"{int(gap.index.max()):,} images); {lead(gap.iloc[-1])} leads by "
                         f"{abs(gap).min():.1f}-{abs(gap).max():.1f} points.")
        for a, b in crossings:
            t = gap[a] / (gap[a] - gap[b])  # the zero of the gap, linear in log(size)
            estimate = float(np.exp(np.log(a) + t * (np.log(b) - np.log(a))))
            lines.append(f"{where}: {lead(gap[b])} overtakes {lead(gap[a])} between {int(a):,} and {int(b):,} images "
                         f"(estimated crossover ~{estimate:,.0f}).")
    return lines
