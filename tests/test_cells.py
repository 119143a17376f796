"""Cells at the speed of their measurements: forked warm from a parent that has imported everything, with the same
rows as a fresh interpreter gives; crashes still rows; the decoded-dataset cache; the timing breakdown."""

import os
import signal
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from bench import data as data_mod
from bench.data import readers
from bench.measure.phases import PHASES
from bench.runner import run_suite
from bench.suite import load_suite
from tests.conftest import ROOT, cell_processes, fake_fashion, needs_fmnist, suite_file, wait_for

DETERMINISTIC = """
    grid:
      model: [resnet20]
      task: [train_eval]
      dataset: [fashion-mnist]
      img_size: [28]
      train_size: [300]
      batch_size: [32]
      seed: [0, 1]
      budget: [{epochs: 1, evals: 2}]
"""


@needs_fmnist
@pytest.mark.slow
def test_a_warm_cell_gets_the_rows_a_fresh_interpreter_gets(tmp_path):
    suite = load_suite(suite_file(tmp_path, DETERMINISTIC), "cpu")
    rows = {}
    for start in ("warm", "fresh"):
        summary = run_suite(suite, tmp_path / start, ["test"], start=start, log=lambda line: None)
        rows[start] = {(r["seed"], r["metric"]): r for r in summary.rows}
        assert summary.failed == 0
    for seed in (0, 1):
        for metric in ("accuracy", "test_loss", "val_accuracy", "images_seen", "train_flops"):
            assert rows["warm"][seed, metric]["value"] == rows["fresh"][seed, metric]["value"], (seed, metric)
    # the second cell: the first one waits for the warm parent's own imports, once per run
    warm, fresh = rows["warm"][1, "accuracy"], rows["fresh"][1, "accuracy"]
    assert warm["startup_s"] < 1.0 < fresh["startup_s"]  # no interpreter, no imports


@pytest.mark.slow
def test_a_crashed_cell_is_a_row_and_its_siblings_are_unaffected(tmp_path):
    suite = suite_file(tmp_path, "repeats: 100000\nwarmup: 0\niters: 10\ntimeout_s: 300\ngrid:\n"
                                 "  model: [resnet20, resnet32]\n  task: [train]\n  img_size: [28]\n"
                                 "  batch_size: [64]\n")
    run_dir = tmp_path / "run"
    runner = subprocess.Popen([sys.executable, "-m", "bench", "run", str(suite), "--run-dir", str(run_dir), "--device",
                               "cpu"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        (cell,) = wait_for(lambda: cell_processes(run_dir), what="the first cell")
        os.kill(cell, signal.SIGSEGV)
        wait_for(lambda: len(list((run_dir / "cells").glob("*.json"))) >= 1, what="the crashed cell's record")
        # the second cell runs on regardless; it is slow too (repeats 100000): stop it with a plain signal
        second = wait_for(lambda: [p for p in cell_processes(run_dir) if p != cell], what="the second cell")
        os.kill(second[0], signal.SIGTERM)
        runner.communicate(timeout=120)
    finally:
        runner.kill()
    frame = pd.read_csv(run_dir / "results.csv").drop_duplicates("cell_id").set_index("model")
    assert frame.loc["resnet20", "status"] == "killed" and "signal 11 (SIGSEGV)" in frame.loc["resnet20", "error"]
    assert frame.loc["resnet32", "status"] == "killed" and "signal 15 (SIGTERM)" in frame.loc["resnet32", "error"]
    assert frame["cell_wall_s"].notna().all()


def test_the_dataset_cache_is_used_invalidated_by_a_changed_source_and_rebuilt_when_damaged(tmp_path, monkeypatch):
    fake_fashion(tmp_path / "data" / "fashion-mnist", value=3)
    monkeypatch.setenv("VITBENCH_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("VITBENCH_CACHE", str(tmp_path / "cache"))
    first = data_mod.load_train("fashion-mnist", 28)
    entries = sorted((tmp_path / "cache" / "data").glob("*.x.npy"))
    assert len(entries) == 1 and int(first.train.x.max()) == 3

    real_read = readers.read_idx
    monkeypatch.setattr(readers, "read_idx", lambda *a, **k: pytest.fail("decoded again instead of the cache"))
    cached = data_mod.load_train("fashion-mnist", 28)
    assert cached.checksum == first.checksum and bool((cached.train.x == first.train.x).all())
    monkeypatch.setattr(readers, "read_idx", real_read)

    fake_fashion(tmp_path / "data2" / "fashion-mnist", value=9)  # a changed source: new bytes, same names
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):
        os.replace(tmp_path / "data2" / "fashion-mnist" / name, tmp_path / "data" / "fashion-mnist" / name)
    changed = data_mod.load_train("fashion-mnist", 28)
    assert int(changed.train.x.max()) == 9 and changed.checksum != first.checksum

    entry = next(p for p in (tmp_path / "cache" / "data").glob("*.x.npy") if p != entries[0])
    entry.write_bytes(entry.read_bytes()[:-100] + b"\xff" * 100)  # damaged: never trusted
    rebuilt = data_mod.load_train("fashion-mnist", 28)
    assert int(rebuilt.train.x.max()) == 9 and bool((rebuilt.train.x == changed.train.x).all())
    assert np.load(entry).max() == 9  # and written again


def test_every_row_carries_the_timing_breakdown(tmp_path):
    suite = load_suite(suite_file(tmp_path, "repeats: 1\nwarmup: 0\niters: 1\ngrid:\n  model: [resnet20]\n"
                                            "  img_size: [28]\n  batch_size: [2]\n  task: [infer, train]\n"), "cpu")
    summary = run_suite(suite, tmp_path / "run", ["test"], log=lambda line: None)
    frame = pd.DataFrame(summary.rows)
    for name in (*PHASES, "cell_wall"):
        assert frame[f"{name}_s"].notna().all() and (frame[f"{name}_s"] >= 0).all(), name
    assert (frame["cell_wall_s"] >= frame["train_s"]).all() and (frame["train_s"] > 0).all()
