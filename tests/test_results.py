"""bench/results.py: result files that cannot be read are one-line errors, records of an older schema are
refused, writes are atomic and UTF-8 whatever the locale, and a value outside its metric's valid range is left
out by the readers and named."""

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from bench.results import METRICS, SCHEMA_VERSION, without_impossible, write_atomic
from tests.conftest import ROOT, bench


@pytest.mark.parametrize("content", ["", "garbage\x00\x01,\n1,2,3\n", "a,b\n1,2\n"])
def test_unreadable_results_are_one_line_errors(tmp_path, content):
    (tmp_path / "results.csv").write_text(content)
    proc = bench("report", tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_results_of_an_older_schema_are_refused(tmp_path):
    (tmp_path / "results.csv").write_text("suite,run_id,cell_id,metric,value,status\ns,r,abc,throughput,1.0,ok\n")
    proc = bench("report", tmp_path)
    assert proc.returncode == 2 and "no cell records" in proc.stderr and "written by an older vitbench" in proc.stderr
    (tmp_path / "cells").mkdir()
    (tmp_path / "cells" / "abc.json").write_text(json.dumps({"schema_version": 2, "cell_id": "abc", "spec": {},
                                                             "rows": []}))
    proc = bench("report", tmp_path)
    assert proc.returncode == 2 and f"schema version 2, expected {SCHEMA_VERSION}" in proc.stderr


def test_write_atomic_writes_utf8_in_an_ascii_locale(tmp_path):
    """Text is written as UTF-8 whatever the locale (a non-ASCII model name or path in a record used to fail
    under LC_ALL=C with UTF-8 mode off), and nothing but the target is left in the folder."""
    code = f"from bench.results import write_atomic; write_atomic(__import__('pathlib').Path({str(tmp_path)!r}) / " \
           "'r.json', 'caf\\u00e9 \\u2713')"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0"})
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "r.json").read_text(encoding="utf-8") == "caf\u00e9 \u2713"
    write_atomic(tmp_path / "r.json", lambda file: file.write(b"bytes"))
    assert (tmp_path / "r.json").read_bytes() == b"bytes" and os.listdir(tmp_path) == ["r.json"]


def test_a_value_outside_its_metrics_valid_range_is_left_out_and_named():
    frame = pd.DataFrame({"cell_id": list("abcdef"), "status": ["ok"] * 5 + ["oom"],
                          "metric": ["images_seen", "accuracy", "accuracy", "step_time", "throughput", "status"],
                          "value": np.array([4000, 2, 1, -1, 0, 0])})  # integers as numpy reads them: numbers too
    kept, said = without_impossible(frame, "runs/r")
    assert list(kept["cell_id"]) == ["a", "c", "e", "f"]  # a failed cell's row has no value to check
    assert said == ["runs/r/cells/b.json: accuracy 2 (valid 0 to 1)",
                    "runs/r/cells/d.json: step_time -1 (valid 0 or more)"]
    kept, said = without_impossible(frame.assign(value=[np.inf, 0.5, np.nan, 1.0, 1.0, None]), "runs/r")
    assert list(kept["cell_id"]) == ["b", "d", "e", "f"]
    assert said == ["runs/r/cells/a.json: images_seen inf (valid 0 or more)",
                    "runs/r/cells/c.json: accuracy nan (valid 0 to 1)"]
    assert all(m.valid[0] == 0 for m in METRICS.values())
