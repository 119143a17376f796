"""python -m bench compare RUN_A RUN_B: run B against run A, setting by setting (as asv's compare and
pytest-benchmark's --benchmark-compare-fail do).

Settings are matched by the cell spec's identity axes (bench/results.py: setting_columns; seeds pooled), not by
run or cell id, so two runs of a suite, or two suites sharing cells, compare. Both runs are joined outer: a
setting or a metric measured on one side only is listed as such, never dropped. Per setting, the worst status of
its cells: a setting that was ok in A and failed in B (oom, error, timeout, killed, skipped) is a regression
listed with its status, the reverse an improvement. Per metric, B/A and a Change (typed, formatted only at the
edge, as pyperf's CompareResult), printed as a verdict:
  regression / improvement  the change is significant (beyond the noise) in the metric's bad / good direction (its
                            registered direction, bench/results.py: METRICS); metrics without a direction say
                            "changed"
  within noise              timings and other metrics: the p20-p80 ranges of the two runs overlap (the interval of
                            B/A between them includes 1); accuracy metrics: the 95% interval of B - A over seeds
                            (Welch t) includes 0, or one side has a single seed (no interval), the report's rule
  not comparable            the task's measurement method changed between the runs (method_version)
Beside each row, the sides whose rows carry a noise flag (the `noisy` column: busy machine, wide spread); the
output ends with their count. With --fail-above (one factor for every metric, or per metric:
throughput:1.1,accuracy:1.02) the command exits 1 when a metric regressed by more than its factor (B/A for
lower-is-better metrics, A/B for higher-is-better) on a row without a noisy side (any row with --include-noisy),
or when a setting stopped being ok. Runs on different devices (device_name) are refused unless
--allow-different-devices.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .results import METRICS, STATUSES, flagged, read_records, rows_frame, setting_columns, without_impossible
from .stats import Interval, difference_interval



RANGES = "p20-p80 ranges"  # the method of a B / A interval between the two runs' ranges


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


@dataclass(frozen=True)
class Change:
    """Run B against run A for one setting and metric, or for one setting's status; formatted only at the edge
    (describe), as pyperf's CompareResult."""

    significant: bool = False  # beyond the noise; a changed status always is
    direction: str = ""  # better | worse | changed (a metric without a good direction; one failure into another)
    interval: Interval | None = None  # accuracy: B - A over seeds; other metrics: B / A between the p20-p80 ranges
    noisy: tuple[str, ...] = ()  # the sides ('A', 'B') whose rows carry a noise flag (busy machine, wide spread)
    only_in: str = ""  # 'A' or 'B': measured on that side only
    not_comparable: str = ""  # why not: the measurement method changed
    status: tuple[str, str] | None = None  # the setting's worst cell status in A and in B, where it changed

    @property
    def regression(self) -> bool:
        return self.significant and self.direction == "worse"

    @property
    def kind(self) -> str:
        """regression | improvement | changed | within noise | not comparable | only in A | only in B"""
        if self.only_in:
            return f"only in {self.only_in}"
        if self.not_comparable:
            return "not comparable"
        if not self.significant:
            return "within noise"
        return {"worse": "regression", "better": "improvement"}.get(self.direction, "changed")


def describe(change: Change) -> str:
    """The verdict as printed: 'regression', 'regression (ok -> oom)', 'not comparable (method version 1 -> 2)'."""
    detail = change.not_comparable or (" -> ".join(change.status) if change.status else "")
    return f"{change.kind} ({detail})" if detail else change.kind


@dataclass
class Comparison:
    table: pd.DataFrame  # one row per matched (setting, metric), plus one per setting whose status changed; the
    # `change` column holds each row's Change
    failures: pd.DataFrame  # the rows beyond --fail-above, and the settings that stopped being ok
    excluded: list[str]  # rows of either run left out: values no measurement can have (results.without_impossible)
    include_noisy: bool = False  # rows with a noisy side count towards --fail-above


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
    ok["flagged"] = flagged(ok["noisy"])
    keys = [*setting_columns(), "paired_with", "metric"]
    return ok.groupby(keys, sort=False).agg(
        value=("value", "median"), low=("low", "min"), high=("high", "max"), n=("value", "size"),
        values=("value", list), method=("method_version", "max"), noisy=("flagged", "any")).reset_index()


def _direction(metric: str, a: float, b: float) -> str:
    if a == b:
        return ""
    if METRICS[metric].direction == "neither":
        return "changed"
    return "better" if (b > a) == (METRICS[metric].direction == "higher") else "worse"


def _change(r: pd.Series) -> Change:
    noisy = tuple(side for side in ("A", "B") if r[f"noisy_{side.lower()}"])
    if pd.isna(r["value_a"]) or pd.isna(r["value_b"]):
        return Change(only_in="A" if pd.isna(r["value_b"]) else "B", noisy=noisy)
    if r["method_a"] != r["method_b"] and not (pd.isna(r["method_a"]) and pd.isna(r["method_b"])):
        return Change(not_comparable=f"method version {r['method_a']:g} -> {r['method_b']:g}", noisy=noisy)
    if METRICS[r["metric"]].group == "accuracy":  # seeds: shown only when B - A's interval excludes 0 (1 seed: never)
        interval = difference_interval(r["values_b"], r["values_a"], paired=False)
        significant = interval.shown
    else:  # beyond the noise when the two runs' p20-p80 ranges do not overlap
        with np.errstate(divide="ignore", invalid="ignore"):
            interval = Interval(r["ratio"], float(np.divide(r["low_b"], r["high_a"])),
                                float(np.divide(r["high_b"], r["low_a"])), int(min(r["n_a"], r["n_b"])),
                                RANGES)
        significant = bool(r["low_b"] > r["high_a"] or r["high_b"] < r["low_a"])
    return Change(significant, _direction(r["metric"], r["value_a"], r["value_b"]), interval, noisy)


def _status_change(a: str, b: str) -> Change:
    """A setting that stopped being ok regressed, one that became ok improved; one failure turning into another
    (oom -> error) only changed."""
    return Change(True, "worse" if a == "ok" else "better" if b == "ok" else "changed", status=(a, b))


def compare(run_a: Path, run_b: Path, fail_above: dict[str | None, float] | None = None,
            allow_different_devices: bool = False, metrics: list[str] | None = None,
            include_noisy: bool = False) -> Comparison:
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
    merged[["noisy_a", "noisy_b"]] = merged[["noisy_a", "noisy_b"]].astype("boolean").fillna(False).astype(bool)
    merged["ratio"] = merged["value_b"] / merged["value_a"]
    merged["change"] = [_change(r) for _, r in merged.iterrows()] if len(merged) else []
    higher = merged["metric"].map(lambda m: METRICS[m].direction == "higher").astype(bool)
    merged["worse_by"] = np.where(higher, 1 / merged["ratio"], merged["ratio"])

    statuses = pd.concat([_statuses(a).rename("status_a"), _statuses(b).rename("status_b")], axis=1)
    changed = statuses[statuses["status_a"].fillna("") != statuses["status_b"].fillna("")].reset_index()
    changed = changed[changed["status_a"].notna() & changed["status_b"].notna()]  # one-sided ones: see metrics
    changed["metric"] = "status"
    changed["change"] = [_status_change(sa, sb) for sa, sb in zip(changed["status_a"], changed["status_b"])]
    table = pd.concat([changed, merged], ignore_index=True)
    table = table.reindex(table["ratio"].map(lambda r: -abs(np.log(r)) if r and np.isfinite(r) else 0.0)
                          .sort_values(kind="stable").index)
    failures = table.iloc[0:0]
    if fail_above is not None:
        limit = table["metric"].map(lambda m: fail_above.get(m, fail_above.get(None, math.inf)))
        beyond = [c.regression and (c.status is not None or (worse > most and (include_noisy or not c.noisy)))
                  for c, worse, most in zip(table["change"], table["worse_by"], limit)]
        failures = table[np.array(beyond, dtype=bool)]
    return Comparison(table, failures, excluded_a + excluded_b, include_noisy)


def _what(t: pd.DataFrame) -> pd.Series:
    shape = t["attn_shape"].astype(str)
    what = t["model"].where(t["model"] != "", "attention " + t["attn_backend"] + " " + shape)
    size = np.where(t["train_size"].astype(str) != "", " n=" + t["train_size"].astype(str), "")
    return what + " " + t["task"] + " bs" + t["batch_size"].astype(str) + " " + t["img_size"].astype(str) + "px" + size


def _interval(change: Change) -> str:
    """'B/A [0.81, 0.86]' (between the p20-p80 ranges), 'B-A [-0.051, -0.046]' (over seeds), or ''."""
    i = change.interval
    if i is None or not i.has_interval:
        return ""
    return f"{'B/A' if i.method == RANGES else 'B-A'} [{i.low:.4g}, {i.high:.4g}]"


def _noisy_count(comparison: Comparison) -> str:
    noisy = sum(bool(c.noisy) for c in comparison.table["change"])
    if not noisy:
        return "no row has a side flagged noisy"
    counted = "counted by --fail-above (--include-noisy)" if comparison.include_noisy else \
        "left out of --fail-above (--include-noisy counts them)"
    return (f"{noisy} row(s) compare noisy side(s) (busy machine or wide spread; the `noisy` column of the runs' "
            f"rows says why): {counted}")


def csv_table(comparison: Comparison) -> pd.DataFrame:
    """The whole comparison for --out: each Change as columns (verdict, significant, direction, noisy, interval)."""
    changes = comparison.table["change"]
    return comparison.table.drop(columns="change").assign(
        verdict=changes.map(describe), significant=changes.map(lambda c: c.significant),
        direction=changes.map(lambda c: c.direction), noisy=changes.map(lambda c: ", ".join(c.noisy)),
        interval=changes.map(_interval))


def format_table(comparison: Comparison, limit: int = 60) -> str:
    t = comparison.table
    excluded = comparison.excluded
    left_out = (f"\nleft out: {len(excluded)} value(s) no measurement can have: {'; '.join(excluded[:5])}"
                + (f"; ... {len(excluded) - 5} more" if len(excluded) > 5 else "")) if excluded else ""
    if t.empty:
        return "no settings or metrics in either run" + left_out
    number = lambda v: "" if pd.isna(v) else f"{v:.4g}"  # noqa: E731
    shown = pd.DataFrame({
        "setting": _what(t), "metric": t["metric"],
        "A": [s if m == "status" else number(v) for m, s, v in zip(t["metric"], t["status_a"], t["value_a"])],
        "B": [s if m == "status" else number(v) for m, s, v in zip(t["metric"], t["status_b"], t["value_b"])],
        "B/A": t["ratio"].map(number), "interval": t["change"].map(_interval),
        "verdict": t["change"].map(describe), "noisy": t["change"].map(lambda c: ", ".join(c.noisy))})
    text = shown.head(limit).to_markdown(index=False)
    if len(shown) > limit:
        text += f"\n... {len(shown) - limit} more (--out writes them all)"
    counts = Counter(c.kind for c in t["change"])
    text += "\n\n" + ", ".join(f"{n} {kind}" for kind, n in counts.most_common()) + f" ({len(t)} rows)" + left_out
    failures = comparison.failures
    if len(failures):
        text += (f"\nFAIL: {len(failures)} regression(s) beyond the threshold or settings no longer ok: "
                 + "; ".join(f"{m} of {w}: {describe(c)}" + (f", worse by {x:.2f}x" if m != "status" else "")
                             for m, w, c, x in zip(failures["metric"], _what(failures), failures["change"],
                                                   failures["worse_by"])))
    return text + "\n" + _noisy_count(comparison)
