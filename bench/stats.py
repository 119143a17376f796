"""Statistics for the report: intervals over seeds, and learning curves fitted as saturating power laws.

Intervals: a mean over seeds with a Student t interval; a difference of two models, paired by seed (t over the
per-seed differences) or unpaired (Welch); a ratio of medians by bootstrap (latencies). An Interval says whether
it shows a difference (excludes 0) and, when it does not, with how many seeds.

Learning curves: error(n) = e_inf + a * n^(-b) (Hestness et al. 2017, "Deep learning scaling is predictable,
empirically"; Zhai et al. 2022, "Scaling vision transformers"), n the training-set size or the training FLOPs.
From two curves, the size at which the ViT catches up with the CNN (crossover), and a back-test that predicts
the largest measured size from the others.

A leaf module: the standard library, numpy and scipy only.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace

import numpy as np
from scipy import stats
from scipy.optimize import brentq, least_squares

_B_MIN, _B_MAX = 1e-3, 3.0  # b in (0, 3]: the lower bound keeps e_inf and a apart (b -> 0 makes them one constant)


# ----- intervals ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Interval:
    """An estimate with its interval; low and high are nan when there is no spread to go on (n < 2).

    n is the number of seeds (pairs for a paired difference); method is "t", "paired t", "welch t" or "bootstrap".
    """

    estimate: float
    low: float
    high: float
    n: int
    method: str

    @property
    def shown(self) -> bool:
        """The interval excludes 0 (False without an interval)."""
        return bool(self.low > 0 or self.high < 0)

    def verdict(self, what: str = "difference") -> str:
        """'<what> shown', or '<what> not shown with <n> seeds'."""
        if self.shown:
            return f"{what} shown"
        return f"{what} not shown with {self.n} seed{'' if self.n == 1 else 's'}"

    def format(self, scale: float = 1.0, digits: int = 1, unit: str = "") -> str:
        """E.g. '73.8 % [70.1, 77.5] (n=3, t)', or '73.8 % (n=1, no interval)'."""
        unit = f" {unit}" if unit else ""
        estimate = f"{self.estimate * scale:.{digits}f}{unit}"
        if math.isnan(self.low) or math.isnan(self.high):
            return f"{estimate} (n={self.n}, no interval)"
        return f"{estimate} [{self.low * scale:.{digits}f}, {self.high * scale:.{digits}f}] (n={self.n}, {self.method})"


@contextmanager
def _quiet_constant_samples():
    """scipy warns of precision loss when a sample is constant (seeds that agree); the interval is still right."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Precision loss", category=RuntimeWarning)
        yield


def _values(values: Iterable[float]) -> np.ndarray:
    x = np.asarray(list(values), dtype=float)
    if x.size == 0:
        raise ValueError("no values")
    return x


def mean_interval(values: Iterable[float], confidence: float = 0.95) -> Interval:
    """The mean over seeds with a Student t interval."""
    x = _values(values)
    if x.size < 2:
        return Interval(float(x.mean()), math.nan, math.nan, x.size, "t")
    with _quiet_constant_samples():
        ci = stats.ttest_1samp(x, 0.0).confidence_interval(confidence)
    return Interval(float(x.mean()), float(ci.low), float(ci.high), x.size, "t")


def difference_interval(a: Iterable[float], b: Iterable[float], paired: bool,
                        confidence: float = 0.95) -> Interval:
    """mean(a) - mean(b): paired, a t interval of the per-seed differences (a[i] and b[i] share seed i);
    unpaired, Welch's t interval (Welch-Satterthwaite degrees of freedom) with n = the smaller sample."""
    a, b = _values(a), _values(b)
    if paired:
        if a.size != b.size:
            raise ValueError(f"paired samples differ in length: {a.size} and {b.size}")
        return replace(mean_interval(a - b, confidence), method="paired t")
    estimate, n = float(a.mean() - b.mean()), min(a.size, b.size)
    if n < 2:
        return Interval(estimate, math.nan, math.nan, n, "welch t")
    with _quiet_constant_samples():
        ci = stats.ttest_ind(a, b, equal_var=False).confidence_interval(confidence)
    return Interval(estimate, float(ci.low), float(ci.high), n, "welch t")


def ratio_of_medians_interval(a_samples: Iterable[float], b_samples: Iterable[float], confidence: float = 0.95,
                              resamples: int = 4000, seed: int = 0) -> Interval:
    """median(a) / median(b) with a percentile bootstrap resampling a and b independently (unpaired samples,
    e.g. latencies); n = the smaller sample."""
    a, b = _values(a_samples), _values(b_samples)
    estimate, n = float(np.median(a) / np.median(b)), min(a.size, b.size)
    if n < 2:
        return Interval(estimate, math.nan, math.nan, n, "bootstrap")
    result = stats.bootstrap((a, b), lambda x, y, axis: np.median(x, axis=axis) / np.median(y, axis=axis),
                             n_resamples=resamples, confidence_level=confidence, method="percentile",
                             rng=np.random.default_rng(seed))
    ci = result.confidence_interval
    return Interval(estimate, float(ci.low), float(ci.high), n, "bootstrap")


def _percentile_interval(estimate: float, samples: np.ndarray, n: int, confidence: float) -> Interval:
    """A bootstrap percentile interval over the finite samples (nan bounds when there are none)."""
    samples = samples[np.isfinite(samples)]
    low, high = (np.percentile(samples, [50 * (1 - confidence), 50 * (1 + confidence)]) if samples.size
                 else (math.nan, math.nan))
    return Interval(float(estimate), float(low), float(high), n, "bootstrap")


# ----- learning curves ---------------------------------------------------------------------------------------

class NoFit(ValueError):
    """The learning curve cannot be fitted; the message is a one-line reason."""


def _power_law(n, e_inf, a, b):
    """error(n) = e_inf + a * n^(-b); broadcasts over arrays of n and of parameters."""
    return e_inf + a * np.power(n, -b)


@dataclass
class LearningCurve:
    """A fitted error(n) = e_inf + a * n^(-b), with its bootstrap refits (one row per resample, nan where the
    refit failed) and the measured range of n. Its intervals are bootstrap percentile intervals whose n is the
    fewest seeds at any size."""

    e_inf: float
    a: float
    b: float
    boot_e_inf: np.ndarray
    boot_a: np.ndarray
    boot_b: np.ndarray
    n_min: float
    n_max: float
    seeds: int
    confidence: float = 0.95

    def _interval(self, estimate: float, samples: np.ndarray) -> Interval:
        return _percentile_interval(estimate, samples, self.seeds, self.confidence)

    def e_inf_interval(self) -> Interval:
        """The irreducible error (the curve's floor as n -> infinity)."""
        return self._interval(self.e_inf, self.boot_e_inf)

    def b_interval(self) -> Interval:
        """The power-law exponent (how fast the error falls)."""
        return self._interval(self.b, self.boot_b)

    def predict(self, n: float) -> Interval:
        """The mean error at n (the uncertainty of the curve, not the spread of one more seed)."""
        return self._interval(_power_law(n, self.e_inf, self.a, self.b),
                              _power_law(n, self.boot_e_inf, self.boot_a, self.boot_b))

    def extrapolation_factor(self, n: float) -> float:
        """n / the largest measured n; at most 1 inside the measured range."""
        return n / self.n_max


def _clean(points: Mapping[float, Sequence[float]]) -> dict[float, np.ndarray]:
    """Sizes (ascending) -> their per-seed errors, leaving out sizes without errors."""
    clean = {}
    for n, errors in sorted(points.items()):
        errors = np.asarray(errors, dtype=float)
        if not n > 0:
            raise NoFit(f"size {n} is not > 0")
        if not np.all((errors >= 0) & (errors <= 1)):
            raise NoFit(f"errors at size {n:g} are not fractions in [0, 1]")
        if errors.size:
            clean[float(n)] = errors
    return clean


def _least_squares(x: np.ndarray, y: np.ndarray, seeds: np.ndarray, p0: Sequence[float]):
    """Weighted least squares of y = e_inf + a * exp(-b * x) (sigma = 1/sqrt(seeds)); the result, or None if
    it failed."""
    w = np.sqrt(seeds)

    def residuals(p):
        return w * (p[0] + p[1] * np.exp(-p[2] * x) - y)

    def jacobian(p):
        g = np.exp(-p[2] * x)
        return w[:, None] * np.column_stack([np.ones_like(x), g, -p[1] * x * g])

    result = least_squares(residuals, p0, jac=jacobian, bounds=([0.0, 0.0, _B_MIN], [1.0, np.inf, _B_MAX]))
    return result if result.success and np.all(np.isfinite(result.x)) else None


def fit_power_law(points: Mapping[float, Sequence[float]], *, min_sizes: int = 4, resamples: int = 1000,
                  seed: int = 0, confidence: float = 0.95) -> LearningCurve:
    """Fit error(n) = e_inf + a * n^(-b) to points: n -> per-seed errors (fractions); n may also be FLOPs.

    Weighted least squares on the mean error at each n, weighted by its number of seeds, with e_inf in [0, 1],
    a >= 0 and b in (0, 3], in log n about the geometric-mean n (for conditioning); the point fit starts from
    several b and keeps the best. Uncertainty: `resamples` bootstrap refits (started from the point fit). Each
    resample draws the k seeds of every n with replacement (the mean's deviation scaled by sqrt(k / (k - 1)),
    so that its variance is the unbiased s^2 / k); an n with a single seed has nothing to draw, so it gets its
    fitted value plus a residual drawn from the point fit's residuals (standardised by sqrt(seeds), inflated by
    sqrt(m / (m - 3)) for the 3 fitted parameters, m sizes). Even so, with 3 seeds the intervals cover less
    than `confidence` (about 85 % for a nominal 95 % in simulation). Raises NoFit with fewer than `min_sizes`
    sizes, errors outside [0, 1], or when the fit fails.
    """
    data = _clean(points)
    if len(data) < min_sizes:
        raise NoFit(f"needs at least {min_sizes} sizes, got {len(data)}")
    sizes = np.array(list(data))
    seeds = np.array([errors.size for errors in data.values()], dtype=float)
    means = np.array([errors.mean() for errors in data.values()])
    log_ref = np.log(sizes).mean()
    x = np.log(sizes) - log_ref

    e0 = 0.5 * means.min()
    starts = [(e0, max(means.mean() - e0, 1e-3), b0) for b0 in (0.1, 0.5, 1.0, 2.0)]
    fits = [fit for fit in (_least_squares(x, means, seeds, p0) for p0 in starts) if fit is not None]
    if not fits:
        raise NoFit("the least-squares fit did not converge")
    point = min(fits, key=lambda fit: fit.cost).x

    fitted = _power_law(np.exp(x), *point)
    single = seeds == 1
    residuals = (means - fitted) * np.sqrt(seeds) * math.sqrt(len(sizes) / max(len(sizes) - 3, 1))
    inflate = np.sqrt(seeds / np.maximum(seeds - 1, 1))
    rng = np.random.default_rng(seed)
    boot = np.full((resamples, 3), np.nan)
    for i in range(resamples):
        drawn = np.array([rng.choice(errors, size=errors.size).mean() for errors in data.values()])
        y = means + inflate * (drawn - means)
        y[single] = fitted[single] + rng.choice(residuals, size=int(single.sum()))
        fit = _least_squares(x, y, seeds, point)
        if fit is not None:
            boot[i] = fit.x

    def to_a(a_ref, b):  # a at n = 1 from a at the reference n
        return a_ref * np.exp(b * log_ref)

    return LearningCurve(e_inf=float(point[0]), a=float(to_a(point[1], point[2])), b=float(point[2]),
                         boot_e_inf=boot[:, 0], boot_a=to_a(boot[:, 1], boot[:, 2]), boot_b=boot[:, 2],
                         n_min=float(sizes[0]), n_max=float(sizes[-1]), seeds=int(seeds.min()),
                         confidence=confidence)


# ----- crossover ---------------------------------------------------------------------------------------------

@dataclass
class Crossover:
    """Where the ViT's error curve meets the CNN's (ViT worse below n_star, better above).

    status: "predicted" (the point fits cross, and so do at least `confidence` of the bootstrap pairs),
    "none predicted" (the ViT's e_inf interval lies above the CNN's: it never catches up), "already ahead" (the
    ViT's fitted error is below the CNN's over the whole measured range), or "not determined" (reason says why).
    n_star is set whenever the point fits cross; its interval is over the bootstrap pairs that cross.
    extrapolation_factor is n_star / the largest measured n of both curves (nan without n_star).
    """

    n_star: Interval | None
    status: str
    reason: str
    share_of_bootstraps_crossing: float
    extrapolation_factor: float


def _catch_up(gap: Callable[[np.ndarray], np.ndarray], log_grid: np.ndarray) -> float | None:
    """The n where gap(log n) = ViT error - CNN error turns from > 0 to <= 0 for the last time on log_grid, the
    ViT staying ahead up to the grid's end; None if the ViT is not ahead there or never behind."""
    gaps = gap(log_grid)
    behind = np.flatnonzero(gaps > 0)
    if gaps[-1] > 0 or behind.size == 0:
        return None
    i = behind[-1]
    return float(np.exp(brentq(gap, log_grid[i], log_grid[i + 1])))


def crossover(vit: LearningCurve, cnn: LearningCurve, *, max_n: float = 1e12, grid: int = 256) -> Crossover:
    """The size n_star > 0 at which the ViT catches up with the CNN, searched between the smallest measured n
    and max_n (brentq on log n within a sign change on a log grid). Bootstrap i of the ViT is paired with
    bootstrap i of the CNN; pairs without a crossing below max_n are counted in share_of_bootstraps_crossing."""
    n_measured = max(vit.n_max, cnn.n_max)
    log_grid = np.linspace(math.log(min(vit.n_min, cnn.n_min)), math.log(max_n), grid)

    def gap_of(v: Sequence[float], c: Sequence[float]) -> Callable[[np.ndarray], np.ndarray]:
        return lambda log_n: _power_law(np.exp(log_n), *v) - _power_law(np.exp(log_n), *c)

    point_v, point_c = (vit.e_inf, vit.a, vit.b), (cnn.e_inf, cnn.a, cnn.b)
    point = _catch_up(gap_of(point_v, point_c), log_grid)

    count = min(vit.boot_b.size, cnn.boot_b.size)
    boot_v = np.column_stack([vit.boot_e_inf[:count], vit.boot_a[:count], vit.boot_b[:count]])
    boot_c = np.column_stack([cnn.boot_e_inf[:count], cnn.boot_a[:count], cnn.boot_b[:count]])
    valid = np.all(np.isfinite(boot_v), axis=1) & np.all(np.isfinite(boot_c), axis=1)
    roots = [_catch_up(gap_of(v, c), log_grid) for v, c in zip(boot_v[valid], boot_c[valid])]
    crossing = np.array([root for root in roots if root is not None])
    share = crossing.size / len(roots) if roots else math.nan

    n_star = None if point is None else _percentile_interval(point, crossing, min(vit.seeds, cnn.seeds),
                                                             vit.confidence)
    factor = math.nan if point is None else point / n_measured
    vit_floor, cnn_floor = vit.e_inf_interval(), cnn.e_inf_interval()
    measured = np.geomspace(min(vit.n_min, cnn.n_min), n_measured, 64)
    if np.all(_power_law(measured, *point_v) < _power_law(measured, *point_c)):
        status, reason = "already ahead", "the ViT's fitted error is below the CNN's over the whole measured range"
    elif vit_floor.low > cnn_floor.high:
        status, reason = "none predicted", (f"the ViT's e_inf interval [{vit_floor.low:.3f}, {vit_floor.high:.3f}] "
                                            f"lies above the CNN's [{cnn_floor.low:.3f}, {cnn_floor.high:.3f}]")
    elif point is None:
        status, reason = "not determined", f"the fitted curves do not cross below n = {max_n:.0e}"
    elif not share >= vit.confidence:
        status, reason = "not determined", (f"only {share:.0%} of the bootstrap fits cross below n = {max_n:.0e}"
                                            if roots else "no bootstrap fits to go on")
    else:
        status, reason = "predicted", ""
    return Crossover(n_star, status, reason, share, factor)


# ----- back-test ---------------------------------------------------------------------------------------------

@dataclass
class Backtest:
    """The largest measured size predicted from the others. error = predicted - measured (mean errors);
    inside: the measured mean lies in the predicted interval, which is the curve's uncertainty only (not the
    measured mean's own seed noise), so a right model can miss it; reliable: abs(error) <= the threshold."""

    size: float
    predicted: Interval
    measured: float
    error: float
    inside: bool
    reliable: bool


def backtest(points: Mapping[float, Sequence[float]], *, threshold: float = 0.03, **fit_kwargs) -> Backtest:
    """Fit without the largest size, predict it and compare with its measured mean error. threshold is in
    error units (0.03 = 3 points). Raises NoFit when the other sizes cannot be fitted (with min_sizes = 4, five
    sizes are needed)."""
    data = _clean(points)
    if not data:
        raise NoFit("no sizes to back-test")
    size = max(data)
    predicted = fit_power_law({n: e for n, e in data.items() if n != size}, **fit_kwargs).predict(size)
    measured = float(data[size].mean())
    error = predicted.estimate - measured
    return Backtest(size, predicted, measured, error, inside=bool(predicted.low <= measured <= predicted.high),
                    reliable=bool(abs(error) <= threshold))
