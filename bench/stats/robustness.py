"""Corruption error against a baseline model, as Hendrycks & Dietterich 2019 ("Benchmarking Neural Network
Robustness to Common Corruptions and Perturbations") define it, and accuracy at a share of the image dropped."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd


class CorruptionErrors(NamedTuple):
    """In %, one row per model: CE and relative CE per corruption (columns), and their means over corruptions."""

    ce: pd.DataFrame
    relative_ce: pd.DataFrame
    mce: pd.Series
    relative_mce: pd.Series


def corruption_errors(errors: pd.DataFrame, clean: pd.Series, baseline: Sequence) -> CorruptionErrors:
    """Per model (row): CE_c = sum_s E(c, s) / sum_s E_base(c, s) and relative CE_c = sum_s (E(c, s) - E_clean) /
    sum_s (E_base(c, s) - E_base,clean) for each corruption c, and their means over corruptions, mCE and relative
    mCE (the baseline scores 100 on average by construction).

    errors: error rates, one row per model, columns (corruption, severity); clean: clean error rates, same rows;
    baseline: the rows that make the baseline (their errors are averaged: one baseline model over its seeds).
    A corruption whose baseline error does not rise above its clean error has no relative CE (NaN, left out of
    the relative mCE)."""
    by_corruption = errors.T.groupby(level=0, sort=False)
    summed = by_corruption.sum().T  # (models, corruptions): sum over severities
    severities = by_corruption.size()  # (corruptions,)
    base, base_clean = summed.loc[list(baseline)].mean(), clean.loc[list(baseline)].mean()
    ce = summed / base * 100
    rise = base - base_clean * severities
    relative = (summed - np.outer(clean.loc[errors.index], severities[summed.columns])) / rise.where(rise > 0) * 100
    return CorruptionErrors(ce, relative, ce.mean(axis=1), relative.mean(axis=1, skipna=True))


def accuracy_at_share(shares: Sequence[float], accuracies: Sequence[float], share: float) -> float:
    """Accuracy at a share of the image dropped, read linearly between the measured shares (NaN outside them)."""
    order = np.argsort(shares)
    x, y = np.asarray(shares, dtype=float)[order], np.asarray(accuracies, dtype=float)[order]
    return float(np.interp(share, x, y)) if x[0] <= share <= x[-1] else float("nan")
