"""Learning curves fitted to the measurements, and what they forecast beyond the measured range.

Per model, protocol and budget: error(n) = e_inf + a * n^(-b) (bench/stats.py: a saturating power law, Hestness
et al. 2017, Zhai et al. 2022) fitted to the converged points of the data-efficiency study (every seed of a size
converged; sizes that did not are left out and named), with bootstrap intervals over seeds, and its back-test:
the fit without the largest size, predicting it. Per family: the same law in training FLOPs fitted to the family's
compute frontier (the cells no cheaper cell of the family beats; the ViT paper's Figure 5). A forecast (the best
ViT's and the best CNN's predicted accuracy at 10x and 100x the largest measured size, and where their curves
meet) is an answer only when both back-tests missed by at most 3 points; otherwise it is printed as unreliable.
Every curve's bootstrap draws the same resample of seed indices at each size (seed 0 of the generator), and each
size's errors are in seed order, so where two curves share their sizes and seeds (a seed draws the same subset for
every model) the crossover's bootstrap pairs them by seed.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import pandas as pd

from ..stats import Backtest, Crossover, Interval, LearningCurve, NoFit, backtest, crossover, fit_power_law
from ..results import setting_columns
from .data import Runs, accuracy_summary, flagged, from_scratch_on_whole_datasets, ok_metric

RESAMPLES = 500  # bootstrap refits per curve
MIN_SIZES = 4  # a fit needs this many sizes (a back-test one more)
RELIABLE_POINTS = 3.0  # a back-test missing by more makes the forecast unreliable
FACTORS = (10, 100)  # forecast at these multiples of the largest measured size


@dataclass
class Curve:
    """One fitted (or unfittable) learning curve: x (training images, or training FLOPs) -> per-seed errors."""

    device: str
    dataset: str
    group: object  # the budget (data-efficiency curves) or "frontier"
    label: str  # the model, or the family for a compute frontier
    family: str
    points: dict[float, list[float]]
    left_out: list[float] = field(default_factory=list)  # sizes not converged
    fit: LearningCurve | None = None
    why_not: str = ""
    backtest: Backtest | None = None
    backtest_why_not: str = ""

    @property
    def reliable(self) -> bool:
        return self.backtest is not None and abs(self.backtest.error) * 100 <= RELIABLE_POINTS

    def accuracy(self, interval: Interval) -> Interval:
        """An error interval as an accuracy interval in %."""
        return Interval(100 * (1 - interval.estimate), 100 * (1 - interval.high), 100 * (1 - interval.low),
                        interval.n, interval.method)


def _fitted(curve: Curve) -> Curve:
    try:
        curve.fit = fit_power_law(curve.points, min_sizes=MIN_SIZES, resamples=RESAMPLES)
    except NoFit as why:
        curve.why_not = str(why)
        return curve
    try:
        curve.backtest = backtest(curve.points, threshold=RELIABLE_POINTS / 100, min_sizes=MIN_SIZES,
                                  resamples=RESAMPLES)
    except NoFit as why:
        curve.backtest_why_not = f"no back-test: without the largest size the fit {why}"
    return curve


@functools.cache
def data_curves(runs: Runs) -> list[Curve]:
    """One curve per device, dataset, budget and model of the converged protocol, from scratch on whole datasets."""
    acc = ok_metric(runs.rows, "accuracy", task=["train_eval"], protocol="converged")
    if acc.empty:
        return []
    summary = from_scratch_on_whole_datasets(accuracy_summary(runs.rows))
    summary = summary[summary["protocol"] == "converged"]
    curves = []
    for (device, _, dataset, budget, label), group in summary.groupby(["device", "device_name", "dataset", "budget",
                                                                      "label"]):
        converged = group[group["converged"]]
        curve = Curve(device, dataset, budget, label, group["family"].iloc[0],
                      {float(n): [1 - v / 100 for v in values] for n, values in zip(converged["subset"],
                                                                                     converged["values"])},
                      sorted(float(n) for n in group.loc[~group["converged"], "subset"]))
        curves.append(_fitted(curve))
    return curves


def _frontier(points: pd.DataFrame) -> pd.DataFrame:
    """The points no cheaper point beats (ascending cost, strictly falling error)."""
    points = points.sort_values("flops")
    return points[points["error"] < points["error"].cummin().shift(fill_value=math.inf)]


@functools.cache
def frontier_curves(runs: Runs) -> list[Curve]:
    """Per device, dataset and family: error against training FLOPs on the family's compute frontier (every setting
    trained from scratch on a whole dataset, either protocol; its FLOPs the mean over its seeds)."""
    rows = ok_metric(runs.rows, "accuracy", task=["train_eval"])
    rows = rows[(rows["route"] == "scratch") & ~rows["class_subset"].astype(bool) & ~flagged(rows["diverged"])]
    if rows.empty:
        return []
    rows["flops"] = rows["cell_id"].map(ok_metric(runs.rows, "train_flops").groupby("cell_id")["value"].first())
    cells = rows.dropna(subset=["flops"]).groupby([*setting_columns(), "device_name"], dropna=False, sort=False).agg(
        flops=("flops", "mean"), values=("value", list), family=("family", "first"))
    cells["error"] = [1 - sum(v) / len(v) for v in cells["values"]]
    curves = []
    for (device, _, dataset, family), group in cells.reset_index().groupby(["device", "device_name", "dataset",
                                                                            "family"]):
        front = _frontier(group)
        curves.append(_fitted(Curve(device, dataset, "frontier", family, family,
                                    {float(f): [1 - v for v in values] for f, values in zip(front["flops"],
                                                                                          front["values"])})))
    return curves


@dataclass
class Forecast:
    vit: Curve
    cnn: Curve
    crossover: Crossover | None
    predictions: dict[int, tuple[Interval, Interval]]  # factor -> (ViT accuracy, CNN accuracy), in %
    reliable: bool
    why: str  # why it is unreliable ('' when reliable)


def _best(curves: list[Curve], family: str) -> Curve | None:
    """The fitted curve of the family that reaches the largest size, and of those the most accurate there."""
    fitted = [c for c in curves if c.family == family and c.fit is not None]
    return min(fitted, key=lambda c: (-max(c.points), sum(c.points[max(c.points)]) / len(c.points[max(c.points)])),
               default=None)


@functools.cache
def forecasts(runs: Runs) -> list[Forecast]:
    """Per device, dataset and budget with a fitted ViT and a fitted CNN: the best of each, forecast."""
    out = []
    groups: dict[tuple, list[Curve]] = {}
    for curve in data_curves(runs):
        groups.setdefault((curve.device, curve.dataset, curve.group), []).append(curve)
    for curves in groups.values():
        vit, cnn = _best(curves, "vit"), _best(curves, "cnn")
        if vit is None or cnn is None:
            continue
        largest = max(vit.fit.n_max, cnn.fit.n_max)
        predictions = {f: (vit.accuracy(vit.fit.predict(f * largest)), cnn.accuracy(cnn.fit.predict(f * largest)))
                       for f in FACTORS}
        misses = [f"{c.label}: {c.backtest_why_not}" if c.backtest is None else
                  f"{c.label}'s back-test missed by {abs(c.backtest.error) * 100:.1f} points"
                  for c in (vit, cnn) if not c.reliable]
        out.append(Forecast(vit, cnn, crossover(vit.fit, cnn.fit), predictions, not misses, "; ".join(misses)))
    return out
