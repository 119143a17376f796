"""Coverage of each interval method at the n the product runs it with: the simulations of tests/test_stats.py
at more trials (about 3 minutes on 2 cores). The figures in docs/statistics.md ("Intervals") come from this script.

    python tools/interval_coverage.py
"""
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.stats import difference_interval, fit, mean_interval, median_interval
from tests.test_stats import CHANCE, NOISE, TRUE, ratio_coverage, simulate

rng = np.random.default_rng(0)
t = [mean_interval(rng.normal(0.7, 0.02, 3)) for _ in range(5000)]
print("t, 3 seeds:", np.mean([i.low <= 0.7 <= i.high for i in t]))
d = [difference_interval(rng.normal(0.7, 0.02, 3), rng.normal(0.68, 0.02, 3), paired=False) for _ in range(5000)]
print("welch, 3 v 3:", np.mean([i.low <= 0.02 <= i.high for i in d]))
for n in (5, 8, 10, 20):
    m = [median_interval(rng.lognormal(0.2, 0.1, n)) for _ in range(5000)]
    print(f"median order stats n={n}:", np.mean([i.low <= math.exp(0.2) <= i.high for i in m]), m[0].method)
print("block bootstrap, 20 blocks a side:", ratio_coverage(rng, trials=400, block=10, resamples=1000))
print("call bootstrap (the old method), same data:", ratio_coverage(rng, trials=400, block=1, resamples=1000))
curve, cell, alpha = [], [], []
t0 = time.time()
for trial in range(100):
    f = fit(simulate(TRUE, rng), "envelope", chance=CHANCE, resamples=200, seed=trial)
    (c,), (p,) = f.predict([(4000,)]), f.predict([(4000,)], seeds=3)
    measured = np.mean(TRUE(4000) * np.exp(rng.normal(0, NOISE, 3)))
    curve.append(c.low <= TRUE(4000) <= c.high)
    cell.append(p.low <= measured <= p.high)
    a = next(x for x in f.parameters() if x.name == "alpha")
    alpha.append(a.identified and a.interval.low <= 0.45 <= a.interval.high)
print(f"envelope fit, 5 sizes x 3 seeds, 100 trials ({time.time()-t0:.0f} s): curve mean at 2x {np.mean(curve):.2f}, "
      f"new cell {np.mean(cell):.2f}, alpha {np.mean(alpha):.2f}")
