"""Scaling laws of test error, fitted to measured cells: error(n) of the training-set size n, or error(n, m) of
n and the model size m (parameters), each cell a mean over its seeds.

Forms (LAWS; Rosenfeld et al. 2020, "A constructive prediction of the generalization error across scales"):
  envelope    error = chance * z / sqrt(1 + z^2), z = a n^-alpha [+ b m^-beta] + c
              a power law with a floor where z is small, bent towards the random-guess error (chance, 1 - 1 /
              classes) where z is large (small n). Rosenfeld's eta is absorbed into a, b and c (their form is
              unchanged when a, b, c and eta are scaled together), so the fit has one parameter fewer.
  power       error = e_inf + a n^-alpha [+ b m^-beta] (Hestness et al. 2017), blind to chance level
The irreducible error (floor) is chance * c / sqrt(1 + c^2) or e_inf.

Fitting: weighted least squares in log error (a cell of k seeds has weight k), soft-L1 (robust) loss, from
several starts, coordinates in log n (and log m) about their geometric means. Uncertainty: a parametric bootstrap
around the point fit whose noise is the seeds' own: sigma^2, the pooled variance of a seed's log error within
cells (or the fit's residual variance, where an F test says the law fits worse than the seeds agree),
drawn afresh per refit from its scaled chi^2 (so that few seeds give t-like, wider intervals); where an F test
finds no lack of fit, the residual variance is pooled in as in an ordinary regression. Percentile
intervals over the refits; a prediction for one new cell adds that cell's seed noise.

Identification: a parameter is "not identified" when the point fit sits on a bound of its range, or so many
refits do that an end of its interval is the bound itself; the report then gives what is identified (a one-sided
bound, the local slope), never an interval of zero width at a constraint.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import least_squares
from scipy.stats import f as f_dist

from .intervals import Interval

Coords = tuple[float, ...]  # (n,) or (n, m)


class NoFit(ValueError):
    """The law cannot be fitted to these cells; the message is a one-line reason."""


# ----- the forms ---------------------------------------------------------------------------------------------


def _col(theta: np.ndarray, i: int) -> np.ndarray:
    return theta[..., i, None]  # (..., 1): broadcasts against the cells


def _envelope(u: np.ndarray, theta: np.ndarray, chance: float) -> np.ndarray:
    z = _col(theta, 0) * np.exp(-_col(theta, 1) * u[:, 0]) + _col(theta, -1)
    if u.shape[1] == 2:
        z = z + _col(theta, 2) * np.exp(-_col(theta, 3) * u[:, 1])
    return chance * z / np.sqrt(1 + z * z)


def _power(u: np.ndarray, theta: np.ndarray, chance: float) -> np.ndarray:
    error = _col(theta, -1) + _col(theta, 0) * np.exp(-_col(theta, 1) * u[:, 0])
    if u.shape[1] == 2:
        error = error + _col(theta, 2) * np.exp(-_col(theta, 3) * u[:, 1])
    return error


@dataclass(frozen=True)
class Law:
    """A form in one or two dimensions. Parameters are (a, alpha[, b, beta], floor parameter); a and b are
    stored at the cells' geometric-mean n (m) and reported at n = 1 (m = 1)."""

    name: str
    formula: str
    dims: int
    error: Callable[[np.ndarray, np.ndarray, float], np.ndarray]  # (u (k, dims), theta (..., p), chance) -> (..., k)
    floor_param: str  # c or e_inf
    floor: Callable[[np.ndarray, float], np.ndarray]  # (theta (..., p), chance) -> irreducible error

    @property
    def params(self) -> tuple[str, ...]:
        return ("a", "alpha", "b", "beta", self.floor_param)[: 2 * self.dims] + (self.floor_param,)

    def bounds(self, chance: float) -> tuple[np.ndarray, np.ndarray]:
        scale, exponent = (0.0, 1e4), (0.01, 3.0)
        floor = (0.0, 1e3) if self.floor_param == "c" else (0.0, chance)
        lower, upper = zip(*([scale, exponent] * self.dims + [floor]))
        return np.array(lower), np.array(upper)


LAWS: dict[str, Law] = {law.name: law for law in (
    Law("envelope", "chance * z / sqrt(1 + z^2), z = a n^-alpha + c", 1, _envelope, "c",
        lambda t, chance: chance * t[..., -1] / np.sqrt(1 + t[..., -1] ** 2)),
    Law("power", "e_inf + a n^-alpha", 1, _power, "e_inf", lambda t, chance: t[..., -1]),
    Law("envelope-2d", "chance * z / sqrt(1 + z^2), z = a n^-alpha + b m^-beta + c", 2, _envelope, "c",
        lambda t, chance: chance * t[..., -1] / np.sqrt(1 + t[..., -1] ** 2)),
    Law("power-2d", "e_inf + a n^-alpha + b m^-beta", 2, _power, "e_inf", lambda t, chance: t[..., -1]),
)}


# ----- fitted laws -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Param:
    """One parameter of a fit: its interval when identified, otherwise why not and the side that is known."""

    name: str
    estimate: float
    interval: Interval  # low or high is nan on a side that sits on the bound
    identified: bool
    why: str = ""  # why not identified


@dataclass
class Fit:
    law: Law
    chance: float
    theta: np.ndarray  # (p,) point fit, a and b at the reference coordinates
    boot: np.ndarray  # (B, p) refits, nan rows where a refit failed
    ref: np.ndarray  # (dims,) log of the reference coordinates
    sigma: float  # log-space noise of one seed's error
    df: int  # degrees of freedom of sigma
    coords: np.ndarray  # (cells, dims) the fitted cells' coordinates
    seeds: int  # fewest seeds of a fitted cell
    confidence: float = 0.95

    def _u(self, coords: Sequence[Coords]) -> np.ndarray:
        return np.log(np.asarray(coords, dtype=float).reshape(len(coords), self.law.dims)) - self.ref

    def _percentiles(self, samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        tail = 50 * (1 - self.confidence)
        return np.nanpercentile(samples, tail, axis=0), np.nanpercentile(samples, 100 - tail, axis=0)

    def curve(self, coords: Sequence[Coords]) -> tuple[np.ndarray, np.ndarray]:
        """(point errors (k,), refits' errors (B, k)) at the coordinates."""
        u = self._u(coords)
        return self.law.error(u, self.theta, self.chance), self.law.error(u, self.boot, self.chance)

    def predict(self, coords: Sequence[Coords], seeds: int | None = None) -> list[Interval]:
        """The mean error at each coordinate: the curve's uncertainty, plus (seeds given) the seed noise of one new
        cell of that many seeds, i.e. a prediction interval for its measured mean."""
        point, boot = self.curve(coords)
        if seeds is not None:
            rng = np.random.default_rng(1)
            sigma = self.sigma * np.sqrt(self.df / rng.chisquare(self.df, size=(len(boot), 1)))
            boot = boot * np.exp(rng.normal(0.0, 1.0, boot.shape) * sigma / math.sqrt(seeds))
        low, high = self._percentiles(boot)
        method = "parametric bootstrap" + (f", one new cell of {seeds} seeds" if seeds else "")
        return [Interval(float(p), float(lo), float(hi), self.seeds, method) for p, lo, hi in zip(point, low, high)]

    def local_slope(self, coords: Coords, axis: int = 0) -> Interval:
        """d log(error) / d log(n) (axis 0) or d log(m) (axis 1) at coords: how fast the error falls there, which
        the cells identify even where the floor is not."""
        step = np.zeros(self.law.dims)
        step[axis] = 0.01
        at = np.log(np.asarray(coords, dtype=float))
        up, down = [tuple(np.exp(at + s)) for s in (step, -step)]
        (p_up, b_up), (p_down, b_down) = self.curve([up]), self.curve([down])
        slope = (np.log(p_up) - np.log(p_down)) / 0.02
        boot = (np.log(b_up) - np.log(b_down))[:, 0] / 0.02
        low, high = self._percentiles(boot)
        return Interval(float(slope[0]), float(low), float(high), self.seeds, "parametric bootstrap")

    def _natural(self, theta: np.ndarray) -> np.ndarray:
        """Parameters with a (and b) at n = 1 (m = 1) instead of at the reference coordinates."""
        out = np.array(theta, dtype=float, copy=True)
        for d in range(self.law.dims):
            out[..., 2 * d] = theta[..., 2 * d] * np.exp(theta[..., 2 * d + 1] * self.ref[d])
        return out

    def parameters(self) -> list[Param]:
        """Every parameter (a and b at n = 1, m = 1) and the floor, identified or not."""
        lower, upper = self.law.bounds(self.chance)
        tol = 1e-4 * (1 + np.abs(np.concatenate([lower, upper])))
        ok = np.all(np.isfinite(self.boot), axis=1)
        at_low = np.abs(self.boot[ok] - lower) <= tol[: lower.size]
        at_high = np.abs(self.boot[ok] - upper) <= tol[lower.size:]
        point_low = np.abs(self.theta - lower) <= tol[: lower.size]
        point_high = np.abs(self.theta - upper) <= tol[lower.size:]
        natural, boot = self._natural(self.theta), self._natural(self.boot[ok])
        tail = (1 - self.confidence) / 2
        out = []
        for i, name in enumerate(self.law.params):
            low, high = self._percentiles(boot[:, i])
            low_bound, high_bound = at_low[:, i].mean() >= tail, at_high[:, i].mean() >= tail
            why = ""
            if point_low[i] or point_high[i]:
                why = f"the fit sits on the bound {name} = {lower[i] if point_low[i] else upper[i]:g}"
            elif low_bound or high_bound:
                share = max(at_low[:, i].mean(), at_high[:, i].mean())
                why = f"{share:.0%} of the bootstrap refits sit on a bound of {name}"
            interval = Interval(float(natural[i]), math.nan if low_bound or point_low[i] else float(low),
                                math.nan if high_bound or point_high[i] else float(high), self.seeds,
                                "parametric bootstrap")
            out.append(Param(name, float(natural[i]), interval, not why, why))
        return out

    def floor(self) -> Param:
        """The irreducible error (n, m -> infinity), identified as its parameter is."""
        param = next(p for p in self.parameters() if p.name == self.law.floor_param)
        ok = np.all(np.isfinite(self.boot), axis=1)
        low, high = self._percentiles(self.law.floor(self.boot[ok], self.chance))
        estimate = float(self.law.floor(self.theta, self.chance))
        interval = Interval(estimate, math.nan if math.isnan(param.interval.low) else float(low),
                            math.nan if math.isnan(param.interval.high) else float(high), self.seeds,
                            "parametric bootstrap")
        return Param("floor", estimate, interval, param.identified, param.why)

    def extrapolation(self, coords: Coords) -> float:
        """How far beyond the fitted cells coords lie: the largest factor by which a coordinate exceeds its
        largest fitted value (at most 1 inside the range)."""
        return float(np.max(np.asarray(coords, dtype=float) / self.coords.max(axis=0)))


# ----- fitting -----------------------------------------------------------------------------------------------


def _cells(points: Mapping[Coords, Sequence[float]], dims: int, chance: float) -> tuple[np.ndarray, list[np.ndarray]]:
    coords, errors = [], []
    for key, values in sorted(points.items()):
        key = (key,) if np.isscalar(key) else tuple(key)
        values = np.asarray(values, dtype=float)
        if len(key) != dims or not all(k > 0 for k in key):
            raise NoFit(f"coordinates {key} are not {dims} positive numbers")
        if values.size == 0:
            continue
        if not np.all((values > 0) & (values < 1)):
            raise NoFit(f"errors at {key} are not fractions in (0, 1)")
        coords.append(key)
        errors.append(values)
    return np.array(coords, dtype=float), errors


def _noise(errors: list[np.ndarray]) -> tuple[float, int]:
    """(pooled standard deviation of one seed's log error within cells, its degrees of freedom)."""
    logs = [np.log(e) for e in errors if e.size > 1]
    df = sum(x.size - 1 for x in logs)
    if df == 0:
        return math.nan, 0
    return math.sqrt(sum(((x - x.mean()) ** 2).sum() for x in logs) / df), df


def _residual_noise(sigma: float, df: int, residual: float, lack_df: int) -> tuple[float, int]:
    """The noise the bootstrap draws: the seeds' pooled noise and the fit's lack of fit (residual, a weighted sum
    of squares with lack_df degrees of freedom) pooled, as in an ordinary regression's residual variance; or, when
    an F test says the law fits worse than the seeds agree (5 % level), the lack of fit alone."""
    if lack_df <= 0:
        return sigma, df
    if df == 0:
        return math.sqrt(residual / lack_df), lack_df
    if residual / lack_df / sigma ** 2 > f_dist.ppf(0.95, lack_df, df):
        return math.sqrt(residual / lack_df), lack_df
    return math.sqrt((sigma ** 2 * df + residual) / (df + lack_df)), df + lack_df


def _inverse_envelope(error: float, chance: float) -> float:
    """z such that chance * z / sqrt(1 + z^2) = error (capped below chance)."""
    ratio = min(error / chance, 0.99)
    return ratio / math.sqrt(1 - ratio ** 2)


def _starts(law: Law, u: np.ndarray, means: np.ndarray, chance: float) -> list[np.ndarray]:
    centre = means[np.argmin(np.abs(u).sum(axis=1))]  # the error near the reference coordinates
    starts = []
    for exponent in (0.2, 0.5, 1.0):
        for floor_share in (0.05, 0.5):
            floor_error = floor_share * means.min()
            if law.floor_param == "c":
                floor = _inverse_envelope(floor_error, chance)
                scale = max(_inverse_envelope(centre, chance) - floor, 1e-3) / law.dims
            else:
                floor, scale = floor_error, max(centre - floor_error, 1e-3) / law.dims
            starts.append(np.array([scale, exponent] * law.dims + [floor]))
    return starts


def _solve(law: Law, u: np.ndarray, y: np.ndarray, weights: np.ndarray, chance: float, scale: float,
           starts: list[np.ndarray]) -> np.ndarray | None:
    lower, upper = law.bounds(chance)
    root_w = np.sqrt(weights)

    def residuals(theta):
        return root_w * (np.log(np.maximum(law.error(u, theta, chance), 1e-12)) - y)

    best = None
    for start in starts:
        result = least_squares(residuals, np.clip(start, lower, upper), bounds=(lower, upper), loss="soft_l1",
                               f_scale=scale)
        if result.success and np.all(np.isfinite(result.x)) and (best is None or result.cost < best.cost):
            best = result
    return None if best is None else best.x


def fit(points: Mapping, law: str | Law, *, chance: float, resamples: int = 500, seed: int = 0,
        confidence: float = 0.95, min_cells: int | None = None) -> Fit:
    """Fit `law` to points: coordinates ((n,) or n, or (n, m)) -> per-seed errors (fractions). Needs one cell
    more than the law has parameters (min_cells), else NoFit."""
    law = LAWS[law] if isinstance(law, str) else law
    coords, errors = _cells(points, law.dims, chance)
    needed = min_cells or len(law.params) + 1
    if len(coords) < needed:
        raise NoFit(f"the {law.name} law needs at least {needed} cells, got {len(coords)}")
    if law.dims == 2 and min(len(set(coords[:, 0])), len(set(coords[:, 1]))) < 2:
        raise NoFit("a 2-D law needs at least two data sizes and two model sizes")
    seeds = np.array([e.size for e in errors], dtype=float)
    means = np.array([e.mean() for e in errors])
    ref = np.log(coords).mean(axis=0)
    u, y = np.log(coords) - ref, np.log(means)
    sigma, df = _noise(errors)
    theta = _solve(law, u, y, seeds, chance, 2 * (sigma if df else 0.1), _starts(law, u, means, chance))
    if theta is None:
        raise NoFit(f"the {law.name} fit did not converge")
    sigma, df = _residual_noise(sigma, df, float(np.sum(seeds * (np.log(law.error(u, theta, chance)) - y) ** 2)),
                                len(coords) - len(law.params))
    if df == 0:
        raise NoFit("no noise estimate: single seeds and as many cells as parameters")
    rng = np.random.default_rng(seed)
    fitted = np.log(law.error(u, theta, chance))
    boot = np.full((resamples, theta.size), np.nan)
    for i in range(resamples):
        drawn_sigma = sigma * math.sqrt(df / rng.chisquare(df))
        y_star = fitted + rng.normal(0.0, drawn_sigma, fitted.size) / np.sqrt(seeds)
        refit = _solve(law, u, y_star, seeds, chance, 2 * drawn_sigma, [theta])
        if refit is not None:
            boot[i] = refit
    return Fit(law, chance, theta, boot, ref, sigma, df, coords, int(seeds.min()), confidence)


def chance_error(classes: int) -> float:
    """The error of a random guess among `classes` balanced classes."""
    return 1 - 1 / classes
