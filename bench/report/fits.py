"""Learning curves fitted to the measurements, and what they forecast beyond the measured range.

Per model, dataset and budget of the converged protocol: Rosenfeld et al.'s envelope law (bench/stats/laws.py:
a power law with a floor, bent towards the random-guess error at small n) fitted in log error to the converged
sizes (every seed of a size converged; sizes that did not are left out and named), with a parametric bootstrap
whose noise is the seeds' own, and its back-test: the fit without the largest size, predicting that size's mean
with one new cell's seed noise. Per family: the same law in training FLOPs, fitted to the family's compute
frontier within the converged protocol (the cells no cheaper cell of the family beats; of cells with equal FLOPs,
the more accurate; the ViT paper's Figure 5). A forecast (the best ViT's and the best CNN's predicted accuracy at
10x and 100x the largest measured size, and where their curves meet) is an answer only when both back-tests
missed by at most 3 points; otherwise it is printed as unreliable.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import pandas as pd

from ..data import input_shape
from ..stats import Backtest, Crossover, Fit, Interval, NoFit, backtest, chance_error, crossover, fit
from .frame import Runs, accuracy_summary, from_scratch_on_whole_datasets, ok_metric

LAW = "envelope"  # knows the random-guess error: the small sizes bend towards it instead of being left out
RESAMPLES = 400  # bootstrap refits per curve
RELIABLE_POINTS = 3.0  # a back-test missing by more makes the forecast unreliable
FACTORS = (10, 100)  # forecast at these multiples of the largest measured size


@dataclass
class Curve:
    """One fitted (or unfittable) learning curve: x (training images, or training FLOPs) -> per-seed errors."""

    machine: str  # the device model (frame.machines)
    dataset: str
    group: object  # the budget (data-efficiency curves) or "frontier"
    label: str  # the model, or the family for a compute frontier
    family: str
    points: dict[float, list[float]]
    chance: float  # the random-guess error of the dataset
    what: str = ""  # dtype and protocol words, for the Answer
    left_out: list[float] = field(default_factory=list)  # sizes not converged
    fit: Fit | None = None
    why_not: str = ""
    backtest: Backtest | None = None
    backtest_why_not: str = ""

    @property
    def reliable(self) -> bool:
        return self.backtest is not None and self.backtest.reliable

    @property
    def x_min(self) -> float:
        return min(self.points)

    @property
    def x_max(self) -> float:
        return max(self.points)

    def predict(self, x: float, seeds: int | None = None) -> Interval:
        """The fitted accuracy (%) at x, with its bootstrap interval (and one new cell's noise, seeds given)."""
        (error,) = self.fit.predict([(x,)], seeds=seeds)
        return accuracy(error)


def accuracy(error: Interval) -> Interval:
    """An error interval (fraction) as an accuracy interval in %."""
    return Interval(100 * (1 - error.estimate), 100 * (1 - error.high), 100 * (1 - error.low), error.n,
                    error.method, tuple(100 * (1 - v) for v in error.values))


def _fitted(curve: Curve) -> Curve:
    try:
        curve.fit = fit(curve.points, LAW, chance=curve.chance, resamples=RESAMPLES)
    except NoFit as why:
        curve.why_not = str(why)
        return curve
    try:
        curve.backtest = backtest(curve.points, LAW, chance=curve.chance, threshold=RELIABLE_POINTS / 100,
                                  resamples=RESAMPLES)
    except NoFit as why:
        curve.backtest_why_not = f"no back-test: without the largest size, {why}"
    return curve


def chance_of(dataset: str) -> float:
    return chance_error(input_shape(dataset, 3, 1000)[1])


@functools.cache
def data_curves(runs: Runs) -> list[Curve]:
    """One curve per device model, dataset, budget and model of the converged protocol, from scratch on whole
    datasets."""
    acc = ok_metric(runs.rows, "accuracy", task=["train_eval"], protocol="converged")
    if acc.empty:
        return []
    summary = from_scratch_on_whole_datasets(accuracy_summary(runs.rows))
    summary = summary[summary["protocol"] == "converged"]
    curves = []
    for (machine, dataset, budget, label, dtype), group in summary.groupby(
            ["machine", "dataset", "budget", "label", "dtype"]):
        converged = group[group["converged"]]
        curve = Curve(machine, dataset, budget, label, group["family"].iloc[0],
                      {float(n): [1 - v / 100 for v in values] for n, values in zip(converged["subset"],
                                                                                     converged["values"])},
                      chance_of(dataset), f"{dtype}, {budget.label()}",
                      sorted(float(n) for n in group.loc[~group["converged"], "subset"]))
        curves.append(_fitted(curve))
    return curves


def frontier(points: pd.DataFrame) -> pd.DataFrame:
    """The points no cheaper point beats: ascending FLOPs, strictly falling error; of points with equal FLOPs
    (within 1 %), the one with the lower error is the candidate (a rule, not the rows' order)."""
    points = points.assign(cost=points["flops"].map(lambda f: round(math.log(f) / math.log(1.01))))
    points = points.sort_values(["cost", "error"]).drop_duplicates("cost")
    return points[points["error"] < points["error"].cummin().shift(fill_value=math.inf)]


@functools.cache
def frontier_curves(runs: Runs) -> list[Curve]:
    """Per device model, dataset and family: error against training FLOPs on the family's compute frontier, within the
    converged protocol (every setting trained from scratch on a whole dataset, every seed converged; its FLOPs the
    mean over its seeds). Compute-equal cells are another regime (stopped by the clock, not the data) and stay out."""
    summary = from_scratch_on_whole_datasets(accuracy_summary(runs.rows))
    if summary.empty:
        return []
    cells = summary[(summary["protocol"] == "converged") & summary["converged"] & summary["flops"].notna()]
    cells = cells.assign(error=1 - cells["mean"] / 100)
    curves = []
    for (machine, dataset, family), group in cells.groupby(["machine", "dataset", "family"]):
        front = frontier(group)
        curves.append(_fitted(Curve(machine, dataset, "frontier", family, family,
                                    {float(f): [1 - v / 100 for v in values] for f, values in zip(front["flops"],
                                                                                                front["values"])},
                                    chance_of(dataset), "converged cells")))
    return curves


@dataclass
class Forecast:
    vit: Curve
    cnn: Curve
    crossover: Crossover
    predictions: dict[int, tuple[Interval, Interval]]  # factor -> (ViT accuracy, CNN accuracy), in %
    reliable: bool
    why: str  # why it is unreliable ('' when reliable)

    @property
    def largest(self) -> float:
        return max(self.vit.x_max, self.cnn.x_max)


def _best(curves: list[Curve], family: str) -> Curve | None:
    """The fitted curve of the family that reaches the largest size, and of those the most accurate there."""
    fitted = [c for c in curves if c.family == family and c.fit is not None]
    return min(fitted, key=lambda c: (-c.x_max, sum(c.points[c.x_max]) / len(c.points[c.x_max])), default=None)


def miss(curve: Curve) -> str:
    """Why a curve's forecast is not reliable ('' when it is)."""
    if curve.backtest is None:
        return f"{curve.label}: {curve.backtest_why_not or curve.why_not}"
    if not curve.reliable:
        return f"{curve.label}'s back-test missed by {curve.backtest.mean_abs_error * 100:.1f} points"
    return ""


@functools.cache
def forecasts(runs: Runs) -> list[Forecast]:
    """Per device model, dataset and budget with a fitted ViT and a fitted CNN: the best of each, forecast."""
    out = []
    groups: dict[tuple, list[Curve]] = {}
    for curve in data_curves(runs):
        groups.setdefault((curve.machine, curve.dataset, curve.group), []).append(curve)
    for curves in groups.values():
        vit, cnn = _best(curves, "vit"), _best(curves, "cnn")
        if vit is None or cnn is None:
            continue
        largest = max(vit.x_max, cnn.x_max)
        predictions = {f: (vit.predict(f * largest), cnn.predict(f * largest)) for f in FACTORS}
        misses = [m for m in (miss(vit), miss(cnn)) if m]
        out.append(Forecast(vit, cnn, crossover(vit.fit, cnn.fit), predictions, not misses, "; ".join(misses)))
    return out
