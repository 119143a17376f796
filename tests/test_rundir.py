"""bench/rundir.py: run-dir problems are one-line errors, a resume with another code version is refused unless
allowed, and damaged result files are rebuilt (damaged cell files moved aside and rerun)."""

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import ONE_CELL, SMOKE, bench, suite_file


@pytest.mark.slow
def test_damaged_results_are_rebuilt_and_damaged_cell_files_rerun(smoke_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(smoke_run[0], run_dir)
    text = (run_dir / "results.csv").read_text()
    (run_dir / "results.csv").write_text(text[: len(text) // 2])  # cut mid-line
    victim = sorted((run_dir / "cells").glob("*.json"))[0]
    victim.write_text(victim.read_text()[:100])  # a cell file cut short (only possible from outside)
    rerun = bench("run", SMOKE, "--run-dir", run_dir, "--device", "cpu", "--allow-mixed-versions", timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert "4 already done" in rerun.stdout and f"cells/{victim.name} was damaged" in rerun.stdout
    frame = pd.read_csv(run_dir / "results.csv")
    assert frame["cell_id"].nunique() == 5 and not frame.duplicated(["cell_id", "metric"]).any()
    assert (run_dir / "cells" / f"{victim.name}.damaged").exists()


@pytest.mark.slow
def test_resume_with_another_code_version_is_refused_unless_allowed(tmp_path):
    run_dir = tmp_path / "run"
    suite = suite_file(tmp_path, ONE_CELL)
    assert bench("run", suite, "--run-dir", run_dir, "--device", "cpu", timeout=300).returncode == 0
    env = json.loads((run_dir / "env.json").read_text())
    env["code_version"] = "0123456789abcdef"
    (run_dir / "env.json").write_text(json.dumps(env))
    refused = bench("run", suite, "--run-dir", run_dir, "--device", "cpu")
    assert refused.returncode == 2 and "started with code version 0123456789abcdef" in refused.stderr
    assert "--allow-mixed-versions" in refused.stderr
    allowed = bench("run", suite, "--run-dir", run_dir, "--device", "cpu", "--allow-mixed-versions")
    assert allowed.returncode == 0 and "1 already done" in allowed.stdout


def test_run_dir_problems_are_one_line_errors(tmp_path):
    suite = suite_file(tmp_path, ONE_CELL)
    (tmp_path / "afile").write_text("x")
    other = suite_file(tmp_path, ONE_CELL, name="other")
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "env.json").write_text(json.dumps({"suite": "other", "code_version": "x"}))
    for run_dir, expected in ((tmp_path / "afile", "exists and is not a directory"),
                              (tmp_path / "afile" / "run", "cannot write there"),
                              (Path("/sys/vitbench-test"), "cannot write there"),
                              (tmp_path / "used", "holds suite 'other', not 't'")):
        proc = bench("run", suite, "--run-dir", run_dir, "--device", "cpu")
        assert proc.returncode == 2 and expected in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert other.exists()
