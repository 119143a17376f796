"""Statistics for the report (a leaf: the standard library, numpy and scipy only): intervals over the units
that are independent (bench/stats/intervals.py) and scaling laws of test error fitted to measured cells
(laws.py), with their back-tests and forecasts (forecast.py)."""

from .intervals import (COVERAGE, Interval, blocks_of, difference_interval, mean_interval, median_interval,
                        ratio_of_medians_interval)
from .forecast import (Backtest, Crossover, HeldOut, backtest, choose_law, crossover, held_out_corner,
                       optimal_model_exponent)
from .laws import LAWS, Fit, Law, NoFit, Param, chance_error, fit

__all__ = ["COVERAGE", "Interval", "blocks_of", "difference_interval", "mean_interval", "median_interval",
           "ratio_of_medians_interval", "Backtest", "Crossover", "HeldOut", "backtest", "choose_law", "crossover",
           "held_out_corner", "optimal_model_exponent", "LAWS", "Fit", "Law", "NoFit", "Param", "chance_error", "fit"]
