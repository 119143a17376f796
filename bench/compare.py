"""python -m bench compare RUN_A RUN_B: run B against run A, cell by cell (as asv's compare and
pytest-benchmark's --benchmark-compare-fail do).

Cells are matched by their settings (the requested columns, seeds pooled), not by run or cell id, so two runs of a
suite, or two suites sharing cells, compare. For each matched metric: B/A, each run's noise interval (p20-p80 of
the repeats; min-max over seeds for accuracy), and whether the difference is beyond the noise of either run (the
intervals do not overlap). A regression is a change in the bad direction beyond the noise; with --fail-above R,
one larger than R (B/A for lower-is-better metrics, A/B for higher-is-better) exits 1. Runs on different devices
(device_name) are refused unless --allow-different-devices.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .results import read_results

HIGHER_IS_BETTER = {"throughput", "achieved_tflops", "mfu", "accuracy", "val_accuracy", "fwd_tflops",
                    "fwd_bwd_tflops", "throughput_ratio"}
LOWER_IS_BETTER = {"step_time", "peak_memory", "model_memory", "fwd_time", "fwd_bwd_time", "test_loss",
                   "energy_per_image", "max_error", "max_grad_error", "recon_loss"}
SETTINGS = ["model", "task", "batch_size", "img_size", "dtype", "attn_backend", "compile", "dataset", "train_size",
            "in_chans", "num_classes", "attn_shape", "budget", "recipe", "init", "mae", "pool", "compare_to",
            "paired_with", "device", "metric"]


class CompareError(ValueError):
    """Runs that cannot be compared; one line."""


@dataclass
class Comparison:
    table: pd.DataFrame  # one row per matched (settings, metric)
    regressions: pd.DataFrame  # the rows beyond --fail-above


def _summarise(frame: pd.DataFrame) -> pd.DataFrame:
    ok = frame[(frame["status"] == "ok") & frame["metric"].isin(HIGHER_IS_BETTER | LOWER_IS_BETTER)].copy()
    ok[SETTINGS] = ok[SETTINGS].astype(object).fillna("")
    ok["low"] = ok["p20"].fillna(ok["value"])
    ok["high"] = ok["p80"].fillna(ok["value"])
    return ok.groupby(SETTINGS).agg(value=("value", "median"), low=("low", "min"), high=("high", "max"),
                                    n=("value", "size")).reset_index()


def compare(run_a: Path, run_b: Path, fail_above: float | None = None, allow_different_devices: bool = False,
            metrics: list[str] | None = None) -> Comparison:
    a, b = read_results(Path(run_a) / "results.csv"), read_results(Path(run_b) / "results.csv")
    devices = [set(f["device_name"].dropna()) for f in (a, b)]
    if devices[0] != devices[1] and not allow_different_devices:
        raise CompareError(f"{run_a} ran on {sorted(devices[0]) or '?'}, {run_b} on {sorted(devices[1]) or '?'}: "
                           "timings of different devices are not comparable (pass --allow-different-devices to "
                           "compare anyway)")
    merged = _summarise(a).merge(_summarise(b), on=SETTINGS, suffixes=("_a", "_b"))
    if metrics:
        merged = merged[merged["metric"].isin(metrics)]
    if merged.empty:
        raise CompareError(f"{run_a} and {run_b} share no cell settings with a comparable metric")
    merged["ratio"] = merged["value_b"] / merged["value_a"]
    merged["beyond_noise"] = (merged["low_b"] > merged["high_a"]) | (merged["high_b"] < merged["low_a"])
    worse = np.where(merged["metric"].isin(HIGHER_IS_BETTER), 1 / merged["ratio"], merged["ratio"])
    merged["worse_by"] = worse
    merged["verdict"] = np.select(
        [~merged["beyond_noise"], worse > 1], ["within noise", "regression"], "improvement")
    merged = merged.reindex(merged["ratio"].map(lambda r: -abs(np.log(r))).sort_values().index)
    regressions = merged.iloc[0:0]
    if fail_above is not None:
        regressions = merged[(merged["verdict"] == "regression") & (merged["worse_by"] > fail_above)]
    return Comparison(merged, regressions)


def format_table(comparison: Comparison, limit: int = 60) -> str:
    t = comparison.table
    what = t["model"].where(t["model"] != "", "attention " + t["attn_backend"] + " " + t["attn_shape"])
    shown = pd.DataFrame({
        "cell": what + " " + t["task"] + " bs" + t["batch_size"].astype(str) + " " + t["img_size"].astype(str) + "px"
        + np.where(t["train_size"].astype(str) != "", " n=" + t["train_size"].astype(str), ""),
        "metric": t["metric"], "A": t["value_a"].map("{:.4g}".format), "B": t["value_b"].map("{:.4g}".format),
        "B/A": t["ratio"].map("{:.3f}".format),
        "A noise": [f"[{lo:.4g}, {hi:.4g}]" for lo, hi in zip(t["low_a"], t["high_a"])],
        "B noise": [f"[{lo:.4g}, {hi:.4g}]" for lo, hi in zip(t["low_b"], t["high_b"])],
        "verdict": t["verdict"]})
    text = shown.head(limit).to_markdown(index=False)
    if len(shown) > limit:
        text += f"\n... {len(shown) - limit} more (--out writes them all)"
    counts = t["verdict"].value_counts()
    text += "\n\n" + ", ".join(f"{n} {v}" for v, n in counts.items()) + f" ({len(t)} matched metrics)"
    if len(comparison.regressions):
        text += (f"\nFAIL: {len(comparison.regressions)} regression(s) beyond the threshold: "
                 + "; ".join(f"{m} of {c} worse by {w:.2f}x" for m, c, w in
                             zip(comparison.regressions["metric"], what[comparison.regressions.index],
                                 comparison.regressions["worse_by"])))
    return text
