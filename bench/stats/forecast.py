"""What fitted laws say beyond the cells: back-tests (the law fitted without the largest cells, predicting them),
the data size at which the ViT's curve meets the CNN's, and how the compute-optimal model size grows with data."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import brentq

from .intervals import Interval
from .laws import Coords, Fit, NoFit, fit


def _key(coords) -> Coords:
    return (float(coords),) if np.isscalar(coords) else tuple(float(c) for c in coords)


# ----- back-tests --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HeldOut:
    """One held-out cell: its prediction interval (the curve plus one new cell's seed noise) and measured mean."""

    coords: Coords
    predicted: Interval
    measured: float

    @property
    def error(self) -> float:  # predicted - measured, in error units
        return self.predicted.estimate - self.measured

    @property
    def inside(self) -> bool:
        return self.predicted.low <= self.measured <= self.predicted.high


@dataclass(frozen=True)
class Backtest:
    """The law fitted without the held-out cells (1-D: the largest n; 2-D: every cell of the largest n or the
    largest m, the grid's far corner) and their prediction. reliable: mean absolute error <= threshold."""

    law: str
    held_out: tuple[HeldOut, ...]
    threshold: float

    @property
    def mean_abs_error(self) -> float:
        return float(np.mean([abs(h.error) for h in self.held_out]))

    @property
    def reliable(self) -> bool:
        return self.mean_abs_error <= self.threshold

    @property
    def inside(self) -> int:
        return sum(h.inside for h in self.held_out)


def held_out_corner(points: Mapping) -> tuple[dict, dict]:
    """(fitted cells, held-out cells): 1-D, the largest n held out; 2-D, every cell at the largest n or the
    largest m."""
    cells = {_key(k): v for k, v in points.items()}
    largest = np.max(np.array(list(cells)), axis=0)
    held = {k: v for k, v in cells.items() if any(c == top for c, top in zip(k, largest))}
    return {k: v for k, v in cells.items() if k not in held}, held


def backtest(points: Mapping, law: str, *, chance: float, threshold: float = 0.03, **fit_kwargs) -> Backtest:
    """Fit without the held-out corner, predict each held-out cell's mean (with its own number of seeds)."""
    fitted, held = held_out_corner(points)
    if not held or not fitted:
        raise NoFit("nothing to hold out")
    model = fit(fitted, law, chance=chance, **fit_kwargs)
    rows = []
    for coords, errors in sorted(held.items()):
        (predicted,) = model.predict([coords], seeds=len(errors))
        rows.append(HeldOut(coords, predicted, float(np.mean(errors))))
    return Backtest(model.law.name, tuple(rows), threshold)


def choose_law(points: Mapping, laws: Sequence[str], *, chance: float, **fit_kwargs) -> tuple[str, dict]:
    """The law whose held-out-corner back-test misses least (mean absolute error), with every candidate's
    back-test or the reason it has none: (law name, {law: Backtest | NoFit})."""
    tried: dict[str, Backtest | NoFit] = {}
    for law in laws:
        try:
            tried[law] = backtest(points, law, chance=chance, **fit_kwargs)
        except NoFit as why:
            tried[law] = why
    scored = {law: b.mean_abs_error for law, b in tried.items() if isinstance(b, Backtest)}
    if not scored:
        raise NoFit("; ".join(f"{law}: {why}" for law, why in tried.items()))
    return min(scored, key=scored.get), tried


# ----- crossover ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Crossover:
    """Where the ViT's error curve meets the CNN's (ViT worse below n_star, better above), each family at a fixed
    model size for 2-D laws.

    status: "predicted" (the point fits cross, and so do at least `confidence` of the bootstrap pairs), "none
    predicted" (at most (1 - confidence) / 2 of the pairs cross below max_n), "already ahead" (the ViT's fitted
    error is below the CNN's over the whole measured range), or "not determined"; reason says why.
    """

    n_star: Interval | None
    status: str
    reason: str
    share_crossing: float
    extrapolation_factor: float  # n_star / the largest measured n (nan without n_star)


def _catch_up(gap: np.ndarray, log_grid: np.ndarray) -> float | None:
    """The log n where gap (ViT - CNN error on log_grid) turns from > 0 to <= 0 for the last time, the ViT
    staying ahead to the grid's end (linear interpolation between grid points); None otherwise."""
    behind = np.flatnonzero(gap > 0)
    if gap[-1] > 0 or behind.size == 0:
        return None
    i = behind[-1]
    return float(log_grid[i] + (log_grid[i + 1] - log_grid[i]) * gap[i] / (gap[i] - gap[i + 1]))


def crossover(vit: Fit, cnn: Fit, *, vit_m: float | None = None, cnn_m: float | None = None,
              max_n: float = 1e9, grid: int = 400) -> Crossover:
    """The training-set size at which the ViT catches up with the CNN, searched from the smallest fitted n to
    max_n on a log grid (root refined by brentq for the point fits); 2-D laws at model sizes vit_m and cnn_m."""
    n_min = min(vit.coords[:, 0].min(), cnn.coords[:, 0].min())
    n_measured = max(vit.coords[:, 0].max(), cnn.coords[:, 0].max())
    log_grid = np.linspace(math.log(n_min), math.log(max_n), grid)

    def at(fitted: Fit, m: float | None, log_n: np.ndarray) -> list[Coords]:
        return [(math.exp(x),) if fitted.law.dims == 1 else (math.exp(x), m) for x in np.atleast_1d(log_n)]

    (v_point, v_boot), (c_point, c_boot) = vit.curve(at(vit, vit_m, log_grid)), cnn.curve(at(cnn, cnn_m, log_grid))
    point = _catch_up(v_point - c_point, log_grid)
    if point is not None:
        gap = lambda x: float(vit.curve(at(vit, vit_m, x))[0][0] - cnn.curve(at(cnn, cnn_m, x))[0][0])  # noqa: E731
        i = np.searchsorted(log_grid, point)
        point = brentq(gap, log_grid[max(i - 1, 0)], log_grid[min(i, grid - 1)]) if i else point
    # The two fits' refits are independent draws: fits made with the same generator seed draw the same noise in
    # the same order, so pairing refit i with refit i would cancel their errors in the gap. Shuffle one side.
    c_boot = c_boot[np.random.default_rng(1).permutation(len(c_boot))]
    count = min(len(v_boot), len(c_boot))
    gaps = v_boot[:count] - c_boot[:count]
    valid = np.all(np.isfinite(gaps), axis=1)
    roots = [_catch_up(g, log_grid) for g in gaps[valid]]
    crossing = np.exp([r for r in roots if r is not None])
    share = crossing.size / len(roots) if roots else math.nan
    confidence = vit.confidence
    n_star = None
    if point is not None:
        low, high = (np.percentile(crossing, [50 * (1 - confidence), 50 * (1 + confidence)]) if crossing.size
                     else (math.nan, math.nan))
        n_star = Interval(math.exp(point), float(low), float(high), min(vit.seeds, cnn.seeds), "parametric bootstrap")
    factor = math.nan if point is None else math.exp(point) / n_measured
    measured = log_grid <= math.log(n_measured)
    if np.all(v_point[measured] < c_point[measured]):
        status, reason = "already ahead", "the ViT's fitted error is below the CNN's over the whole measured range"
    elif not roots:
        status, reason = "not determined", "no bootstrap refits to go on"
    elif share <= (1 - confidence) / 2:
        status, reason = "none predicted", f"{share:.0%} of the bootstrap fits cross below n = {max_n:.0e}"
    elif point is not None and share >= confidence:
        status, reason = "predicted", f"{share:.0%} of the bootstrap fits cross"
    else:
        status, reason = "not determined", (f"{share:.0%} of the bootstrap fits cross below n = {max_n:.0e}"
                                            + ("" if point is not None else "; the point fits do not"))
    return Crossover(n_star, status, reason, share, factor)


# ----- compute-optimal model size ----------------------------------------------------------------------------


def optimal_model_exponent(fitted: Fit) -> Interval:
    """alpha / beta of a 2-D law: with training compute proportional to n * m (a fixed number of epochs, FLOPs
    per image proportional to parameters), the compute-optimal model grows with the data as m ~ n^(alpha/beta)
    (minimise a n^-alpha + b m^-beta at n m = C). Its bootstrap interval over the refits."""
    if fitted.law.dims != 2:
        raise ValueError("the compute-optimal model size needs a 2-D law")
    ok = np.all(np.isfinite(fitted.boot), axis=1)
    ratio = fitted.boot[ok, 1] / fitted.boot[ok, 3]
    tail = 50 * (1 - fitted.confidence)
    low, high = np.percentile(ratio, [tail, 100 - tail]) if ratio.size else (math.nan, math.nan)
    return Interval(float(fitted.theta[1] / fitted.theta[3]), float(low), float(high), fitted.seeds,
                    "parametric bootstrap")
