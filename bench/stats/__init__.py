"""Statistics for the report (a leaf: the standard library, numpy, scipy and pandas only): intervals over the units
that are independent (bench/stats/intervals.py), scaling laws of test error fitted to measured cells (laws.py)
with their back-tests and forecasts (forecast.py), and corruption errors against a baseline (robustness.py)."""

from .intervals import (COVERAGE, Interval, blocks_of, difference_interval, mean_interval, median_interval,
                        ratio_of_medians_interval)
from .forecast import (Backtest, Crossover, HeldOut, backtest, choose_law, crossover, held_out_corner,
                       optimal_model_exponent)
from .laws import LAWS, Fit, Law, NoFit, Param, chance_error, fit
from .robustness import accuracy_at_share, corruption_errors

__all__ = ["COVERAGE", "Interval", "blocks_of", "difference_interval", "mean_interval", "median_interval",
           "ratio_of_medians_interval", "Backtest", "Crossover", "HeldOut", "backtest", "choose_law", "crossover",
           "held_out_corner", "optimal_model_exponent", "LAWS", "Fit", "Law", "NoFit", "Param", "chance_error", "fit",
           "accuracy_at_share", "corruption_errors"]
