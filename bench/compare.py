"""python -m bench compare RUN_A RUN_B: run B against run A, setting by setting (as asv's compare and
pytest-benchmark's --benchmark-compare-fail do).

Settings are matched by the cell spec's identity axes (bench/results.py: setting_columns; seeds pooled), not by
run or cell id, so two runs of a suite, or two suites sharing cells, compare. Both runs are joined outer: a
setting or a metric measured on one side only is listed as such, never dropped. Per setting, the worst status of
its cells: a setting that was ok in A and failed in B (oom, error, timeout, killed, skipped) is a regression
listed with its status, the reverse an improvement. Per metric, B/A and a verdict:
  regression / improvement  the change is beyond the noise, in the metric's bad / good direction (its registered
                            direction, bench/results.py: METRICS); metrics without a direction say "changed"
  within noise              timings: the p20-p80 intervals of the two runs overlap; accuracy metrics: the 95%
                            interval of B - A over seeds (Welch t) includes 0, or one side has a single seed (no
                            interval), the report's rule
  not comparable            the task's measurement method changed between the runs (method_version)
With --fail-above (one factor for every metric, or per metric: throughput:1.1,accuracy:1.02) the command exits 1
when a metric regressed by more than its factor (B/A for lower-is-better metrics, A/B for higher-is-better), or
when a setting stopped being ok. Runs on different devices (device_name) are refused unless
--allow-different-devices.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .results import METRICS, STATUSES, read_records, rows_frame, setting_columns, without_impossible
from .stats import difference_interval



class CompareError(ValueError):
    """Runs that cannot be compared, or a bad argument; one line."""


def parse_thresholds(text: str) -> dict[str | None, float]:
    """'1.1' -> {None: 1.1} (every metric); 'throughput:1.1,accuracy:1.02' -> per metric. A factor is a finite
    number >= 1 (1.1 = 10% worse); a metric must be registered."""
    out: dict[str | None, float] = {}
    for part in text.split(","):
        name, _, factor = part.rpartition(":")
        name = name.strip() or None
        if name is not None and name not in METRICS:
            raise CompareError(f"--fail-above: unknown metric {name!r}; registered: {', '.join(METRICS)}")
        try:
            value = float(factor)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value < 1:
            raise CompareError(f"--fail-above: expected a factor >= 1 (1.1 = 10% worse), got {factor.strip()!r}")
        out[name] = value
    return out


@dataclass
class Comparison:
    table: pd.DataFrame  # one row per matched (setting, metric), plus one per setting whose status changed
    failures: pd.DataFrame  # the rows beyond --fail-above, and the settings that stopped being ok
    excluded: list[str]  # rows of either run left out: values no measurement can have (results.without_impossible)


def _frame(run: Path) -> tuple[pd.DataFrame, list[str]]:
    records = read_records(run)
    frame, excluded = without_impossible(rows_frame([row for record in records for row in record.rows]), run)
    keys = [*setting_columns(), "paired_with"]
    frame[keys] = frame[keys].astype(object).where(frame[keys].notna(), "")
    return frame, excluded


def _statuses(frame: pd.DataFrame) -> pd.Series:
    """The worst status of each setting's cells."""
    rank = {status: i for i, status in enumerate(STATUSES)}  # ok first, error last
    cells = frame.drop_duplicates("cell_id")
    return cells.groupby(setting_columns(), sort=False)["status"].agg(lambda s: max(s, key=rank.__getitem__))


def _summarise(frame: pd.DataFrame) -> pd.DataFrame:
    ok = frame[(frame["status"] == "ok")].copy()
    ok["low"] = ok["p20"].fillna(ok["value"])
    ok["high"] = ok["p80"].fillna(ok["value"])
    keys = [*setting_columns(), "paired_with", "metric"]
    return ok.groupby(keys, sort=False).agg(
        value=("value", "median"), low=("low", "min"), high=("high", "max"), n=("value", "size"),
        values=("value", list), method=("method_version", "max")).reset_index()


def _verdict(r: pd.Series) -> str:
    if pd.isna(r["value_a"]) or pd.isna(r["value_b"]):
        return "only in A" if pd.isna(r["value_b"]) else "only in B"
    if r["method_a"] != r["method_b"] and not (pd.isna(r["method_a"]) and pd.isna(r["method_b"])):
        return f"not comparable (method version {r['method_a']:g} -> {r['method_b']:g})"
    if METRICS[r["metric"]].group == "accuracy":  # seeds: shown only when B - A's interval excludes 0 (1 seed: never)
        beyond = difference_interval(r["values_b"], r["values_a"], paired=False).shown
    else:
        beyond = r["low_b"] > r["high_a"] or r["high_b"] < r["low_a"]
    if not beyond:
        return "within noise"
    direction = METRICS[r["metric"]].direction
    if direction == "neither":
        return "changed"
    better = (r["value_b"] > r["value_a"]) == (direction == "higher")
    return "improvement" if better else "regression"


def _status_change(a: str, b: str) -> str:
    """A setting that stopped being ok regressed, one that became ok improved; one failure turning into another
    (oom -> error) only changed."""
    return "regression" if a == "ok" else "improvement" if b == "ok" else "changed"


def compare(run_a: Path, run_b: Path, fail_above: dict[str | None, float] | None = None,
            allow_different_devices: bool = False, metrics: list[str] | None = None) -> Comparison:
    (a, excluded_a), (b, excluded_b) = _frame(Path(run_a)), _frame(Path(run_b))
    devices = [set(f["device_name"].dropna()) for f in (a, b)]
    if devices[0] != devices[1] and not allow_different_devices:
        raise CompareError(f"{run_a} ran on {sorted(devices[0]) or '?'}, {run_b} on {sorted(devices[1]) or '?'}: "
                           "timings of different devices are not comparable (pass --allow-different-devices to "
                           "compare anyway)")
    unknown = sorted(set(metrics or ()) - set(METRICS))
    if unknown:
        raise CompareError(f"--metrics: unknown metric(s) {', '.join(unknown)}; registered: {', '.join(METRICS)}")
    keys = [*setting_columns(), "paired_with", "metric"]
    merged = _summarise(a).merge(_summarise(b), on=keys, how="outer", suffixes=("_a", "_b"))
    if metrics:
        merged = merged[merged["metric"].isin(metrics)]
    merged["ratio"] = merged["value_b"] / merged["value_a"]
    merged["verdict"] = [_verdict(r) for _, r in merged.iterrows()] if len(merged) else []
    higher = merged["metric"].map(lambda m: METRICS[m].direction == "higher").astype(bool)
    merged["worse_by"] = np.where(higher, 1 / merged["ratio"], merged["ratio"])

    statuses = pd.concat([_statuses(a).rename("status_a"), _statuses(b).rename("status_b")], axis=1)
    changed = statuses[statuses["status_a"].fillna("") != statuses["status_b"].fillna("")].reset_index()
    changed = changed[changed["status_a"].notna() & changed["status_b"].notna()]  # one-sided ones: see metrics
    changed["metric"] = "status"
    changed["verdict"] = [f"{_status_change(sa, sb)} ({sa} -> {sb})"
                          for sa, sb in zip(changed["status_a"], changed["status_b"])]
    table = pd.concat([changed, merged], ignore_index=True)
    table = table.reindex(table["ratio"].map(lambda r: -abs(np.log(r)) if r and np.isfinite(r) else 0.0)
                          .sort_values(kind="stable").index)
    failures = table.iloc[0:0]
    if fail_above is not None:
        limit = table["metric"].map(lambda m: fail_above.get(m, fail_above.get(None, math.inf)))
        too_slow = (table["verdict"] == "regression") & (table["worse_by"] > limit)
        failures = table[too_slow | table["verdict"].str.startswith("regression (")]
    return Comparison(table, failures, excluded_a + excluded_b)


def _what(t: pd.DataFrame) -> pd.Series:
    shape = t["attn_shape"].astype(str)
    what = t["model"].where(t["model"] != "", "attention " + t["attn_backend"] + " " + shape)
    size = np.where(t["train_size"].astype(str) != "", " n=" + t["train_size"].astype(str), "")
    return what + " " + t["task"] + " bs" + t["batch_size"].astype(str) + " " + t["img_size"].astype(str) + "px" + size


def format_table(comparison: Comparison, limit: int = 60) -> str:
    t = comparison.table
    excluded = comparison.excluded
    left_out = (f"\nleft out: {len(excluded)} value(s) no measurement can have: {'; '.join(excluded[:5])}"
                + (f"; ... {len(excluded) - 5} more" if len(excluded) > 5 else "")) if excluded else ""
    if t.empty:
        return "no settings or metrics in either run" + left_out
    number = lambda v: "" if pd.isna(v) else f"{v:.4g}"  # noqa: E731
    noise = lambda lo, hi: "" if pd.isna(lo) else f"[{lo:.4g}, {hi:.4g}]"  # noqa: E731
    shown = pd.DataFrame({
        "setting": _what(t), "metric": t["metric"],
        "A": [s if m == "status" else number(v) for m, s, v in zip(t["metric"], t["status_a"], t["value_a"])],
        "B": [s if m == "status" else number(v) for m, s, v in zip(t["metric"], t["status_b"], t["value_b"])],
        "B/A": t["ratio"].map(number), "A noise": [noise(lo, hi) for lo, hi in zip(t["low_a"], t["high_a"])],
        "B noise": [noise(lo, hi) for lo, hi in zip(t["low_b"], t["high_b"])], "verdict": t["verdict"]})
    text = shown.head(limit).to_markdown(index=False)
    if len(shown) > limit:
        text += f"\n... {len(shown) - limit} more (--out writes them all)"
    counts = t["verdict"].str.replace(r" \(.*", "", regex=True).value_counts()
    text += "\n\n" + ", ".join(f"{n} {v}" for v, n in counts.items()) + f" ({len(t)} rows)" + left_out
    failures = comparison.failures
    if len(failures):
        text += (f"\nFAIL: {len(failures)} regression(s) beyond the threshold or settings no longer ok: "
                 + "; ".join(f"{m} of {w}: {v}" + (f", worse by {x:.2f}x" if m != "status" else "")
                             for m, w, v, x in zip(failures["metric"], _what(failures), failures["verdict"],
                                                   failures["worse_by"])))
    return text
