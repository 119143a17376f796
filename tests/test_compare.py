"""`bench compare`: settings matched by the spec's axes, an outer join (a setting that stopped being ok is a
regression; metrics on one side only are listed), noise and seed intervals, per-metric thresholds, measurement
methods that changed, devices that differ, and exit codes."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.compare import CompareError, parse_thresholds
from bench.results import CellRecord, read_records
from tests.conftest import bench, fixture_run, write_run


def rewritten(run: Path, out: Path, change) -> Path:
    """A copy of a run with change(record) applied to every cell record (change may return None to drop it)."""
    records = [r for r in (change(record) for record in read_records(run)) if r is not None]
    return write_run(out, records, json.loads((run / "env.json").read_text()))


def slowed(run: Path, out: Path, factor: float, device_name: str | None = None) -> Path:
    """A copy of a run whose throughputs are `factor` times lower (and optionally another device)."""

    def slow(record):
        for row in record.rows:
            if row["metric"] == "throughput":
                row.update(value=row["value"] / factor, p20=row["p20"] / factor, p80=row["p80"] / factor)
            if device_name:
                row["device_name"] = device_name
        return record

    return rewritten(run, out, slow)


def test_compare_identical_runs_show_no_difference(tmp_path):
    run = fixture_run(tmp_path, ["scaling"], "cuda")
    proc = bench("compare", run, run, "--fail-above", "1.1")
    assert proc.returncode == 0, proc.stderr
    assert "within noise" in proc.stdout and "regression" not in proc.stdout and "improvement" not in proc.stdout


def test_compare_flags_a_20_percent_slowdown(tmp_path):
    run = fixture_run(tmp_path, ["scaling"], "cuda")
    slow = slowed(run, tmp_path / "slow", 1.2)
    plain = bench("compare", run, slow)
    assert plain.returncode == 0 and "regression" in plain.stdout  # flagged, but no threshold: exit 0
    failing = bench("compare", run, slow, "--fail-above", "1.1", "--out", tmp_path / "cmp.csv")
    assert failing.returncode == 1 and "FAIL:" in failing.stdout and "throughput of vit:B/16" in failing.stdout
    table = pd.read_csv(tmp_path / "cmp.csv")
    thr = table[table["metric"] == "throughput"]
    assert np.allclose(thr["ratio"], 1 / 1.2) and (thr["verdict"] == "regression").all()
    assert bench("compare", run, slow, "--fail-above", "1.25").returncode == 0  # 20% is within a 25% threshold
    # per metric: a threshold on another metric only does not fail on throughput
    assert bench("compare", run, slow, "--fail-above", "peak_memory:1.01").returncode == 0
    assert bench("compare", run, slow, "--fail-above", "throughput:1.1,peak_memory:1.5").returncode == 1


def test_a_setting_that_stopped_being_ok_is_a_regression(tmp_path):
    run = fixture_run(tmp_path, ["smoke"], "cpu")
    victim = read_records(run)[0].spec.cell_id

    def oom(record):
        if record.spec.cell_id == victim:
            return CellRecord(record.spec, [{**record.rows[0], "metric": "status", "value": None, "unit": "",
                                             "status": "oom", "error": "OutOfMemoryError"}])
        return record

    broken = rewritten(run, tmp_path / "oom", oom)
    proc = bench("compare", run, broken, "--fail-above", "1.5")
    assert proc.returncode == 1, proc.stdout
    assert "regression (ok -> oom)" in proc.stdout and "only in A" in proc.stdout and "FAIL:" in proc.stdout
    back = bench("compare", broken, run)
    assert back.returncode == 0 and "improvement (oom -> ok)" in back.stdout and "only in B" in back.stdout


def test_a_changed_measurement_method_is_not_comparable(tmp_path):
    run = fixture_run(tmp_path, ["smoke"], "cpu")

    def new_method(record):
        for row in record.rows:
            row["method_version"] = 2
        return record

    other = rewritten(slowed(run, tmp_path / "slow", 2.0), tmp_path / "v2", new_method)
    proc = bench("compare", run, other, "--fail-above", "1.1")
    assert proc.returncode == 0 and "not comparable (method version" in proc.stdout and "regression" not in proc.stdout


def test_accuracy_uses_the_seed_interval(tmp_path):
    run = fixture_run(tmp_path, ["data_efficiency"], "cpu")

    def shifted(delta):
        def change(record):
            for row in record.rows:
                if row["metric"] == "accuracy":
                    row["value"] += delta
            return record
        return change

    tiny = bench("compare", run, rewritten(run, tmp_path / "tiny", shifted(-0.0005)), "--out", tmp_path / "tiny.csv")
    worse = bench("compare", run, rewritten(run, tmp_path / "worse", shifted(-0.05)), "--fail-above", "accuracy:1.02",
                  "--out", tmp_path / "worse.csv")
    assert tiny.returncode == 0 and worse.returncode == 1 and "accuracy of resnet9" in worse.stdout
    tiny, worse = (pd.read_csv(tmp_path / f"{name}.csv") for name in ("tiny", "worse"))
    assert set(tiny.loc[tiny["metric"] == "accuracy", "verdict"]) == {"within noise"}  # 0.05 points: not shown
    worse = worse[worse["metric"] == "accuracy"]
    assert set(worse.loc[worse["n_a"] >= 3, "verdict"]) == {"regression"}  # 5 points, 3 seeds
    assert set(worse.loc[worse["n_a"] == 1, "verdict"]) == {"within noise"}  # one seed: no interval, no verdict


@pytest.mark.parametrize("text,message", [("nan", "expected a factor >= 1"), ("0.9", "expected a factor >= 1"),
                                          ("inf", "expected a factor >= 1"), ("speed:1.1", "unknown metric 'speed'"),
                                          ("throughput:abc", "expected a factor >= 1")])
def test_bad_thresholds_are_refused(text, message):
    with pytest.raises(CompareError, match=message):
        parse_thresholds(text)
    assert parse_thresholds("throughput:1.1,accuracy:1.02") == {"throughput": 1.1, "accuracy": 1.02}


def test_compare_refuses_unlike_devices_unless_asked(tmp_path):
    run = fixture_run(tmp_path, ["scaling"], "cuda")
    other = slowed(run, tmp_path / "other", 1.0, device_name="NVIDIA A100-SXM4-80GB")
    refused = bench("compare", run, other)
    assert refused.returncode == 2 and "not comparable" in refused.stderr and "Traceback" not in refused.stderr
    assert bench("compare", run, other, "--allow-different-devices").returncode == 0
    missing = bench("compare", run, tmp_path / "missing")
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1
    nan = bench("compare", run, run, "--fail-above", "nan")
    assert nan.returncode == 2 and "expected a factor >= 1" in nan.stderr


def test_compare_keys_are_every_axis_of_the_spec(tmp_path):
    """Two cells that differ only in an axis (here compile) stay two settings, never one median."""
    run = fixture_run(tmp_path, ["smoke"], "cpu")
    record = next(r for r in read_records(run) if r.spec.task == "train")
    twin = record.spec.replace(compile=True)
    rows = [{**row, "cell_id": twin.cell_id, "compile": True, "value": row["value"] and row["value"] * 3}
            for row in record.rows]
    both = write_run(tmp_path / "both", read_records(run) + [CellRecord(twin, rows)])
    table = tmp_path / "cmp.csv"
    assert bench("compare", both, both, "--out", table).returncode == 0
    frame = pd.read_csv(table)
    assert len(frame[(frame["metric"] == "throughput") & (frame["model"] == record.spec.model)
                     & (frame["task"] == "train")]) == 2
    from bench.report import load, metrics_csv

    runs = load([both], tmp_path)
    metrics_csv(runs, tmp_path)
    metrics = pd.read_csv(tmp_path / "metrics.csv")
    assert len(metrics[(metrics["metric"] == "throughput") & (metrics["model"] == record.spec.model)
                       & (metrics["task"] == "train")]) == 2


def test_values_no_measurement_can_have_are_left_out_and_said(tmp_path):
    """A NaN accuracy (one seed) or one above 1 never enters a verdict: left out, each named by its cell file."""
    run = fixture_run(tmp_path, ["data_efficiency"], "cpu")
    records = [r for r in read_records(run) if r.spec.model == "resnet9" and r.spec.train_size == 1000]
    victims = {records[0].spec.cell_id: float("nan"), records[1].spec.cell_id: 1.3}

    def spoil(record):
        for row in record.rows:
            if row["metric"] == "accuracy" and row["cell_id"] in victims:
                row["value"] = victims[row["cell_id"]]
        return record

    spoilt = rewritten(run, tmp_path / "spoilt", spoil)
    proc = bench("compare", run, spoilt, "--out", tmp_path / "cmp.csv")
    assert proc.returncode == 0, proc.stderr
    assert "nan" not in pd.read_csv(tmp_path / "cmp.csv")["value_b"].astype(str).tolist()
    said = proc.stdout[proc.stdout.index("left out"):]
    assert "2 value(s) no measurement can have" in said and "accuracy 1.3 (valid 0 to 1)" in said
    assert all(f"{spoilt}/cells/{cell}.json" in said for cell in victims)


def test_rows_with_a_noisy_side_say_so_and_stay_out_of_the_verdict_unless_asked(tmp_path):
    """B ran on a busy machine (every timing flagged) and 20 % slower: each such row says which side is noisy, the
    output ends with their count, --fail-above leaves them out unless --include-noisy; the comparison is typed."""
    run = fixture_run(tmp_path, ["scaling"], "cuda")

    def busy(record):
        for row in record.rows:
            if row["metric"] in ("throughput", "throughput_ratio"):
                row["noisy"] = "busy: other processes used 45% of the CPU"
        return record

    noisy = rewritten(slowed(run, tmp_path / "slow", 1.2), tmp_path / "busy", busy)
    proc = bench("compare", run, noisy, "--fail-above", "1.1", "--out", tmp_path / "cmp.csv")
    assert proc.returncode == 0, proc.stdout  # every regression is on a noisy row
    rows = [[c.strip() for c in line.split("|")] for line in proc.stdout.splitlines() if "| throughput " in line]
    assert rows and all(cells[-3:-1] == ["regression", "B"] for cells in rows), rows[:2]
    table = pd.read_csv(tmp_path / "cmp.csv")
    timed = table["metric"].isin(["throughput", "throughput_ratio"])
    assert (table.loc[timed, "noisy"] == "B").all() and table.loc[~timed, "noisy"].isna().all()
    assert proc.stdout.splitlines()[-2].startswith(f"{timed.sum()} row(s) compare noisy side(s) (busy machine or")
    counted = bench("compare", run, noisy, "--fail-above", "1.1", "--include-noisy")
    assert counted.returncode == 1 and "FAIL:" in counted.stdout

    from bench.compare import compare

    result = compare(run, noisy, fail_above={None: 1.1})
    change = result.table.loc[result.table["metric"] == "throughput", "change"].iloc[0]
    assert change.significant and change.direction == "worse" and change.noisy == ("B",)
    assert change.interval.high < 1 and result.failures.empty
