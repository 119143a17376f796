"""Intervals: a mean over seeds, a difference of two models, the median of paired ratios, and a ratio of medians
of two separately timed samples.

Each method resamples or models the unit that is independent: seeds (means and differences, Student t), the
repeats of an ABBA pair (order statistics of their ratios), the blocks of a timed sample (block bootstrap; the
single calls inside a block are not independent). Coverage at the n each runs with is measured by simulation in
tests/test_stats.py and stated in COVERAGE; an interval method never runs below its smallest sensible n: a t
interval needs 3 values (with 2, the values are printed instead), an interval of the median needs enough ratios
for 90 % coverage (below that it is their range, said so).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import stats

MIN_T = 3  # a t interval from fewer values is a guess (t_{.975,1} = 12.7): print the values instead
MIN_RANGE_COVERAGE = 0.90  # an order-statistic interval below this coverage is called a range

# Coverage of each method's nominal 95 % interval at the n the product runs it with, measured by simulation
# (tests/test_stats.py asserts each within 3 points of the figure here, and at least 90 %).
COVERAGE = {
    "t": "95 % (exact for normal seed noise; 3 seeds)",
    "paired t": "95 % (exact for normal per-seed differences; 3 seeds)",
    "welch t": "95 % (Welch's approximation)",
    "order statistics": "at least 95 % (distribution-free, exact binomial)",
    "block bootstrap": "about 96 % for 20 blocks per side (simulated, autocorrelated calls)",
    "parametric bootstrap": "at 5 sizes x 3 seeds, simulated from a known law: the curve 96 %, one new cell 95 %, "
                            "alpha 98 % (each parameter about 89 % at 7 sizes)",
}


@dataclass(frozen=True)
class Interval:
    """An estimate with its 95 % interval. low and high are nan when there is no interval (too few values: then
    `values` holds them for printing). n is the number of independent units (seeds, pairs, repeats, blocks);
    method names how the interval was made (a key of COVERAGE)."""

    estimate: float
    low: float
    high: float
    n: int
    method: str
    values: tuple[float, ...] = field(default=(), compare=False)

    @property
    def has_interval(self) -> bool:
        return not (math.isnan(self.low) or math.isnan(self.high))

    @property
    def degenerate(self) -> bool:
        """Every unit gave the same value: a zero-width interval says the units did not vary, not certainty."""
        return self.has_interval and self.low == self.high

    @property
    def shown(self) -> bool:
        """The interval excludes 0 (never without an interval, never from units that did not vary)."""
        return self.has_interval and not self.degenerate and bool(self.low > 0 or self.high < 0)

    def verdict(self, what: str = "difference") -> str:
        """'<what> shown', '<what> not shown with <n> seeds', or why there is no verdict."""
        if self.degenerate:
            return f"no verdict: the {self.n} seeds gave the same value"
        if not self.has_interval:
            return f"no verdict from {self.n} seed{'' if self.n == 1 else 's'}"
        if self.shown:
            return f"{what} shown"
        return f"{what} not shown with {self.n} seeds"

    def format(self, scale: float = 1.0, digits: int = 1, unit: str = "") -> str:
        """'73.8 % [70.1, 77.5] (n=3, t)'; '36.1 % (n=2: 16.4, 55.8; no interval from 2 values)'; '73.0 % (n=3,
        every seed gave 73.0)'."""
        unit = f" {unit}" if unit else ""
        number = lambda v: f"{v * scale:.{digits}f}"  # noqa: E731
        estimate = number(self.estimate) + unit
        if self.degenerate:
            return f"{estimate} (n={self.n}, every seed gave {number(self.low)}: no spread to go on)"
        if not self.has_interval:
            shown = ", ".join(number(v) for v in self.values)
            return f"{estimate} (n={self.n}{': ' + shown if shown and self.n > 1 else ''}; no interval from " \
                   f"{self.n} value{'' if self.n == 1 else 's'})"
        return f"{estimate} [{number(self.low)}, {number(self.high)}] (n={self.n}, {self.method})"


def _values(values: Iterable[float]) -> np.ndarray:
    x = np.asarray(list(values), dtype=float)
    if x.size == 0:
        raise ValueError("no values")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"non-finite values {x[~np.isfinite(x)].tolist()}: a measurement cannot be nan or inf")
    return x


def _t_interval(x: np.ndarray, method: str, confidence: float) -> Interval:
    estimate = float(x.mean())
    if x.size < MIN_T:
        return Interval(estimate, math.nan, math.nan, x.size, method, tuple(float(v) for v in x))
    if np.all(x == x[0]):
        return Interval(estimate, estimate, estimate, x.size, method, tuple(float(v) for v in x))
    half = stats.t.ppf(0.5 + confidence / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size)
    return Interval(estimate, estimate - half, estimate + half, x.size, method, tuple(float(v) for v in x))


def mean_interval(values: Iterable[float], confidence: float = 0.95) -> Interval:
    """The mean over seeds with a Student t interval (none from fewer than 3 values)."""
    return _t_interval(_values(values), "t", confidence)


def difference_interval(a: Iterable[float], b: Iterable[float], paired: bool,
                        confidence: float = 0.95) -> Interval:
    """mean(a) - mean(b): paired, a t interval of the per-seed differences (a[i] and b[i] share seed i);
    unpaired, Welch's t interval with n = the smaller sample (none when either side has fewer than 3)."""
    a, b = _values(a), _values(b)
    if paired:
        if a.size != b.size:
            raise ValueError(f"paired samples differ in length: {a.size} and {b.size}")
        return _t_interval(a - b, "paired t", confidence)
    estimate, n = float(a.mean() - b.mean()), min(a.size, b.size)
    if n < MIN_T:
        return Interval(estimate, math.nan, math.nan, n, "welch t")
    if a.var() == 0 and b.var() == 0:
        return Interval(estimate, estimate, estimate, n, "welch t")
    ci = stats.ttest_ind(a, b, equal_var=False).confidence_interval(confidence)
    return Interval(estimate, float(ci.low), float(ci.high), n, "welch t")


def median_interval(values: Iterable[float], confidence: float = 0.95) -> Interval:
    """The median with a distribution-free interval from order statistics: [x_(j), x_(n+1-j)] for the largest j
    whose binomial coverage 1 - 2 P(Binomial(n, 1/2) < j) reaches `confidence`. Where no j reaches it (n < 6 for
    95 %), the interval is the sample's range with its true coverage in the method name ('range, 94 %'), and none
    below 90 %. For the ratios of an ABBA pair's repeats, each repeat one unit."""
    x = np.sort(_values(values))
    n, estimate = x.size, float(np.median(x))
    coverage = lambda j: 1 - 2 * stats.binom.cdf(j - 1, n, 0.5)  # noqa: E731 - of [x_(j), x_(n+1-j)]
    j = max((j for j in range(1, n // 2 + 1) if coverage(j) >= confidence), default=None)
    if j is not None:
        return Interval(estimate, float(x[j - 1]), float(x[n - j]), n, "order statistics")
    if n >= 2 and coverage(1) >= MIN_RANGE_COVERAGE:
        return Interval(estimate, float(x[0]), float(x[-1]), n, f"range, {coverage(1):.0%} coverage")
    return Interval(estimate, math.nan, math.nan, n, "order statistics", tuple(float(v) for v in x))


def blocks_of(samples: Sequence[float], block: int) -> list[np.ndarray]:
    """Consecutive calls cut into blocks of `block` (the last, shorter one dropped unless it is the only one)."""
    x = _values(samples)
    count = max(1, x.size // block)
    return [x[i * block:(i + 1) * block] for i in range(count)] if x.size >= block else [x]


def ratio_of_medians_interval(a_cells: Sequence[Sequence[np.ndarray]], b_cells: Sequence[Sequence[np.ndarray]],
                              confidence: float = 0.95, resamples: int = 4000, seed: int = 0) -> Interval:
    """median(a) / median(b) of two separately timed samples, each given as cells of blocks (a block: calls
    timed back to back, or one timed repeat). Percentile bootstrap that resamples blocks with replacement within
    each cell (stratified: every cell keeps its number of blocks), so that calls correlated inside a block count
    once; n = the fewer blocks of the two sides. It covers the variation between blocks, not between cells run
    at different times: two cells of one model can differ by more (the report says so)."""
    rng = np.random.default_rng(seed)

    def pooled_medians(cells: Sequence[Sequence[np.ndarray]]) -> tuple[float, np.ndarray]:
        cells = [[_values(block) for block in blocks] for blocks in cells if len(blocks)]
        if not cells:
            raise ValueError("no blocks")
        medians = np.empty(resamples)
        for r in range(resamples):
            drawn = [block for blocks in cells for block in
                     (blocks[i] for i in rng.integers(0, len(blocks), len(blocks)))]
            medians[r] = np.median(np.concatenate(drawn))
        everything = np.concatenate([block for blocks in cells for block in blocks])
        return float(np.median(everything)), medians

    (a, boot_a), (b, boot_b) = pooled_medians(a_cells), pooled_medians(b_cells)
    n = min(sum(len(blocks) for blocks in a_cells), sum(len(blocks) for blocks in b_cells))
    if n < 2:
        return Interval(a / b, math.nan, math.nan, n, "block bootstrap")
    low, high = np.percentile(boot_a / boot_b, [50 * (1 - confidence), 50 * (1 + confidence)])
    return Interval(a / b, float(low), float(high), n, "block bootstrap")
