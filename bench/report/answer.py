"""The report's first section: the answer to "ViT or ResNet, which size and patch, for my data and hardware?",
generated from the results, each number with a link to the figure or table it comes from.

How sure: every mean carries a 95 % Student-t interval over its seeds and n; a difference (ViT - CNN, MAE -
scratch) carries its own interval, paired by seed where both sides have the same seeds (a seed draws the same
data subset for every model), Welch's otherwise. A difference is called shown only when its interval excludes 0;
otherwise the answer says "not shown with n seeds". Beyond the measured range: learning-curve fits, their
back-tests and the forecast (bench/report/fits.py), always labelled as extrapolation. Speed: paired ratios with
order-statistic intervals of the median per-pair ratio; ratios of separate cells with a bootstrap of the ratio of
medians that resamples the independent units (ABBA blocks of calls, timed repeats) within each cell.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd

from ..stats import COVERAGE, Interval, blocks_of, difference_interval, mean_interval, ratio_of_medians_interval
from ..tasks.latency import BLOCK as LATENCY_BLOCK
from .frame import (DEFAULT_BACKENDS, Runs, accuracy_summary, flagged, from_scratch_on_whole_datasets,
                   latency_samples, ok_metric, paired_ratio, samples_of, unpaired)
from .tables import crossover_statements
from .fits import Curve, accuracy, data_curves, forecasts, frontier_curves
from .grid import grid_answer
from .robustness import robustness_answer

THRESHOLDS = (80.0, 85.0, 90.0)  # "the fastest model at or above X% test accuracy"


def _acc(point: pd.Series, named: bool = True) -> str:
    """'`resnet9` bf16: 91.2 % [90.1, 92.3] (n=3, t); 98,304 images seen, 1.1e+13 FLOPs', with 'not converged'
    where a converged-protocol cell reached its cap."""
    text = (f"`{point['label']}` {point['dtype']}: " if named else "") + mean_interval(point["values"]).format(unit="%")
    if point["protocol"] == "converged" and not point["converged"]:
        text += " (not converged: reached its cap)"
    if not math.isnan(point["images"]):
        text += f"; {point['images']:,.0f} images seen, {point['flops']:.2g} FLOPs"
    return text


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


def _comparisons(point: pd.DataFrame) -> list[tuple[str, pd.Series | None, pd.Series | None]]:
    """(which dtypes, best ViT, best CNN): each family at its best; and where a dtype was run for both, at it."""
    rows = [("each at its best", _best(point, "vit"), _best(point, "cnn"))]
    if point["dtype"].nunique() > 1:
        for dtype, same in point.groupby("dtype"):
            if same["family"].nunique() == 2:
                rows.append((f"both {dtype}", _best(same, "vit"), _best(same, "cnn")))
    return rows


def accuracy_answer(runs: Runs, machine: str) -> list[str]:
    summary = from_scratch_on_whole_datasets(accuracy_summary(runs.rows))
    summary = summary[summary["machine"] == machine]
    lines = []
    for (dataset, protocol), group in summary.groupby(["dataset", "protocol"]):
        figure = f"data_efficiency_{protocol}_{machine}.png"
        lines += [f"**Accuracy on {dataset}, {protocol} protocol** ([figure]({figure}); means with 95 % t intervals "
                  "over seeds; each model's dtype, mean images seen and training FLOPs):", "",
                  "| training images | budget | dtypes | best ViT | best CNN | ViT - CNN (points) |",
                  "|---|---|---|---|---|---|"]
        for (budget, subset), point in sorted(group.groupby(["budget", "subset"]), key=lambda kv: (kv[0][1], kv[0][0])):
            for dtypes, vit, cnn in _comparisons(point):
                margin = _diff(difference(vit, cnn)) if vit is not None and cnn is not None else "n/a"
                lines.append(f"| {int(subset):,} | {budget.label()} | {dtypes} | "
                             f"{_acc(vit) if vit is not None else '-'} | {_acc(cnn) if cnn is not None else '-'} | "
                             f"{margin} |")
        lines.append("")
    crossings = [s for s in crossover_statements(runs) if f" on {machine}," in s]
    if crossings:
        lines += ["**Crossover in the measured range** ([data efficiency](#data-efficiency)):", ""]
        lines += [f"- {s}" for s in crossings] + [""]
    return lines


def _size(n: float) -> str:
    """Training images as 4,000; training FLOPs as 2.4e+15."""
    return f"{n:,.0f}" if n < 1e7 else f"{n:.3g}"


def _known(interval: Interval, fmt: str) -> str:
    """What a parameter's one-sided interval says: 'at least X', 'at most X', or nothing."""
    if math.isnan(interval.low) and not math.isnan(interval.high):
        return f"; at most {fmt.format(interval.high)}"
    if math.isnan(interval.high) and not math.isnan(interval.low):
        return f"; at least {fmt.format(interval.low)}"
    return ""


def _fit_words(curve: Curve) -> str:
    """The ceiling, the exponent and the local slope of a fitted curve, each identified or said not to be."""
    fitted = curve.fit
    floor = fitted.floor()
    ceiling = accuracy(floor.interval)
    words = [f"accuracy ceiling {ceiling.format(unit='%')}" if floor.identified else
             f"accuracy ceiling not identified ({floor.why}{_known(ceiling, '{:.1f} %')})"]
    alpha = next(p for p in fitted.parameters() if p.name == "alpha")
    words.append(f"exponent alpha {alpha.interval.format(digits=2)}" if alpha.identified else
                 f"exponent alpha not identified ({alpha.why}{_known(alpha.interval, '{:.2f}')})")
    slope = fitted.local_slope((curve.x_max,))
    x = "FLOPs" if curve.group == "frontier" else "n"
    words.append(f"local slope d log(error) / d log({x}) at {_size(curve.x_max)}: {slope.format(digits=2)}")
    return "; ".join(words)


def _curve_line(curve: Curve, unit: str) -> str:
    left_out = f"; left out as not converged: {', '.join(f'{n:,.0f}' for n in curve.left_out)}" \
        if curve.left_out else ""
    if curve.fit is None:
        return f"- `{curve.label}` ({curve.what}): no fit ({curve.why_not}){left_out}"
    seeds = sorted({len(v) for v in curve.points.values()})
    text = (f"- `{curve.label}` ({curve.what}): {len(curve.points)} {unit} from {_size(curve.x_min)} to "
            f"{_size(curve.x_max)}, {'-'.join(map(str, seeds))} seeds each{left_out}; {_fit_words(curve)}")
    if curve.backtest is None:
        return text + f"; {curve.backtest_why_not}"
    (held,) = curve.backtest.held_out
    predicted = accuracy(held.predicted)
    return (text + f"; back-test (fit without {_size(held.coords[0])}, predict its mean): "
            f"{predicted.format(unit='%')} against {100 * (1 - held.measured):.1f} % measured, off by "
            f"{abs(held.error) * 100:.1f} points, {'inside' if held.inside else 'outside'} the prediction interval, "
            f"{'reliable' if curve.reliable else 'UNRELIABLE (more than 3 points off)'}")


def forecast_answer(runs: Runs, machine: str) -> list[str]:
    curves = [c for c in data_curves(runs) if c.machine == machine]
    if not curves:
        return []
    lines = ["**Learning curves** (converged protocol; Rosenfeld et al.'s envelope law, error = chance * z / "
             "sqrt(1 + z^2) with z = a n^-alpha + c, fitted in log error over seeds; parametric-bootstrap 95 % "
             f"intervals ({COVERAGE['parametric bootstrap']}); a parameter on its bound is not identified; "
             "[figure](#data-efficiency), [back-test figure](#learning-curve-back-test)):", ""]
    lines += [_curve_line(c, "sizes") for c in curves] + [""]
    made = [f for f in forecasts(runs) if f.vit.machine == machine]
    if not made:
        unfitted = [f"`{c.label}` has no fit" for c in curves if c.fit is None]
        lines += ["**Forecast beyond the measured range**: none, it needs a fitted ViT and a fitted CNN on the same "
                  f"data and budget ({'; '.join(unfitted) or 'one family has no curve'}).", ""]
    for f in made:
        largest = f.largest
        head = (f"**Forecast beyond the measured range** (extrapolation; best ViT `{f.vit.label}` ({f.vit.what}) "
                f"against best CNN `{f.cnn.label}` ({f.cnn.what}), {f.vit.dataset})")
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
                         f"{n.high:,.0f}] ({where}; {c.share_crossing:.0%} of the bootstrap fits "
                         "cross)")
        else:
            lines.append(f"- crossover: {c.status} ({c.reason})")
        lines.append("")
    frontier = [c for c in frontier_curves(runs) if c.machine == machine]
    if frontier:
        lines += ["**Compute frontier** (accuracy against training FLOPs per family, the cells no cheaper cell "
                  "beats; [figure](#accuracy-against-training-compute)):", ""]
        lines += [_curve_line(c, "frontier points").replace(" from ", " FLOPs from ", 1) for c in frontier] + [""]
    return lines


def transfer_answer(runs: Runs, machine: str) -> list[str]:
    """Few labels: every route to a ViT and the CNN from scratch, per labeled size, with intervals; the MAE gain
    and the MAE ViT against the CNN as differences with verdicts."""
    summary = accuracy_summary(runs.rows, task=("train_eval", "finetune", "linear_probe"))
    summary = summary[(summary["machine"] == machine) & summary["class_subset"].astype(bool)]
    equal_images = summary[(summary["route"] == "scratch") & (summary["protocol"] == "fixed")]
    lines = []
    for (dataset, protocol, budget), group in summary.groupby(["dataset", "protocol", "budget"]):
        if set(group["route"]) == {"scratch"}:
            continue
        group = group.assign(series=group["label"] + " " + group["dtype"] + ", " + group["route_text"])
        sizes = sorted(group["subset"].unique())
        lines += [f"**Few labels: {dataset}, {protocol} protocol, {budget.label()}** ([figure]"
                  f"(transfer_{protocol}_{machine}.png), [gain table](#mae-gain-over-training-from-scratch)):", "",
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
            parts += _equal_images(runs, mae_vit, equal_images)
            if len(here["cnn"]):
                cnn = here["cnn"].sort_values("mean").iloc[-1]
                parts.append(f"against the CNN (`{cnn['label']}`) {_diff(difference(mae_vit, cnn))}")
            lines.append(f"- {int(n):,} labels, MAE-initialised `{mae_vit['label']}`: " + "; ".join(parts))
        lines.append("")
    return lines


def _equal_images(runs: Runs, mae_vit: pd.Series, baselines: pd.DataFrame) -> list[str]:
    """The MAE route against the same ViT from scratch given as many training images as the route's pretraining
    and fine-tuning together (a fixed budget), with both sides' images."""
    same = baselines[(baselines["label"] == mae_vit["label"]) & (baselines["subset"] == mae_vit["subset"])
                     & (baselines["dataset"] == mae_vit["dataset"])]
    pretraining = ok_metric(runs.rows, "images_seen", task="pretrain_mae", model=mae_vit["label"],
                            machine=mae_vit["machine"])
    if same.empty or pretraining.empty:
        return []
    scratch, pre = same.iloc[0], pretraining["value"].mean()
    return [f"against the same ViT from scratch with as many images ({scratch['budget'].label()}: "
            f"{scratch['images']:,.0f} images seen, against the MAE route's {pre + mae_vit['images']:,.0f}: "
            f"{pre:,.0f} pretraining + {mae_vit['images']:,.0f} fine-tuning) {_diff(difference(mae_vit, scratch))}"]


def fastest_answer(runs: Runs, machine: str) -> list[str]:
    """Per accuracy level: the fastest model that reaches it, per engine (batch-1 latency) and in throughput."""
    summary = from_scratch_on_whole_datasets(accuracy_summary(runs.rows))
    summary = summary[summary["machine"] == machine]
    thr = unpaired(ok_metric(runs.rows, "throughput", task="infer", machine=machine, engine="eager"))
    thr = thr[thr["attn_backend_used"].isin(DEFAULT_BACKENDS)]
    latency = latency_samples(runs, machine)
    latency = latency[latency["batch_size"] == latency["batch_size"].min()] if len(latency) else latency
    if summary.empty or (thr.empty and latency.empty):
        return []
    speeds = {"throughput, eager": (thr.groupby("label")["value"].max(), "{:,.0f} img/s", True)}
    for engine, group in latency.groupby("engine"):
        p50 = group.set_index("label")["calls"].map(lambda cells: np.median(np.concatenate(cells)))
        speeds[f"batch-{int(group['batch_size'].iloc[0])} latency, {engine}"] = (p50, "{:.2f} ms p50", False)
    lines = [f"**Fastest model at or above an accuracy** (test accuracy at the largest training size of each protocol "
             f"and budget; speed from the scaling suite on {machine}, [Pareto figure](pareto_{machine}.png), "
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


def latency_answer(runs: Runs, machine: str) -> list[str]:
    """How the ViT / ResNet latency ratio moves across engines: each native ViT against the fastest CNN at its
    batch, per engine, with a bootstrap interval of the ratio of median call times."""
    latency = latency_samples(runs, machine)
    if latency.empty:
        return []
    lines = ["**ViT / CNN latency across engines** (median call time of each native ViT over the fastest CNN's at "
             "the same batch and engine; separate cells, 95 % bootstrap interval of the ratio of medians over "
             f"blocks of {LATENCY_BLOCK} calls, {COVERAGE['block bootstrap']}; it does not cover the spread between "
             "cells run at different times, which the latency table shows; [table](#deployment-latency)):", ""]
    for (engine, batch, dtype, px), group in latency.groupby(["engine", "batch_size", "dtype", "img_size"]):
        cnns = group[group["family"] == "cnn"]
        if cnns.empty:
            continue
        cnn = cnns.loc[cnns["calls"].map(lambda cells: np.median(np.concatenate(cells))).idxmin()]
        for _, vit in group[(group["family"] == "vit") & (group["impl"] == "native")].iterrows():
            ratio = ratio_of_medians_interval([blocks_of(c, LATENCY_BLOCK) for c in vit["calls"]],
                                              [blocks_of(c, LATENCY_BLOCK) for c in cnn["calls"]])
            lines.append(f"- {engine}, batch {int(batch)}, {px} px {dtype}: `{vit['label']}` / `{cnn['label']}` "
                         f"{times(ratio)}")
    return lines + [""] if len(lines) > 2 else []


def times(ratio: Interval) -> str:
    """'2.97x [2.18, 3.08]': two decimals, more where the bounds would print alike (an interval never shows zero
    width that it does not have); the estimate alone where there is no interval."""
    digits = 2
    while ratio.has_interval and f"{ratio.low:.{digits}f}" == f"{ratio.high:.{digits}f}" and digits < 6:
        digits += 1
    bounds = f" [{ratio.low:.{digits}f}, {ratio.high:.{digits}f}]" if ratio.has_interval else ""
    return f"{ratio.estimate:.{digits}f}x{bounds}"


def _ratio_words(ratio: Interval, higher_is_faster: bool) -> str:
    """'1.08x [1.05, 1.11] (n=10, order statistics; faster)', or the values where there is no interval."""
    if not ratio.has_interval:
        return f"{ratio.estimate:.2f}x (n={ratio.n}: too few pairs for an interval; no verdict)"
    verdict = "no difference shown"
    if not ratio.low <= 1 <= ratio.high:
        verdict = "faster" if (ratio.low > 1) == higher_is_faster else "slower"
    return f"{times(ratio)} (n={ratio.n}, {ratio.method}; {verdict})"


def speed_answer(runs: Runs, machine: str) -> list[str]:
    lines = []
    for metric, what in (("throughput_ratio", "throughput of this side over the other"),
                         ("latency_ratio", "median call time of this side over the other; below 1 is faster")):
        ratios = ok_metric(runs.rows, metric, machine=machine)
        if ratios.empty:
            continue
        lines += [f"**Paired {metric.split('_')[0]} ratios** ({what}; alternated in one process; the median of "
                  "the per-pair ratios with its order-statistic interval (95 % or more; from 5 pairs, their range); "
                  "[table](#paired-comparisons)):", ""]
        for _, r in ratios.sort_values(["label", "task", "batch_size"]).iterrows():
            noisy = f"; noisy: {r['noisy']}" if flagged(pd.Series([r.get("noisy")])).iloc[0] else ""
            ratio = paired_ratio(r)
            side = f"`{r['label']}`" + (f" {r['engine']}" if r["engine"] != "eager" else "")
            lines.append(f"- {side} vs `{r['paired_with']}`, {r['task']} batch {int(r['batch_size'])}: "
                         f"{_ratio_words(ratio, higher_is_faster=metric == 'throughput_ratio')}{noisy}")
        lines.append("")
    thr = unpaired(ok_metric(runs.rows, "throughput", machine=machine, task=["infer", "train"], engine="eager"))
    lines += _against_resnet50(runs, thr, machine)
    noisy = thr[flagged(thr["noisy"])]
    if not noisy.empty:
        lines += [f"Caveat: {noisy['cell_id'].nunique()} throughput cell(s) on {machine} were flagged noisy "
                  f"(busy machine or wide spread): {', '.join(sorted(noisy['label'].unique()))}; see the `noisy` "
                  "column.", ""]
    return lines


def _repeats(rows: pd.DataFrame) -> list[list[np.ndarray]]:
    """Per cell, its timed repeats as blocks of one value (a repeat times many steps back to back: the unit that
    is independent); a row without samples gives its value as one repeat."""
    return [[np.array([v]) for v in samples_of(s) or [float(value)]]
            for s, value in zip(rows["samples"], rows["value"])]


def _against_resnet50(runs: Runs, thr: pd.DataFrame, machine: str) -> list[str]:
    """Each native ViT's throughput over ResNet-50's at the same task, batch and image size (separate cells: a
    bootstrap interval of the ratio of the repeats' medians), and its peak training memory over ResNet-50's."""
    reference = thr[thr["label"] == "resnet50"]
    natives = thr[(thr["impl"] == "native") & (thr["family"] == "vit")]
    if reference.empty or natives.empty:
        return []
    memory = unpaired(ok_metric(runs.rows, "peak_memory", machine=machine, task=["train"]))
    lines = ["**Native ViT against ResNet-50** (separate cells, not paired: 95 % bootstrap over timed repeats of the "
             "ratio of "
             "the repeats' medians; [figure](throughput_vs_params.png)):", ""]
    for (label, task, batch, px), r in natives.groupby(["label", "task", "batch_size", "img_size"]):
        ref = reference[(reference["task"] == task) & (reference["batch_size"] == batch)
                        & (reference["img_size"] == px)]
        if ref.empty:
            continue
        ratio = ratio_of_medians_interval(_repeats(r), _repeats(ref))
        mine, theirs = (memory[(memory["label"] == n) & (memory["batch_size"] == batch) & (memory["img_size"] == px)]
                        for n in (label, "resnet50"))
        extra = (f", peak training memory {mine['value'].median() / theirs['value'].median():.2f}x"
                 if task == "train" and not mine.empty and not theirs.empty else "")
        lines.append(f"- `{label}` {task} batch {batch}, {px} px: throughput {times(ratio)} "
                     f"ResNet-50's{extra}")
    return lines + [""]


def answer(runs: Runs) -> str:
    """The answer per device model (a CPU run and a GPU run, or runs on two GPU models, are answered apart)."""
    parts = ["## Answer", ""]
    for machine, mine in runs.rows.groupby("machine"):
        only, (device, name) = dataclasses.replace(runs, rows=mine), mine[["device", "device_name"]].iloc[0]
        lines = (accuracy_answer(only, machine) + grid_answer(only, machine) + forecast_answer(only, machine)
                 + transfer_answer(only, machine) + robustness_answer(only, machine) + fastest_answer(only, machine)
                 + latency_answer(only, machine) + speed_answer(only, machine))
        if lines:
            parts += [f"### On {device} ({name if isinstance(name, str) else '?'})", ""] + lines
    if len(parts) == 2:
        parts.append("_No accuracy or throughput results to answer from._")
    return "\n".join(parts)
