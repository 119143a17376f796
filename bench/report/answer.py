"""The report's first section: the answer to "ViT or ResNet, which size and patch, for my data and hardware?",
generated from the results, each number with a link to the figure or table it comes from.

How sure: every mean carries a 95 % Student-t interval over its seeds and n; a difference (ViT - CNN, MAE -
scratch) carries its own interval, paired by seed where both sides have the same seeds (a seed draws the same
data subset for every model), Welch's otherwise. A difference is called shown only when its interval excludes 0;
otherwise the answer says "not shown with n seeds". Beyond the measured range: learning-curve fits, their
back-tests and the forecast (bench/report/fits.py), always labelled as extrapolation. Speed: paired ratios with
bootstrap intervals; latency ratios of separate cells with a bootstrap interval of the ratio of medians.
"""

from __future__ import annotations

import dataclasses
import math

import pandas as pd

from ..stats import Interval, difference_interval, mean_interval, ratio_of_medians_interval
from .data import DEFAULT_BACKENDS, Runs, accuracy_summary, flagged, from_scratch_on_whole_datasets, ok_metric, \
    unpaired
from .figures import crossover_statements
from .fits import Curve, data_curves, forecasts, frontier_curves

THRESHOLDS = (80.0, 85.0, 90.0)  # "the fastest model at or above X% test accuracy"


def _acc(point: pd.Series, named: bool = True) -> str:
    """'`resnet9` 91.2 % [90.1, 92.3] (n=3, t)', with 'not converged' where it applies."""
    text = (f"`{point['label']}` " if named else "") + mean_interval(point["values"]).format(unit="%")
    return text + ("" if point["converged"] else " (not converged)")


def difference(a: pd.Series, b: pd.Series) -> Interval:
    """mean(a) - mean(b) over seeds: paired by seed where both have the same seeds (two or more), else Welch."""
    seeds_a, seeds_b = dict(zip(a["seed_list"], a["values"])), dict(zip(b["seed_list"], b["values"]))
    common = sorted(set(seeds_a) & set(seeds_b))
    if len(common) >= 2 and len(common) == len(seeds_a) == len(seeds_b):
        return difference_interval([seeds_a[s] for s in common], [seeds_b[s] for s in common], paired=True)
    return difference_interval(a["values"], b["values"], paired=False)


def _diff(interval: Interval, what: str = "difference") -> str:
    bounds = "" if math.isnan(interval.low) else f" [{interval.low:+.1f}, {interval.high:+.1f}]"
    return f"{interval.estimate:+.1f}{bounds} ({interval.method}, n={interval.n}; {interval.verdict(what)})"


def _best(points: pd.DataFrame, family: str) -> pd.Series | None:
    mine = points[points["family"] == family]
    return mine.sort_values("mean").iloc[-1] if len(mine) else None


def accuracy_answer(runs: Runs, device: str) -> list[str]:
    summary = from_scratch_on_whole_datasets(accuracy_summary(runs.rows))
    summary = summary[summary["device"] == device]
    lines = []
    for (dataset, protocol), group in summary.groupby(["dataset", "protocol"]):
        figure = f"data_efficiency_{protocol}_{device}.png"
        lines += [f"**Accuracy on {dataset}, {protocol} protocol** ([figure]({figure}); means with 95 % t intervals "
                  "over seeds):", "",
                  "| training images | budget | best ViT | best CNN | ViT - CNN (points) |", "|---|---|---|---|---|"]
        for (budget, subset), point in sorted(group.groupby(["budget", "subset"]), key=lambda kv: (kv[0][1], kv[0][0])):
            vit, cnn = _best(point, "vit"), _best(point, "cnn")
            margin = _diff(difference(vit, cnn)) if vit is not None and cnn is not None else "n/a"
            lines.append(f"| {int(subset):,} | {budget.label()} | {_acc(vit) if vit is not None else '-'} | "
                         f"{_acc(cnn) if cnn is not None else '-'} | {margin} |")
        lines.append("")
    crossings = [s for s in crossover_statements(runs) if f" on {device}," in s]
    if crossings:
        lines += ["**Crossover in the measured range** ([data efficiency](#data-efficiency)):", ""]
        lines += [f"- {s}" for s in crossings] + [""]
    return lines + forecast_answer(runs, device)


def _size(n: float) -> str:
    """Training images as 4,000; training FLOPs as 2.4e+15."""
    return f"{n:,.0f}" if n < 1e7 else f"{n:.3g}"


def _curve_line(curve: Curve, unit: str) -> str:
    if curve.fit is None:
        return f"- `{curve.label}`: no fit ({curve.why_not}; left out as not converged: " \
               f"{', '.join(f'{n:,.0f}' for n in curve.left_out) or 'none'})"
    e_inf, b = curve.fit.e_inf_interval(), curve.fit.b_interval()
    text = (f"- `{curve.label}`: {len(curve.points)} {unit} from {_size(curve.fit.n_min)} to {_size(curve.fit.n_max)}; "
            f"accuracy ceiling (1 - e_inf) {curve.accuracy(e_inf).format(unit='%')}, exponent b "
            f"{b.format(digits=2)}")
    if curve.left_out:
        text += f"; left out as not converged: {', '.join(f'{n:,.0f}' for n in curve.left_out)}"
    if curve.backtest is None:
        return text + f"; {curve.backtest_why_not}"
    bt = curve.backtest
    predicted = curve.accuracy(bt.predicted)
    return (text + f"; back-test (fit without {_size(bt.size)}, predict it): {predicted.format(unit='%')} against "
            f"{100 * (1 - bt.measured):.1f} % measured, off by {abs(bt.error) * 100:.1f} points, "
            f"{'inside' if bt.inside else 'outside'} the interval, "
            f"{'reliable' if curve.reliable else 'UNRELIABLE (more than 3 points off)'}")


def forecast_answer(runs: Runs, device: str) -> list[str]:
    curves = [c for c in data_curves(runs) if c.device == device]
    if not curves:
        return []
    lines = ["**Learning curves** (converged protocol; error(n) = e_inf + a n^-b fitted over seeds, bootstrap 95 % "
             "intervals; [figure](#data-efficiency), [back-test figure](#learning-curve-back-test)):", ""]
    lines += [_curve_line(c, "sizes") for c in curves] + [""]
    made = [f for f in forecasts(runs) if f.vit.device == device]
    if not made:
        unfitted = [f"`{c.label}` has no fit" for c in curves if c.fit is None]
        lines += ["**Forecast beyond the measured range**: none, it needs a fitted ViT and a fitted CNN on the same "
                  f"data and budget ({'; '.join(unfitted) or 'one family has no curve'}).", ""]
    for f in made:
        largest = max(f.vit.fit.n_max, f.cnn.fit.n_max)
        head = (f"**Forecast beyond the measured range** (extrapolation; best ViT `{f.vit.label}` against best CNN "
                f"`{f.cnn.label}`, {f.vit.dataset}, {f.vit.group.label()})")
        if not f.reliable:
            lines += [head + f": UNRELIABLE, not an answer ({f.why}).", ""]
            continue
        lines += [head + ":", ""]
        for factor, (vit, cnn) in f.predictions.items():
            lines.append(f"- at {factor * largest:,.0f} images ({factor}x the largest measured): ViT "
                         f"{vit.format(unit='%')}, CNN {cnn.format(unit='%')}")
        c = f.crossover
        if c.status == "predicted":
            n = c.n_star
            where = (f"{c.extrapolation_factor:,.1f}x beyond the measured range" if c.extrapolation_factor > 1
                     else "inside the measured range")
            lines.append(f"- the ViT's curve meets the CNN's at about {n.estimate:,.0f} images [{n.low:,.0f}, "
                         f"{n.high:,.0f}] ({where}; {c.share_of_bootstraps_crossing:.0%} of the bootstrap fits "
                         "cross)")
        else:
            lines.append(f"- crossover: {c.status} ({c.reason})")
        lines.append("")
    frontier = [c for c in frontier_curves(runs) if c.device == device]
    if frontier:
        lines += ["**Compute frontier** (accuracy against training FLOPs per family, the cells no cheaper cell "
                  "beats; [figure](#accuracy-against-training-compute)):", ""]
        lines += [_curve_line(c, "frontier points").replace(" from ", " FLOPs from ", 1) for c in frontier] + [""]
    return lines


def transfer_answer(runs: Runs, device: str) -> list[str]:
    """Few labels: every route to a ViT and the CNN from scratch, per labeled size, with intervals; the MAE gain
    and the MAE ViT against the CNN as differences with verdicts."""
    summary = accuracy_summary(runs.rows, task=("train_eval", "finetune", "linear_probe"))
    summary = summary[(summary["device"] == device) & summary["class_subset"].astype(bool)]
    lines = []
    for (dataset, protocol, budget), group in summary.groupby(["dataset", "protocol", "budget"]):
        if set(group["route"]) == {"scratch"}:
            continue
        group = group.assign(series=group["label"] + ", " + group["route_text"])
        sizes = sorted(group["subset"].unique())
        lines += [f"**Few labels: {dataset}, {protocol} protocol, {budget.label()}** ([figure]"
                  f"(transfer_{protocol}_{device}.png), [gain table](#mae-gain-over-training-from-scratch)):", "",
                  "| route | " + " | ".join(f"{int(n):,} labels" for n in sizes) + " |",
                  "|---|" + "---|" * len(sizes)]
        for series, line in group.groupby("series"):
            by_size = line.set_index("subset")
            lines.append(f"| {series} | " + " | ".join(_acc(by_size.loc[n], named=False) if n in by_size.index
                                                      else "-" for n in sizes) + " |")
        lines.append("")
        mae = group[(group["route"] == "mae-finetune") & (group["family"] == "vit")]
        scratch = group[group["route"] == "scratch"]
        for n in sizes:
            here = {name: frame[frame["subset"] == n] for name, frame in
                    (("mae", mae), ("vit", scratch[scratch["family"] == "vit"]),
                     ("cnn", scratch[scratch["family"] == "cnn"]))}
            if here["mae"].empty:
                continue
            mae_vit = here["mae"].sort_values("mean").iloc[-1]
            same = here["vit"][here["vit"]["label"] == mae_vit["label"]]
            parts = []
            if len(same):
                gain = _diff(difference(mae_vit, same.iloc[0]), "gain")
                parts.append(f"MAE gain over the same ViT from scratch {gain}")
            if len(here["vit"]):
                best_vit = here["vit"].sort_values("mean").iloc[-1]
                parts.append(f"against the best ViT from scratch (`{best_vit['label']}`) "
                             f"{_diff(difference(mae_vit, best_vit))}")
            if len(here["cnn"]):
                cnn = here["cnn"].sort_values("mean").iloc[-1]
                parts.append(f"against the CNN (`{cnn['label']}`) {_diff(difference(mae_vit, cnn))}")
            lines.append(f"- {int(n):,} labels, MAE-initialised `{mae_vit['label']}`: " + "; ".join(parts))
        lines.append("")
    return lines


def _latency_samples(runs: Runs, device: str) -> pd.DataFrame:
    """Every latency cell side's per-call times (ms) per model, engine and batch (eager sides of several paired
    cells pooled)."""
    lat = ok_metric(runs.rows, "latency_p50", device=device).dropna(subset=["samples"])
    lat = lat.assign(calls=[[float(v) for v in s.split(";")] for s in lat["samples"]])
    return lat.groupby(["label", "family", "engine", "batch_size", "dtype", "img_size"], as_index=False)["calls"].agg(
        lambda lists: [v for values in lists for v in values])


def fastest_answer(runs: Runs, device: str) -> list[str]:
    """Per accuracy level: the fastest model that reaches it, per engine (batch-1 latency) and in throughput."""
    summary = from_scratch_on_whole_datasets(accuracy_summary(runs.rows))
    summary = summary[summary["device"] == device]
    thr = unpaired(ok_metric(runs.rows, "throughput", task="infer", device=device, engine="eager"))
    thr = thr[thr["attn_backend_used"].isin(DEFAULT_BACKENDS)]
    latency = _latency_samples(runs, device)
    latency = latency[latency["batch_size"] == latency["batch_size"].min()] if len(latency) else latency
    if summary.empty or (thr.empty and latency.empty):
        return []
    speeds = {"throughput, eager": (thr.groupby("label")["value"].max(), "{:,.0f} img/s", True)}
    for engine, group in latency.groupby("engine"):
        p50 = group.set_index("label")["calls"].map(lambda v: pd.Series(v).median())
        speeds[f"batch-{int(group['batch_size'].iloc[0])} latency, {engine}"] = (p50, "{:.2f} ms p50", False)
    lines = [f"**Fastest model at or above an accuracy** (test accuracy at the largest training size of each protocol "
             f"and budget; speed from the scaling suite on {device}, [Pareto figure](pareto_{device}.png), "
             "[latency figure](#deployment-latency)):", ""]
    for (protocol, budget, _), group in summary.groupby(["protocol", "budget", "dataset"]):
        largest = group[group["subset"] == group["subset"].max()]
        for threshold in THRESHOLDS:
            qualified = largest[largest["mean"] >= threshold]
            picks = []
            for what, (speed, fmt, higher) in speeds.items():
                known = qualified[qualified["label"].isin(speed.index)]
                if len(known):
                    best = known.assign(speed=known["label"].map(speed)).sort_values("speed", ascending=not higher)
                    picks.append(f"{what}: `{best['label'].iloc[0]}` ({fmt.format(best['speed'].iloc[0])})")
            if picks:
                lines.append(f"- >= {threshold:.0f} % on {group['dataset'].iloc[0]} ({protocol}, {budget.label()}, "
                             f"{int(largest['subset'].iloc[0]):,} images): " + "; ".join(picks))
    return lines + [""] if len(lines) > 2 else []


def latency_answer(runs: Runs, device: str) -> list[str]:
    """How the ViT / ResNet latency ratio moves across engines: each native ViT against the fastest CNN at its
    batch, per engine, with a bootstrap interval of the ratio of median call times."""
    latency = _latency_samples(runs, device)
    if latency.empty:
        return []
    lines = ["**ViT / CNN latency across engines** (median call time of each native ViT over the fastest CNN's at "
             "the same batch and engine; separate cells, bootstrap 95 % interval of the ratio of medians; "
             "[table](#deployment-latency)):", ""]
    for (engine, batch, dtype, px), group in latency.groupby(["engine", "batch_size", "dtype", "img_size"]):
        cnns = group[group["family"] == "cnn"]
        if cnns.empty:
            continue
        cnn = cnns.loc[cnns["calls"].map(lambda v: pd.Series(v).median()).idxmin()]
        for _, vit in group[(group["family"] == "vit") & group["label"].str.startswith("vit:")].iterrows():
            ratio = ratio_of_medians_interval(vit["calls"], cnn["calls"])
            lines.append(f"- {engine}, batch {int(batch)}, {px} px {dtype}: `{vit['label']}` / `{cnn['label']}` "
                         f"{ratio.estimate:.2f}x [{ratio.low:.2f}, {ratio.high:.2f}]")
    return lines + [""] if len(lines) > 2 else []


def speed_answer(runs: Runs, device: str) -> list[str]:
    lines = []
    for metric, what in (("throughput_ratio", "throughput of this side over the other"),
                         ("latency_ratio", "median call time of this side over the other; below 1 is faster")):
        ratios = ok_metric(runs.rows, metric, device=device)
        if ratios.empty:
            continue
        lines += [f"**Paired {metric.split('_')[0]} ratios** ({what}; alternated in one process, bootstrap 95 % "
                  "interval; [table](#paired-comparisons)):", ""]
        for _, r in ratios.sort_values(["label", "task", "batch_size"]).iterrows():
            noisy = f"; noisy: {r['noisy']}" if flagged(pd.Series([r.get("noisy")])).iloc[0] else ""
            faster = (r["ci_low"] > 1) == (metric == "throughput_ratio")
            verdict = "no difference shown" if r["ci_low"] <= 1 <= r["ci_high"] else ("faster" if faster else "slower")
            side = f"`{r['label']}`" + (f" {r['engine']}" if r["engine"] != "eager" else "")
            lines.append(f"- {side} vs `{r['paired_with']}`, {r['task']} batch {int(r['batch_size'])}: "
                         f"{r['value']:.2f}x [{r['ci_low']:.2f}, {r['ci_high']:.2f}] ({verdict}{noisy})")
        lines.append("")
    thr = unpaired(ok_metric(runs.rows, "throughput", device=device, task=["infer", "train"], engine="eager"))
    lines += _against_resnet50(runs, thr, device)
    noisy = thr[flagged(thr["noisy"])]
    if not noisy.empty:
        lines += [f"Caveat: {noisy['cell_id'].nunique()} throughput cell(s) on {device} were flagged noisy "
                  f"(busy machine or wide spread): {', '.join(sorted(noisy['label'].unique()))}; see the `noisy` "
                  "column.", ""]
    return lines


def _samples(rows: pd.DataFrame) -> list[float]:
    """The rows' raw repeats (their values where none were kept)."""
    samples = [float(v) for s in rows["samples"].dropna() for v in s.split(";")]
    return samples or [float(v) for v in rows["value"]]


def _against_resnet50(runs: Runs, thr: pd.DataFrame, device: str) -> list[str]:
    """Each native ViT's throughput over ResNet-50's at the same task, batch and image size (separate cells: a
    bootstrap interval of the ratio of the repeats' medians), and its peak training memory over ResNet-50's."""
    reference = thr[thr["label"] == "resnet50"]
    natives = thr[(thr["impl"] == "native") & (thr["family"] == "vit")]
    if reference.empty or natives.empty:
        return []
    memory = unpaired(ok_metric(runs.rows, "peak_memory", device=device, task=["train"]))
    lines = ["**Native ViT against ResNet-50** (separate cells, not paired: bootstrap 95 % interval of the ratio of "
             "the repeats' medians; [figure](throughput_vs_params.png)):", ""]
    for (label, task, batch, px), r in natives.groupby(["label", "task", "batch_size", "img_size"]):
        ref = reference[(reference["task"] == task) & (reference["batch_size"] == batch)
                        & (reference["img_size"] == px)]
        if ref.empty:
            continue
        ratio = ratio_of_medians_interval(_samples(r), _samples(ref))
        mine, theirs = (memory[(memory["label"] == n) & (memory["batch_size"] == batch) & (memory["img_size"] == px)]
                        for n in (label, "resnet50"))
        extra = (f", peak training memory {mine['value'].median() / theirs['value'].median():.2f}x"
                 if task == "train" and not mine.empty and not theirs.empty else "")
        bounds = "" if math.isnan(ratio.low) else f" [{ratio.low:.2f}, {ratio.high:.2f}]"
        lines.append(f"- `{label}` {task} batch {batch}, {px} px: throughput {ratio.estimate:.2f}x{bounds} "
                     f"ResNet-50's{extra}")
    return lines + [""]


def answer(runs: Runs) -> str:
    """The answer per device model (a CPU run and a GPU run, or runs on two GPU models, are answered apart)."""
    parts = ["## Answer", ""]
    rows = runs.rows.assign(device_name=runs.rows["device_name"].fillna("?"))
    for (device, name), mine in rows.groupby(["device", "device_name"]):
        only = dataclasses.replace(runs, rows=mine)
        lines = (accuracy_answer(only, device) + transfer_answer(only, device) + fastest_answer(only, device)
                 + latency_answer(only, device) + speed_answer(only, device))
        if lines:
            parts += [f"### On {device} ({name})", ""] + lines
    if len(parts) == 2:
        parts.append("_No accuracy or throughput results to answer from._")
    return "\n".join(parts)
