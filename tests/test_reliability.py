"""Nothing silently wrong: each fault class a hostile user found has a test here (the regression gate's are in
test_compare.py). Signals end the run at once and take every process along; environments never mix; data files
that disagree, diverged training, too-small or one-class subsets and ambiguous checkpoints are refused or flagged;
no command shows a traceback, whatever it is given."""

import errno
import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from bench import data as data_mod
from bench.data import readers
from bench.__main__ import main
from bench.results import CellRecord
from bench.suite import SuiteError, load_suite
from bench.training import Curve, FinalScore, divergence
from bench.results import read_records
from tests.conftest import (ONE_CELL, ROOT, bench, cell_processes, fake_fashion, fixture_run, needs_fmnist, suite_file,
                            wait_for, write_idx, write_run)

TWO_SLOW_CELLS = ("repeats: 100000\nwarmup: 0\niters: 10\ntimeout_s: 300\ngrid:\n  model: [resnet20, resnet32]\n"
                  "  task: [train]\n  img_size: [28]\n  batch_size: [64]\n")


def runner(suite, run_dir, *extra, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "bench", "run", str(suite), "--run-dir", str(run_dir), "--device",
                             "cpu", *extra], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            **kwargs)


# ------------------------------------------------------------------------------------------ signals and processes


@pytest.mark.slow
@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_one_signal_ends_the_run_at_once_and_records_nothing_half_done(tmp_path, sig, code):
    run_dir = tmp_path / "run"
    proc = runner(suite_file(tmp_path, TWO_SLOW_CELLS), run_dir)
    try:
        wait_for(lambda: cell_processes(run_dir), what="the first cell process")
        sent = time.monotonic()
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=30)
        took = time.monotonic() - sent
    finally:
        proc.kill()
    assert proc.returncode == code and took < 15, (proc.returncode, took, err)
    assert "interrupted" in err and "Traceback" not in err
    assert not cell_processes(run_dir) and not list((run_dir / "cells").glob("*.json"))  # none recorded half-done
    assert "[2/2]" not in out  # the queued cell never started
    again = bench("run", suite_file(tmp_path, ONE_CELL, "other"), "--run-dir", tmp_path / "free", "--device", "cpu")
    assert again.returncode == 0
    assert (run_dir / ".lock").read_text() == ""  # released


@pytest.mark.slow
def test_a_runner_killed_with_sigkill_takes_its_running_cell_along(tmp_path):
    """No handler runs on SIGKILL: the warm parent sees the runner go and exits, and its cells die with it."""
    run_dir = tmp_path / "run"
    proc = runner(suite_file(tmp_path, TWO_SLOW_CELLS), run_dir)
    try:
        wait_for(lambda: cell_processes(run_dir), what="the first cell process")
        proc.kill()
        proc.wait()
        wait_for(lambda: not cell_processes(run_dir), timeout=10, what="the cell to die with its runner")
    finally:
        proc.kill()


# a data-parallel cell of two ranks that trains for minutes unless stopped (the tests stop it)
DATA_PARALLEL_CELL = """
    grid:
      model: ["vit:Mu/7"]
      task: [train_eval]
      dataset: [fashion-mnist]
      img_size: [28]
      nproc: [2]
      budget: [{epochs: 50}]
"""


@needs_fmnist
@pytest.mark.slow
def test_sigterm_takes_the_data_parallel_ranks_along(tmp_path):
    suite = suite_file(tmp_path, DATA_PARALLEL_CELL)
    run_dir = tmp_path / "run"
    proc = runner(suite, run_dir)
    try:
        wait_for(lambda: len(cell_processes(run_dir)) >= 3, timeout=180, what="the cell and its two ranks")
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 143
    wait_for(lambda: not cell_processes(run_dir), timeout=10, what="every process of the cell to die")


@needs_fmnist
@pytest.mark.slow
def test_a_runner_killed_while_ranks_start_takes_them_along(tmp_path):
    """SIGKILL as soon as the first rank exists (still importing torch, before any line of its own): the cell's
    whole process group goes with it, the ranks and multiprocessing's resource tracker included."""
    suite = suite_file(tmp_path, DATA_PARALLEL_CELL)
    run_dir = tmp_path / "run"
    proc = runner(suite, run_dir)
    try:
        wait_for(lambda: len(cell_processes(run_dir)) >= 2, timeout=180, what="the cell and a starting rank")
        proc.kill()
        proc.wait()
        wait_for(lambda: not cell_processes(run_dir), timeout=10, what="every process of the cell to die")
    finally:
        proc.kill()


def test_an_unreachable_ray_cluster_is_one_line_before_the_run_dir(tmp_path):
    pytest.importorskip("ray")
    started = time.monotonic()
    proc = bench("run", suite_file(tmp_path, ONE_CELL), "--run-dir", tmp_path / "run", "--device", "cpu",
                 "--executor", "ray", "--address", "127.0.0.1:9", timeout=60)
    assert proc.returncode == 2 and time.monotonic() - started < 30
    assert "no Ray cluster answers there" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_closed_stdout_never_stops_the_suite(tmp_path):
    suite = suite_file(tmp_path, ONE_CELL.replace("[resnet20]", "[resnet20, resnet32]"))
    proc = subprocess.run(f"{sys.executable} -m bench run {suite} --run-dir {tmp_path / 'run'} --device cpu | head -1; "
                          "exit ${PIPESTATUS[0]}", shell=True, executable="/bin/bash", cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0 and "stdout was closed; the run goes on" in proc.stderr
    assert len(list((tmp_path / "run" / "cells").glob("*.json"))) == 2


# ------------------------------------------------------------------------------------------ mixed environments


@pytest.mark.slow
def test_resume_in_another_environment_is_refused_unless_allowed_and_the_report_marks_it(tmp_path):
    run_dir = tmp_path / "run"
    suite = suite_file(tmp_path, ONE_CELL.replace("[resnet20]", "[resnet20, resnet32]"))
    assert bench("run", suite, "--run-dir", run_dir, "--device", "cpu", timeout=300).returncode == 0
    env = json.loads((run_dir / "env.json").read_text())
    env["torch"] = "2.11.0"
    (run_dir / "env.json").write_text(json.dumps(env))
    (run_dir / "cells" / sorted(os.listdir(run_dir / "cells"))[0]).unlink()  # one cell left to run
    refused = bench("run", suite, "--run-dir", run_dir, "--device", "cpu")
    assert refused.returncode == 2 and "started in another environment (torch 2.11.0 -> " in refused.stderr
    assert len(list((run_dir / "cells").glob("*.json"))) == 1  # nothing ran
    allowed = bench("run", suite, "--run-dir", run_dir, "--device", "cpu", "--allow-mixed-versions", timeout=300)
    assert allowed.returncode == 0
    assert bench("report", run_dir, "--out", tmp_path / "report").returncode == 0
    assert "**Mixed environments** (resumed with --allow-mixed-versions): torch 2.11.0 -> " in \
        (tmp_path / "report" / "report.md").read_text()


# ------------------------------------------------------------------------------------------ accuracy that is none


def test_data_files_that_disagree_are_refused_naming_both(tmp_path, monkeypatch):
    folder = tmp_path / "fashion-mnist"
    fake_fashion(folder)
    write_idx(folder / "train-labels-idx1-ubyte.gz", np.arange(30) % 10)  # 40 images, 30 labels
    monkeypatch.setenv("VITBENCH_DATA", str(tmp_path))
    monkeypatch.setenv("VITBENCH_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ValueError, match="has 40 images but .*train-labels-idx1-ubyte.gz has 30 labels"):
        data_mod.load_train("fashion-mnist", 28)


def test_both_splits_come_from_one_place_and_rows_record_it(tmp_path, monkeypatch):
    partial, whole = tmp_path / "a" / "fashion-mnist", tmp_path / "b"
    fake_fashion(partial, value=1)
    (partial / "t10k-labels-idx1-ubyte.gz").unlink()  # only three of the four files here
    fake_fashion(whole / "FashionMNIST" / "raw", value=2)
    monkeypatch.setattr(readers, "fashion_mnist_search_path",
                        lambda: [partial, whole / "FashionMNIST" / "raw"])
    monkeypatch.setenv("VITBENCH_CACHE", str(tmp_path / "cache"))
    data = data_mod.load_train("fashion-mnist", 28)
    assert int(data.train.x.max()) == 2 and data.source == str(whole / "FashionMNIST" / "raw")
    assert len(data.checksum) == 64 and int(data_mod.load_test("fashion-mnist", 28).x.max()) == 2


def test_divergence_without_a_non_finite_loss_is_flagged():
    curve = Curve(clock=None)
    curve.points = [{"train_loss": 2.3}, {"train_loss": 1e21}]
    reasons = divergence(FinalScore(accuracy=0.1, loss=7e12, n=10000), 10, curve)
    assert "at chance" in reasons and "uniform guess" in reasons and "rose from 2.3 to 1e+21" in reasons
    healthy = Curve(clock=None)
    healthy.points = [{"train_loss": 2.3}, {"train_loss": 0.4}]
    assert divergence(FinalScore(accuracy=0.85, loss=0.45, n=10000), 10, healthy) == ""


def test_diverged_cells_stay_out_of_the_answer(tmp_path):
    run = fixture_run(tmp_path, ["data_efficiency"], "cpu")
    records = []
    for record in read_records(run):
        for row in record.rows:
            if record.spec.model == "resnet9":
                row["diverged"] = "test accuracy 0.100 is at chance (0.100)"
        records.append(record)
    write_run(tmp_path / "diverged", records)
    from bench.report import write_report

    report = write_report([tmp_path / "diverged"], tmp_path / "report").read_text()
    answer = report[report.index("## Answer"):report.index("## Data efficiency")]
    assert "`resnet9`" not in answer.split("**Learning curves**")[0]
    assert "ok, diverged" in report and "test accuracy 0.100 is at chance" in report


@pytest.mark.parametrize("grid,message", [
    ("{model: [resnet20], task: [train_eval], dataset: [fashion-mnist], img_size: [28], train_size: [5], "
     "budget: [{epochs: 1}]}", "train_size 5 is below one image for each of the 10 classes"),
    ("{model: [resnet20], task: [train_eval], dataset: ['fashion-mnist:9-9'], img_size: [28], budget: [{epochs: 1}]}",
     "class range 9-9 has 1 class(es); a classification task needs at least two"),
    ("[{model: ['vit:Mu/7'], task: [pretrain], dataset: ['fashion-mnist:0-4'], img_size: [28], "
     "train_size: [500, 1000], "
     "budget: [{epochs: 1}]}, {model: ['vit:Mu/7'], task: [finetune], init: ['fashion-mnist:0-4'], "
     "dataset: ['fashion-mnist:5-9'], img_size: [28], budget: [{epochs: 1}]}]",
     "the suite has 2 of them (they differ in train_size): keep one"),
    ("{model: ['vit:Mu/7'], task: [finetune], init: ['mae:fashion-mnist'], dataset: ['fashion-mnist:5-9'], "
     "img_size: [28], budget: [{epochs: 1}]}", "reads the checkpoint of a pretrain_mae cell on fashion-mnist "
                                              "with model vit:Mu/7, img_size 28, seed 0, and the suite has none"),
])
def test_cells_that_cannot_measure_are_refused_at_validation(tmp_path, grid, message):
    with pytest.raises(SuiteError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_suite(suite_file(tmp_path, f"grid: {grid}\n"), "cpu")


def test_each_finetune_cell_reads_the_checkpoint_of_its_own_pretrain_cell(tmp_path):
    suite = load_suite(suite_file(tmp_path, """
        grid:
          - {model: ['vit:Mu/7'], task: [pretrain], dataset: ['fashion-mnist:0-4'], img_size: [28], seed: [0, 1],
             budget: [{epochs: 1}]}
          - {model: ['vit:Mu/7'], task: [finetune], init: ['fashion-mnist:0-4'], dataset: ['fashion-mnist:5-9'],
             img_size: [28], seed: [0, 1], budget: [{epochs: 1}]}
    """), "cpu")
    pretrain = {c.seed: c.cell_id for c in suite.cells if c.task == "pretrain"}
    assert {c.seed: c.init_cell for c in suite.cells if c.task == "finetune"} == pretrain


# ------------------------------------------------------------------------------------------ one-line errors


def test_a_cell_file_with_a_wrong_value_type_is_rerun_and_refused_by_the_readers(tmp_path, monkeypatch, capsys):
    run = fixture_run(tmp_path, ["smoke"], "cpu")
    victim = sorted((run / "cells").glob("*.json"))[0]
    data = json.loads(victim.read_text())
    data["rows"][0]["value"] = "fast"
    victim.write_text(json.dumps(data))
    for command in (["report", str(run)], ["compare", str(run), str(run)]):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert victim.name in err and "non-numbers in value" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(ValueError, match="non-numbers in value"):
        CellRecord.from_json(victim.read_text())


def test_a_full_disk_stops_the_run_with_one_line_and_keeps_finished_cells(tmp_path, monkeypatch, capsys):
    from bench import rundir

    suite = suite_file(tmp_path, ONE_CELL.replace("[resnet20]", "[resnet20, resnet32]"))
    real, writes = rundir.write_atomic, []

    def fill_up(path, text):
        writes.append(path)
        if "cells" in str(path) and len([w for w in writes if "cells" in str(w)]) > 1:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, text)

    monkeypatch.setattr(rundir, "write_atomic", fill_up)
    assert main(["run", str(suite), "--run-dir", str(tmp_path / "run"), "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "no space left on the device" in err and "resume" in err and len(err.strip().splitlines()) == 1
    assert len(list((tmp_path / "run" / "cells").glob("*.json"))) == 1


def test_a_cell_that_cannot_write_exits_for_the_runner_to_stop(tmp_path, monkeypatch):
    from bench import cell
    from bench.spec import CellSpec
    from bench.tasks import TASKS

    spec = TASKS["infer"].check(CellSpec(model="resnet20", img_size=28, batch_size=2, repeats=1, iters=1, warmup=0))
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"spec": spec.to_dict(), "context": {"suite": "t", "run_id": "r",
                                                                   "run_dir": str(tmp_path), "concurrency": 1,
                                                                   "placement": "local"}}))
    monkeypatch.setattr(cell, "write_atomic", lambda *a: (_ for _ in ()).throw(OSError(errno.ENOSPC, "full")))
    monkeypatch.setattr(cell, "take_group_along", lambda: None)  # never in pytest: it would tie pytest to its parent
    assert cell.run_job(job, tmp_path / "rows.json") == cell.EXIT_NO_SPACE


def test_a_deeply_nested_suite_is_one_line(tmp_path):
    path = tmp_path / "deep.yaml"
    path.write_text("name: deep\ngrid: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(SuiteError, match="nested too deeply"):
        load_suite(path, "cpu")


HOSTILE = [
    ["run"], ["run", "--max-cells", "-5", "suites/smoke.yaml"], ["run", "suites/smoke.yaml", "--device", "tpu"],
    ["run", "/dev/null"], ["run", "/"], ["run", "suites/smoke.yaml", "--run-dir", "/proc/1/x", "--device", "cpu"],
    ["run", "suites/smoke.yaml", "--gpus", ""], ["run", "suites/smoke.yaml", "--address", "x", "--device", "cpu"],
    ["run", "suites/smoke.yaml", "--executor", "ray", "--address", "no-port", "--device", "cpu"],
    ["report"], ["report", "/nonexistent"], ["report", "suites/smoke.yaml"], ["report", "/", "--out", "/proc/x"],
    ["compare", "/", "/"], ["compare", "suites", "suites", "--fail-above", "x:y:z"], ["frobnicate"],
    ["run", "suites/smoke.yaml\udcff"], ["list", "--extra"],
]


@pytest.mark.parametrize("args", HOSTILE, ids=lambda a: " ".join(a)[:40])
def test_no_command_shows_a_traceback(args, capsys):
    code = main(list(args))
    err = capsys.readouterr().err
    assert code == 2, (code, err)
    assert "Traceback" not in err and "usage:" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("error: ")


def test_no_traceback_in_another_locale(tmp_path):
    suite = tmp_path / "süite ✓.yaml"
    suite.write_text("name: x\ngrid: {model: [nope]}\n")
    proc = subprocess.run([sys.executable, "-m", "bench", "run", str(suite), "--dry-run"], cwd=ROOT,
                          capture_output=True, env={**os.environ, "LC_ALL": "C", "LANG": "C",
                                                    "PYTHONIOENCODING": "ascii"})
    assert proc.returncode == 2 and b"Traceback" not in proc.stderr and b"unknown model spec 'nope'" in proc.stderr


def test_a_run_dir_the_locale_cannot_encode_is_refused_up_front(tmp_path):
    """Under an ASCII locale (UTF-8 mode off) a non-ASCII run dir reaches Python as lone surrogates, which no
    record can hold: one line, exit 2, nothing created (it used to end in an internal UnicodeEncodeError after
    the first cells ran)."""
    run_dir = tmp_path / "résultats"
    proc = subprocess.run([sys.executable, "-m", "bench", "run", "suites/smoke.yaml", "--device", "cpu",
                           "--run-dir", str(run_dir)], cwd=ROOT, capture_output=True,
                          env={**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0"})
    err = proc.stderr.decode("ascii", "replace")
    assert proc.returncode == 2 and len(err.strip().splitlines()) == 1, err
    assert "--run-dir" in err and "LC_ALL=C.UTF-8" in err and not run_dir.exists()


def test_the_warm_parent_touches_no_cuda_and_starts_no_threads():
    """What the warm parent preloads starts no thread pool and no CUDA context (a fork would inherit neither
    safely): compared with a process that imported torch alone."""
    code = ("import os, sys, torch; base = len(os.listdir('/proc/self/task'))\n"
            "from bench.executors.process import PRELOAD\n"
            "for m in PRELOAD: __import__(m)\n"
            "print(base, len(os.listdir('/proc/self/task')), torch.cuda.is_initialized())")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    base, after, cuda = out.split()
    assert after == base and cuda == "False" and not math.isnan(float(base))
