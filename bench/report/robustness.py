"""The robustness study (task robustness, bench/tasks/robustness.py): per setting, the clean accuracy on the
robustness subset, mCE and relative mCE against the suite's baseline CNN, accuracy with 50 % and 80 % of the image
dropped, ECE clean and under corruption, each a mean over seeds with its interval; the ViT against the CNN at the
same training size (paired by seed) and at matched clean accuracy (the CNN setting nearest in clean accuracy,
unpaired); figures of accuracy over severity, over the share dropped, and CE per corruption."""

from __future__ import annotations

import dataclasses
import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from ..corruptions import CORRUPTIONS, GROUPS
from ..results import setting_columns
from ..stats import accuracy_at_share, corruption_errors, difference_interval, mean_interval
from .frame import Runs, ok_metric, per_seed
from .style import Skip, palette, save

DROPPED = (0.5, 0.8)  # the shares of the image dropped the Answer reads accuracy at
MATCHED = 2.0  # points of clean accuracy within which two settings count as matched
SHOWN = {"clean": "clean accuracy (subset, %)", "mce": "mCE", "relative_mce": "relative mCE",
         **{f"drop{int(s * 100)}_{g}": f"accuracy, {s:.0%} dropped, {g} grid (%)" for s in DROPPED
            for g in ("aligned", "offset")},
         "ece_clean": "ECE clean (%)", "ece_corrupted": "ECE corrupted (%)"}
LOWER_IS_BETTER = ("mce", "relative_mce", "ece_clean", "ece_corrupted")


@dataclasses.dataclass(frozen=True)
class Study:
    cells: pd.DataFrame  # one row per setting and seed (index): name, family, train_size and every SHOWN value
    settings: pd.DataFrame  # one row per setting: label, family, size, seeds, and per SHOWN value its seeds' values
    baseline: str  # the CNN setting whose errors normalise CE, for people
    ce: pd.DataFrame  # CE (%) per setting and seed (index: the setting's name) and corruption
    accuracy: pd.DataFrame  # robust_accuracy per setting, seed, condition and level (value %), with the name


def _size(train_size) -> str:
    return "all" if pd.isna(train_size) else f"{int(train_size):,}"


def _cells(rows: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.Series]:
    """(robust_accuracy rows, %; the cells; ECE, %), one cell per setting and seed: a seed that ran again in another
    run dir on the same device model is that seed measured twice, its values averaged (frame.per_seed)."""
    acc = ok_metric(rows, "robust_accuracy", task="robustness")
    if acc.empty:
        raise Skip("no robustness cells (task robustness, bench/tasks/robustness.py)")
    keys = [c for c in setting_columns() if c != "robustness"] + ["machine"]
    acc = acc.assign(setting=acc.groupby(keys, dropna=False, sort=False).ngroup(), value=acc["value"] * 100)
    acc["name"] = [f"{label} {dtype} n={_size(n)}" for label, dtype, n in zip(acc["label"], acc["dtype"],
                                                                               acc["train_size"])]
    setting_of = acc.drop_duplicates(["run_dir", "cell_id"]).set_index(["run_dir", "cell_id"])["setting"]
    ece = ok_metric(rows, "ece", task="robustness").join(setting_of, on=["run_dir", "cell_id"])
    ece = ece.groupby(["setting", "seed", "condition"])["value"].mean() * 100
    acc = per_seed(acc[["setting", "seed", "condition", "level", "value", "name", "family", "train_size"]],
                   ["setting", "seed", "condition", "level"], ["value"])
    cells = acc.groupby(["setting", "seed"]).agg(name=("name", "first"), family=("family", "first"),
                                                 train_size=("train_size", "first"))
    return acc, cells, ece


def _per_cell(acc: pd.DataFrame, cells: pd.DataFrame, ece: pd.Series) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """Every SHOWN value of every cell; CE against the CNN setting at the largest training size (all: largest)."""
    corrupted = acc[acc["condition"].isin(list(CORRUPTIONS))]
    errors = 1 - corrupted.pivot_table(index=["setting", "seed"], columns=["condition", "level"],
                                       values="value", aggfunc="first") / 100
    clean = acc[acc["condition"] == "clean"].set_index(["setting", "seed"])["value"]
    cnn = cells[cells["family"] == "cnn"]
    if cnn.empty or errors.empty:
        raise Skip("robustness cells of a CNN and under corruption are needed: CE is relative to the baseline CNN")
    largest = cnn.assign(order=cnn["train_size"].fillna(math.inf)).sort_values(["order", "name"]).iloc[-1]
    setting, _ = largest.name  # (setting, seed): the index
    baseline = cnn.loc[[setting]].index
    errors = errors.loc[:, errors.notna().all()]  # corruptions every cell ran
    ce = corruption_errors(errors, 1 - clean.loc[errors.index] / 100, baseline.intersection(errors.index))
    out = cells.join(clean.rename("clean")).assign(mce=ce.mce, relative_mce=ce.relative_mce)
    for grid in ("aligned", "offset"):
        drops = acc[acc["condition"] == f"patch_drop_{grid}"].groupby(["setting", "seed"])
        for share in DROPPED:
            out[f"drop{int(share * 100)}_{grid}"] = pd.Series(
                {cell: accuracy_at_share(d["level"], d["value"], share) for cell, d in drops})
    for condition in ("clean", "corrupted"):
        out[f"ece_{condition}"] = ece.xs(condition, level="condition")
    named = f"`{largest['name']}` ({len(baseline)} seed{'s' if len(baseline) > 1 else ''}, errors averaged)"
    return out, ce.ce.set_index(out.loc[ce.ce.index, "name"]), named


def study(runs: Runs) -> Study:
    acc, cells, ece = _cells(runs.rows)
    per_cell, ce, baseline = _per_cell(acc, cells, ece)
    settings = per_cell.reset_index().sort_values("seed").groupby("setting", sort=False).agg(
        name=("name", "first"), family=("family", "first"), train_size=("train_size", "first"),
        seeds=("seed", list), **{key: (key, list) for key in SHOWN})
    settings = settings.reset_index()
    order = settings.assign(size=settings["train_size"].fillna(math.inf)).sort_values(["family", "size"]).index
    return Study(per_cell, settings.loc[order].reset_index(drop=True), baseline, ce, acc)


def _mean(values: list[float]) -> str:
    return mean_interval([v for v in values if not math.isnan(v)]).format()


def table(s: Study) -> str:
    shown = s.settings[["name", "seeds"]].assign(seeds=[len(v) for v in s.settings["seeds"]])
    for key, title in SHOWN.items():
        shown[title] = [_mean(v) for v in s.settings[key]]
    return shown.rename(columns={"name": "setting"}).to_markdown(index=False)


def _difference(a: pd.Series, b: pd.Series, key: str, paired: bool) -> str:
    """'+3.1 [+0.4, +5.8] (paired t, n=3; better for the ViT shown)' for ViT (a) minus CNN (b)."""
    if paired:
        common = sorted(set(a["seeds"]) & set(b["seeds"]))
        pick = lambda side: [dict(zip(side["seeds"], side[key]))[seed] for seed in common]  # noqa: E731
        interval = difference_interval(pick(a), pick(b), paired=len(common) >= 2)
    else:
        interval = difference_interval(a[key], b[key], paired=False)
    bounds = "" if math.isnan(interval.low) else f" [{interval.low:+.1f}, {interval.high:+.1f}]"
    better = (interval.estimate < 0) == (key in LOWER_IS_BETTER)
    return (f"{interval.estimate:+.1f}{bounds} ({interval.method}, n={interval.n}; "
            f"{interval.verdict('better for the ' + ('ViT' if better else 'CNN'))})")


def _comparison(vit: pd.Series, cnn: pd.Series, paired: bool) -> list[str]:
    return [f"  - {SHOWN[key]}: ViT - CNN {_difference(vit, cnn, key, paired)}"
            for key in ("relative_mce", "mce", "drop50_aligned", "drop50_offset", "drop80_aligned", "drop80_offset",
                        "ece_clean", "ece_corrupted")]


def robustness_answer(runs: Runs, machine: str) -> list[str]:
    try:
        s = study(dataclasses.replace(runs, rows=runs.rows[runs.rows["machine"] == machine]))
    except Skip:
        return []
    vits, cnns = s.settings[s.settings["family"] == "vit"], s.settings[s.settings["family"] == "cnn"]
    lines = [f"**Robustness** (task robustness: {len(CORRUPTIONS)} corruptions at 5 severities, patch drop and "
             f"shuffle, on a fixed 2,000-image test subset; CE against {s.baseline}; the sides differ in dtype and "
             "in images seen, as their training cells do):", ""]
    for _, vit in vits.iterrows():
        same = cnns[cnns["train_size"].fillna(-1) == (-1 if pd.isna(vit["train_size"]) else vit["train_size"])]
        for _, cnn in same.iterrows():
            lines += [f"- Same training size, `{vit['name']}` against `{cnn['name']}` (paired by seed: same "
                      f"training subset), clean accuracy ViT - CNN {_difference(vit, cnn, 'clean', True)}:",
                      *_comparison(vit, cnn, paired=True)]
        if cnns.empty:
            continue
        gaps = [abs(np.mean(vit["clean"]) - np.mean(c)) for c in cnns["clean"]]
        cnn = cnns.iloc[int(np.argmin(gaps))]
        if min(gaps) > MATCHED:
            lines.append(f"- Matched clean accuracy for `{vit['name']}` ({np.mean(vit['clean']):.1f} %): no CNN "
                         f"setting within {MATCHED:g} points (nearest `{cnn['name']}`, {np.mean(cnn['clean']):.1f} "
                         "%): not answered")
            continue
        lines += [f"- Matched clean accuracy, `{vit['name']}` ({_mean(vit['clean'])}) against `{cnn['name']}` "
                  f"({_mean(cnn['clean'])}), unpaired:", *_comparison(vit, cnn, paired=False)]
    return lines + [""]


def _hue(s: Study) -> dict:
    """One line per setting, ViTs in blues and CNNs in oranges."""
    colours = palette({family: list(names) for family, names in s.settings.groupby("family")["name"]})
    return {"hue": "name", "palette": colours, "hue_order": sorted(colours)}


def _severity_figure(s: Study, out) -> str:
    frame = s.accuracy[s.accuracy["condition"].isin(list(CORRUPTIONS)) | (s.accuracy["condition"] == "clean")]
    clean = frame[frame["condition"] == "clean"]
    frame = pd.concat([frame[frame["condition"] != "clean"]] + [
        clean.assign(condition=name, level=0) for name in CORRUPTIONS])
    frame["group"] = [CORRUPTIONS[c].group for c in frame["condition"]]
    grid = sns.relplot(frame, x="level", y="value", col="group", col_order=list(GROUPS), kind="line", **_hue(s),
                       errorbar=None, marker="o", height=2.8, aspect=0.9, facet_kws={"sharey": True})
    grid.set_axis_labels("severity (0: clean)", "accuracy (%)")
    return save(grid.figure, out, "robustness_severity.png", "Accuracy over severity, averaged over the corruptions "
                "of each group and over seeds (bench/corruptions.py).")


def _occlusion_figure(s: Study, out) -> str:
    frame = s.accuracy[s.accuracy["condition"].str.startswith("patch_drop_")].copy()
    frame["grid"] = frame["condition"].str.removeprefix("patch_drop_")
    grid = sns.relplot(frame, x="level", y="value", col="grid", kind="line", marker="o", height=3, **_hue(s),
                       errorbar=("pi", 100))
    grid.set_axis_labels("share of the image dropped", "accuracy (%)")
    return save(grid.figure, out, "robustness_patch_drop.png", "Accuracy as square cells of img_size / 4 px are "
                "blacked out, on the grid of a ViT /7's patches (aligned) and offset by half a cell; lines: mean "
                "over seeds, bands: their range.")


def _heatmap(s: Study, out) -> str:
    ce = s.ce.groupby(level=0).mean()
    ce = ce.loc[[name for name in s.settings["name"] if name in ce.index], [c for c in CORRUPTIONS if c in ce]]
    fig, ax = plt.subplots(figsize=(1.0 + 0.5 * ce.shape[1], 0.6 + 0.4 * len(ce)))
    sns.heatmap(ce, annot=True, fmt=".0f", cmap="RdYlGn_r", center=100, ax=ax, cbar_kws={"label": "CE (%)"})
    ax.set(xlabel="corruption", ylabel="")
    return save(fig, out, "robustness_ce.png", f"Corruption error per corruption (mean over seeds), 100 = the baseline "
                f"{s.baseline.replace('`', '')}.")


def section(runs: Runs) -> str:
    s = study(runs)
    return "\n\n".join([table(s), _severity_figure(s, runs.out), _occlusion_figure(s, runs.out), _heatmap(s, runs.out)])
