"""bench/stats.py: intervals over seeds and learning-curve fits, checked on known answers and simulated data."""

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from bench.stats import (NoFit, backtest, crossover, difference_interval, fit_power_law, mean_interval,
                         ratio_of_medians_interval)

SIZES = [250, 1000, 4000, 15000, 60000]
RESAMPLES = 200  # bootstrap refits per curve in these tests (1000 by default)


def power_law(e_inf, a, b):
    return lambda n: e_inf + a * n ** -b


def simulate(curve, seed, seeds=3, noise=0.004, sizes=SIZES):
    """size -> per-seed errors: the curve plus Gaussian seed noise."""
    rng = np.random.default_rng(seed)
    return {n: list(curve(n) + rng.normal(0, noise, seeds)) for n in sizes}


# ----- intervals ---------------------------------------------------------------------------------------------

def test_mean_interval_known_answer():
    interval = mean_interval([1.0, 2.0, 3.0])
    half = scipy_stats.t.ppf(0.975, 2) * 1 / math.sqrt(3)  # sample sd 1, n 3
    assert interval.estimate == pytest.approx(2.0)
    assert (interval.low, interval.high) == pytest.approx((2 - half, 2 + half))
    assert (interval.n, interval.method) == (3, "t")
    assert interval.format() == f"2.0 [{2 - half:.1f}, {2 + half:.1f}] (n=3, t)"
    assert mean_interval([0.738, 0.70, 0.775]).format(scale=100, unit="%").startswith("73.8 % [")


def test_single_seed_has_no_interval():
    interval = mean_interval([0.738])
    assert math.isnan(interval.low) and math.isnan(interval.high)
    assert not interval.shown
    assert interval.format(scale=100, unit="%") == "73.8 % (n=1, no interval)"
    assert interval.verdict() == "difference not shown with 1 seed"


def test_identical_seeds_give_a_point_interval():
    interval = mean_interval([0.5, 0.5, 0.5])
    assert (interval.low, interval.high) == (0.5, 0.5) and interval.shown


def test_intervals_shrink_with_more_seeds():
    rng = np.random.default_rng(0)

    def mean_width(n):
        widths = [mean_interval(rng.normal(0.7, 0.02, n)) for _ in range(20)]
        return np.mean([i.high - i.low for i in widths])

    assert mean_width(30) < 0.25 * mean_width(3)  # t_{.975,2}/sqrt(3) vs t_{.975,29}/sqrt(30): about 1/6.7


def test_t_interval_covers_the_true_mean_95_percent_of_the_time():
    rng = np.random.default_rng(1)
    trials = [mean_interval(rng.normal(0.7, 0.02, 3)) for _ in range(2000)]
    coverage = np.mean([i.low <= 0.7 <= i.high for i in trials])
    assert 0.93 <= coverage <= 0.97


def test_paired_interval_is_narrower_for_correlated_seeds():
    rng = np.random.default_rng(2)
    ratios = []
    for _ in range(20):
        seed_effect = rng.normal(0, 0.03, 3)  # shared by both models (same data order, same init)
        a = 0.72 + seed_effect + rng.normal(0, 0.002, 3)
        b = 0.70 + seed_effect + rng.normal(0, 0.002, 3)
        paired, unpaired = difference_interval(a, b, paired=True), difference_interval(a, b, paired=False)
        assert paired.estimate == pytest.approx(unpaired.estimate) == pytest.approx(np.mean(a - b))
        ratios.append((paired.high - paired.low) / (unpaired.high - unpaired.low))
    assert (paired.method, unpaired.method) == ("paired t", "welch t")
    assert np.median(ratios) < 0.25


def test_verdicts_follow_the_interval():
    a = np.array([0.75, 0.70, 0.73])
    b = a - np.array([0.010, 0.012, 0.011])  # every seed 1 point better, seeds 5 points apart
    paired, unpaired = difference_interval(a, b, paired=True), difference_interval(a, b, paired=False)
    assert paired.low > 0 and paired.shown and paired.verdict("ViT - ResNet") == "ViT - ResNet shown"
    assert difference_interval(b, a, paired=True).shown  # below 0 is shown too
    assert unpaired.low < 0 < unpaired.high and not unpaired.shown
    assert unpaired.verdict() == "difference not shown with 3 seeds"


def test_welch_interval_known_answer():
    a, b = np.array([1.0, 2.0, 3.0, 4.0]), np.array([10.0, 12.0])
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    df = (va + vb) ** 2 / (va ** 2 / (a.size - 1) + vb ** 2 / (b.size - 1))  # Welch-Satterthwaite
    half = scipy_stats.t.ppf(0.975, df) * math.sqrt(va + vb)
    interval = difference_interval(a, b, paired=False)
    assert interval.estimate == pytest.approx(-8.5)
    assert (interval.low, interval.high) == pytest.approx((-8.5 - half, -8.5 + half))
    assert interval.n == 2
    with pytest.raises(ValueError):
        difference_interval(a, b, paired=True)


def test_ratio_of_medians_brackets_the_true_ratio():
    rng = np.random.default_rng(3)
    hits = []
    for seed in range(20):
        a, b = rng.lognormal(math.log(3.0), 0.3, 40), rng.lognormal(math.log(2.0), 0.3, 40)
        interval = ratio_of_medians_interval(a, b, resamples=1000, seed=seed)
        hits.append(interval.low <= 1.5 <= interval.high)
    assert interval.method == "bootstrap" and interval.n == 40
    assert np.mean(hits) >= 0.85


# ----- learning curves ---------------------------------------------------------------------------------------

def test_fit_recovers_a_known_power_law():
    curve = fit_power_law(simulate(power_law(0.08, 1.5, 0.45), seed=1), resamples=RESAMPLES)
    e_inf, b = curve.e_inf_interval(), curve.b_interval()
    assert e_inf.low <= 0.08 <= e_inf.high and b.low <= 0.45 <= b.high
    assert curve.e_inf == pytest.approx(0.08, abs=0.01)  # about 2 standard errors with this noise
    assert curve.b == pytest.approx(0.45, abs=0.1)
    assert curve.a == pytest.approx(1.5, rel=0.3)
    assert (curve.n_min, curve.n_max, curve.seeds) == (250, 60000, 3)
    assert curve.extrapolation_factor(240000) == 4.0
    assert curve.predict(240000).low <= 0.08 + 1.5 * 240000 ** -0.45 <= curve.predict(240000).high


def test_fit_with_one_seed_per_size_still_has_intervals():
    curve = fit_power_law(simulate(power_law(0.08, 1.5, 0.45), seed=2, seeds=1), resamples=RESAMPLES)
    interval = curve.e_inf_interval()
    assert interval.low < interval.high and interval.low <= 0.08 <= interval.high
    assert curve.seeds == 1


def test_too_few_sizes_is_no_fit():
    with pytest.raises(NoFit) as error:
        fit_power_law(simulate(power_law(0.08, 1.5, 0.45), seed=0, sizes=SIZES[:3]))
    assert str(error.value) == "needs at least 4 sizes, got 3"


CNN = power_law(0.10, 1.0, 0.3)
N_STAR = 20000.0  # the ViT below is built to meet the CNN here: steeper, with a lower floor
VIT = power_law(0.05, (0.05 + N_STAR ** -0.3) * N_STAR ** 0.45, 0.45)


def test_crossover_is_predicted_where_the_curves_cross():
    vit = fit_power_law(simulate(VIT, seed=3), resamples=RESAMPLES)
    cnn = fit_power_law(simulate(CNN, seed=4), resamples=RESAMPLES)
    result = crossover(vit, cnn)
    assert result.status == "predicted"
    assert result.n_star.low <= N_STAR <= result.n_star.high
    assert result.n_star.estimate == pytest.approx(N_STAR, rel=0.15)
    assert result.share_of_bootstraps_crossing >= 0.95
    assert result.extrapolation_factor == pytest.approx(result.n_star.estimate / 60000)


def test_no_crossover_when_the_vits_floor_is_higher():
    vit = fit_power_law(simulate(power_law(0.20, 1.2, 0.4), seed=5), resamples=RESAMPLES)
    cnn = fit_power_law(simulate(power_law(0.08, 1.5, 0.45), seed=6), resamples=RESAMPLES)
    result = crossover(vit, cnn)
    assert (result.status, result.n_star) == ("none predicted", None)
    assert "e_inf interval" in result.reason
    assert crossover(cnn, vit).status == "already ahead"  # the same curves, roles swapped


def test_backtest_trusts_the_true_model():
    results = [backtest(simulate(power_law(0.08, 1.5, 0.45), seed=seed), resamples=RESAMPLES) for seed in range(3)]
    assert all(r.reliable and abs(r.error) < 0.01 for r in results)
    assert all(r.size == 60000 for r in results)
    assert sum(r.inside for r in results) >= 2  # the interval is for the curve; the measured mean has noise too


def test_backtest_flags_a_curve_the_power_law_cannot_extrapolate():
    def linear_in_log_n(n):  # no floor, keeps falling
        return 0.60 - 0.10 * np.log(n / 250)

    result = backtest(simulate(linear_in_log_n, seed=7), resamples=RESAMPLES)
    assert not result.reliable and not result.inside
    assert result.error > 0.05  # the fit flattens towards its floor; the data keep falling


def test_backtest_needs_one_size_more_than_the_fit():
    with pytest.raises(NoFit, match="needs at least 4 sizes, got 3"):
        backtest(simulate(power_law(0.08, 1.5, 0.45), seed=0, sizes=SIZES[:4]))
