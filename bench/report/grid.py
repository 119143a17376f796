"""The grid of model sizes x data sizes: one 2-D scaling law per family, its held-out-corner back-test, and the
answers it enables (the best model per data size, where the ViT overtakes, how the compute-optimal model grows).

Per device, dataset, budget rule, family and dtype of the converged protocol, from scratch on whole datasets:
the cells of at least two model sizes (m = the built model's parameters) at the sizes where every seed converged.
Two 2-D laws (bench/stats/laws.py: Rosenfeld et al.'s envelope, error = chance * z / sqrt(1 + z^2) with
z = a n^-alpha + b m^-beta + c, and the simpler power law e_inf + a n^-alpha + b m^-beta) are back-tested on the
held-out corner (fitted without every cell of the largest data size or the largest model, predicting those cells'
means with one new cell's seed noise); the one that misses least is kept and fitted to every cell. A back-test
within GOAL_POINTS meets the goal; beyond RELIABLE_POINTS the law's forecasts are printed as unreliable.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import numpy as np

from ..stats import Backtest, Crossover, Fit, Interval, NoFit, choose_law, crossover, fit, optimal_model_exponent
from .frame import Runs, accuracy_summary, from_scratch_on_whole_datasets
from .fits import RESAMPLES, accuracy, chance_of

LAWS_2D = ("envelope-2d", "power-2d")
GOAL_POINTS = 2.0  # the back-test's mean absolute error the grid aims at
RELIABLE_POINTS = 3.0  # more than this and the surface's forecasts are unreliable
MODEL_FACTOR = 4  # the crossover is also forecast for models this many times the largest measured


@dataclass
class Surface:
    """One family's grid: (n, m) -> per-seed errors, the law chosen by back-test and its fit to every cell."""

    device: str  # the device, or the device and its model where the runs hold several (report/frame.py: machines)
    dataset: str
    group: object  # the budget rule
    family: str
    dtype: str
    points: dict[tuple[float, float], list[float]]
    models: dict[float, str]  # m (parameters) -> the model's label
    chance: float
    left_out: list[tuple[float, str]] = field(default_factory=list)  # (n, label) of cells that did not converge
    tried: dict[str, Backtest | NoFit] = field(default_factory=dict)  # every law's back-test or why none
    untested: str = ""  # why no law could be back-tested ('' when one was)
    fit: Fit | None = None
    why_not: str = ""

    @property
    def backtest(self) -> Backtest | None:
        chosen = self.tried.get(self.fit.law.name) if self.fit is not None else None
        return chosen if isinstance(chosen, Backtest) else None

    @property
    def reliable(self) -> bool:
        return self.backtest is not None and self.backtest.mean_abs_error * 100 <= RELIABLE_POINTS

    @property
    def sizes(self) -> list[float]:
        return sorted({n for n, _ in self.points})

    @property
    def largest_model(self) -> float:
        return max(self.models)

    def predict(self, n: float, m: float, seeds: int | None = None) -> Interval:
        """The fitted accuracy (%) at (n, m) with its bootstrap interval (and one new cell's noise, seeds given)."""
        (error,) = self.fit.predict([(n, m)], seeds=seeds)
        return accuracy(error)


def _fitted(surface: Surface) -> Surface:
    """The law that back-tests better, fitted to every cell; without a possible back-test, the envelope law (the
    reference form), said to be untested."""
    try:
        law, surface.tried = choose_law(surface.points, LAWS_2D, chance=surface.chance,
                                        threshold=RELIABLE_POINTS / 100, resamples=RESAMPLES)
    except NoFit as why:
        law, surface.untested = LAWS_2D[0], f"without the held-out corner, {why}"
    try:
        surface.fit = fit(surface.points, law, chance=surface.chance, resamples=RESAMPLES)
    except NoFit as why:
        surface.why_not = str(why)
    return surface


@functools.cache
def surfaces(runs: Runs) -> list[Surface]:
    """One surface per device, dataset, budget rule, family and dtype with at least two model sizes."""
    summary = from_scratch_on_whole_datasets(accuracy_summary(runs.rows))
    summary = summary[summary["protocol"] == "converged"]
    if summary.empty:
        return []
    params = runs.rows.dropna(subset=["params"]).groupby("label")["params"].first()
    out = []
    for (machine, dataset, budget, family, dtype), group in summary.groupby(
            ["machine", "dataset", "budget", "family", "dtype"]):
        if group["label"].nunique() < 2:
            continue
        group = group.assign(m=group["label"].map(params).astype(float))
        converged = group[group["converged"]]
        surface = Surface(machine, dataset, budget, family, dtype,
                          {(float(n), m): [1 - v / 100 for v in values]
                           for n, m, values in zip(converged["subset"], converged["m"], converged["values"])},
                          dict(zip(group["m"], group["label"])), chance_of(dataset),
                          sorted((float(n), label) for n, label in zip(group.loc[~group["converged"], "subset"],
                                                                        group.loc[~group["converged"], "label"])))
        out.append(_fitted(surface))
    return out


def pairs(device: str, runs: Runs) -> list[tuple[Surface, Surface]]:
    """(ViT surface, CNN surface) on the same device, dataset and budget rule."""
    mine = [s for s in surfaces(runs) if s.device == device]
    return [(v, c) for v in mine if v.family == "vit" for c in mine
            if c.family == "cnn" and (c.dataset, c.group) == (v.dataset, v.group)]


# ----- what the surfaces answer ------------------------------------------------------------------------------


def gap(vit: Surface, cnn: Surface, n: float, vit_m: float, cnn_m: float) -> Interval:
    """The fitted ViT - CNN accuracy (points) at n, each at its model size; the two fits' refits drawn
    independently (one side shuffled, as in crossover)."""
    (v_point, v_boot), (c_point, c_boot) = vit.fit.curve([(n, vit_m)]), cnn.fit.curve([(n, cnn_m)])
    c_boot = c_boot[np.random.default_rng(1).permutation(len(c_boot))]
    count = min(len(v_boot), len(c_boot))
    diffs = 100 * (c_boot[:count, 0] - v_boot[:count, 0])  # accuracy difference = CNN error - ViT error
    diffs = diffs[np.isfinite(diffs)]
    tail = 50 * (1 - vit.fit.confidence)
    low, high = np.percentile(diffs, [tail, 100 - tail]) if diffs.size else (math.nan, math.nan)
    return Interval(float(100 * (c_point[0] - v_point[0])), float(low), float(high),
                    min(vit.fit.seeds, cnn.fit.seeds), "parametric bootstrap")


def best_models(surface: Surface, n: float) -> tuple[str, float, list[float]] | None:
    """The measured model with the highest mean accuracy at n: (label, m, accuracies %), None if none converged."""
    cells = {m: errors for (size, m), errors in surface.points.items() if size == n}
    if not cells:
        return None
    m = max(cells, key=lambda k: -np.mean(cells[k]))
    return surface.models[m], m, [100 * (1 - e) for e in cells[m]]


def crossovers(vit: Surface, cnn: Surface) -> dict[int, Crossover]:
    """Model-size factor (1: the largest measured models, MODEL_FACTOR: that many times larger) -> where the ViT
    meets the CNN."""
    return {k: crossover(vit.fit, cnn.fit, vit_m=k * vit.largest_model, cnn_m=k * cnn.largest_model)
            for k in (1, MODEL_FACTOR)}


def optimal_growth(surface: Surface) -> tuple[Interval | None, str]:
    """(alpha / beta, or None) and the words for it: with compute ~ n * m the compute-optimal model grows as
    m ~ n^(alpha / beta); only where both exponents are identified."""
    params = {p.name: p for p in surface.fit.parameters()}
    missing = [f"{name} not identified ({params[name].why})" for name in ("alpha", "beta")
               if not params[name].identified]
    if missing:
        return None, "; ".join(missing)
    return optimal_model_exponent(surface.fit), ""


# ----- the Answer's lines ------------------------------------------------------------------------------------


def _fitted_words(interval: Interval) -> str:
    """A fitted accuracy: '78.8 % [78.6, 79.0]' (the surface pools every cell: no seed count to print)."""
    return f"{interval.estimate:.1f} % [{interval.low:.1f}, {interval.high:.1f}]"


def _millions(m: float) -> str:
    return f"{m / 1e6:.2f}M"


def _law_words(surface: Surface) -> str:
    """The law kept, the other's back-test, and each exponent and the ceiling, identified or said not to be."""
    others = [f"{law}: " + (f"off by {b.mean_abs_error * 100:.1f} points" if isinstance(b, Backtest) else str(b))
              for law, b in surface.tried.items() if law != surface.fit.law.name]
    chosen = f"kept over {'; '.join(others)}" if others else "the reference form: no law could be back-tested"
    words = [f"law {surface.fit.law.name} ({surface.fit.law.formula}; {chosen})"]
    for param in surface.fit.parameters():
        if param.name in ("alpha", "beta"):
            interval = param.interval
            words.append(f"{param.name} {interval.estimate:.2f} [{interval.low:.2f}, {interval.high:.2f}]"
                         if param.identified else
                         f"{param.name} not identified ({param.why})")
    floor = surface.fit.floor()
    words.append(f"accuracy ceiling {_fitted_words(accuracy(floor.interval))}" if floor.identified else
                 f"accuracy ceiling not identified ({floor.why})")
    return "; ".join(words)


def _backtest_words(surface: Surface) -> str:
    test = surface.backtest
    if test is None:
        return f"no held-out-corner back-test ({surface.untested or surface.tried.get(surface.fit.law.name)})"
    error = test.mean_abs_error * 100
    verdict = ("goal met" if error <= GOAL_POINTS else "reliable, short of the 2-point goal"
               if error <= RELIABLE_POINTS else "UNRELIABLE (more than 3 points off)")
    return (f"back-test on the held-out corner (fitted without {_sizes(surface.sizes[-1:])} images and without "
            f"`{surface.models[surface.largest_model]}`, predicting those {len(test.held_out)} cells): mean absolute "
            f"error {error:.1f} points, {test.inside} of {len(test.held_out)} inside their 95 % prediction "
            f"intervals: {verdict}")


def _sizes(sizes) -> str:
    return ", ".join(f"{n:,.0f}" for n in sizes)


def surface_line(surface: Surface) -> str:
    labels = ", ".join(f"`{surface.models[m]}`" for m in sorted(surface.models))
    seeds = sorted({len(v) for v in surface.points.values()})
    head = (f"- {surface.family.upper() if surface.family == 'cnn' else 'ViT'} ({labels}: "
            f"{_millions(min(surface.models))}-{_millions(surface.largest_model)} parameters, {surface.dtype}; "
            f"{len(surface.points)} cells at {_sizes(surface.sizes)} images, {'-'.join(map(str, seeds))} seeds"
            + (f"; left out as not converged: {', '.join(f'{label} at {n:,.0f}' for n, label in surface.left_out)}"
               if surface.left_out else "") + ")")
    if surface.fit is None:
        return f"{head}: no fit ({surface.why_not})"
    return f"{head}: {_law_words(surface)}; {_backtest_words(surface)}"


def _measured(best: tuple[str, float, list[float]] | None, surface: Surface, n: float) -> str:
    if best is None:
        return "-"
    label, m, values = best
    text = f"`{label}` ({_millions(m)}): " + (f"{values[0]:.1f} % (1 seed)" if len(values) == 1 else
                                               f"{np.mean(values):.1f} % (mean of {len(values)} seeds)")
    if surface.fit is not None:
        text += f"; fit {_fitted_words(surface.predict(n, m))}"
    return text


def best_table(vit: Surface, cnn: Surface) -> list[str]:
    lines = ["| training images | best ViT (measured; fitted surface) | best CNN (measured; fitted surface) | "
             "ViT - CNN between the two bests (points, fitted) |", "|---|---|---|---|"]
    for n in sorted(set(vit.sizes) | set(cnn.sizes)):
        v, c = best_models(vit, n), best_models(cnn, n)
        margin = "n/a"
        if v is not None and c is not None and vit.fit is not None and cnn.fit is not None:
            difference = gap(vit, cnn, n, v[1], c[1])
            margin = (f"{difference.estimate:+.1f} [{difference.low:+.1f}, {difference.high:+.1f}] "
                      f"({difference.verdict('ViT - CNN difference')}; measured {np.mean(v[2]) - np.mean(c[2]):+.1f})")
        lines.append(f"| {n:,.0f} | {_measured(v, vit, n)} | {_measured(c, cnn, n)} | {margin} |")
    return lines


def crossover_lines(vit: Surface, cnn: Surface) -> list[str]:
    if not (vit.reliable and cnn.reliable):
        why = [f"{s.family}: " + ("no back-test" if s.backtest is None else
                                  f"back-test off by {s.backtest.mean_abs_error * 100:.1f} points")
               for s in (vit, cnn) if not s.reliable]
        return [f"- UNRELIABLE, not an answer ({'; '.join(why)})"]
    lines = []
    for k, found in crossovers(vit, cnn).items():
        models = (f"`{vit.models[vit.largest_model]}` ({_millions(vit.largest_model)}) against "
                  f"`{cnn.models[cnn.largest_model]}` ({_millions(cnn.largest_model)})" if k == 1 else
                  f"{k}x larger models ({_millions(k * vit.largest_model)} against "
                  f"{_millions(k * cnn.largest_model)} parameters; {k}x beyond the measured model sizes)")
        if found.status == "predicted":
            n = found.n_star
            where = (f"{found.extrapolation_factor:,.1f}x beyond the largest measured size" if
                     found.extrapolation_factor > 1 else "inside the measured range")
            lines.append(f"- {models}: n* = {n.estimate:,.0f} images [{n.low:,.0f}, {n.high:,.0f}] ({where}; "
                         f"{found.reason})")
        else:
            lines.append(f"- {models}: {found.status} ({found.reason})")
    return lines


def growth_line(surface: Surface) -> str:
    exponent, why = optimal_growth(surface)
    name = "ViT" if surface.family == "vit" else "CNN"
    if exponent is None:
        return f"- {name}: not identified ({why})"
    return (f"- {name}: m_opt ~ n^{exponent.estimate:.2f} [{exponent.low:.2f}, {exponent.high:.2f}] (alpha / beta "
            f"of the fit; {'reliable' if surface.reliable else 'UNRELIABLE'} surface)")


def grid_answer(runs: Runs, machine: str) -> list[str]:
    lines = []
    for vit, cnn in pairs(machine, runs):
        lines += [f"**Model size x data size on {vit.dataset}** (converged protocol, {vit.group.label()}; one 2-D "
                  "law per family fitted to every converged cell, parametric-bootstrap 95 % intervals; "
                  "[figures](#model-size-x-data-size)):", "", surface_line(vit), surface_line(cnn), ""]
        lines += ["**Best model per data size** (the measured cell with the highest mean; the gap between the two "
                  "bests from the fitted surfaces, the two fits' refits independent):", ""]
        lines += best_table(vit, cnn) + [""]
        if vit.fit is None or cnn.fit is None:
            continue
        lines += ["**Where the ViT overtakes the CNN** (extrapolation from the fitted surfaces; searched up to "
                  "1e9 images):", ""] + crossover_lines(vit, cnn) + [""]
        lines += ["**How the compute-optimal model grows with data** (training compute ~ n * m, a fixed number of "
                  "epochs; minimising the fitted error at fixed compute):", ""]
        lines += [growth_line(vit), growth_line(cnn), ""]
    return lines
