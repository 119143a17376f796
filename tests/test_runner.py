"""The runner end to end: schema rows, failures as rows, resume, the run-dir lock, process hygiene, damaged
result files, code versions, untrusted files. Each failure class of the core-redesign issue has a test here."""

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from bench.measure.phases import PHASES, phase_split
from bench.results import COLUMNS, SCHEMA_VERSION
from bench.runner import ProgressLog, time_summary
from bench.spec import CellSpec
from tests.conftest import ONE_CELL, ROOT, SMOKE, bench, cell_processes, suite_file, wait_for

# a cell that runs for minutes unless stopped (the tests kill it)
SLOW_CELL = "repeats: 100000\nwarmup: 0\niters: 10\ntimeout_s: 300\ngrid:\n  model: [resnet20]\n  task: [train]\n" \
            "  img_size: [28]\n  batch_size: [64]\n"


def start_runner(suite, run_dir, *extra):
    return subprocess.Popen([sys.executable, "-m", "bench", "run", str(suite), "--run-dir", str(run_dir),
                             "--device", "cpu", *extra], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


@pytest.mark.slow
def test_smoke_run_writes_schema_rows(smoke_run):
    run_dir, proc = smoke_run
    frame = pd.read_csv(run_dir / "results.csv")
    assert list(frame.columns) == list(COLUMNS) and (frame["schema_version"] == SCHEMA_VERSION).all()
    assert (frame["status"] == "ok").all()
    assert frame["cell_id"].nunique() == 5 and len(list((run_dir / "cells").glob("*.json"))) == 5
    for metric in ("throughput", "step_time", "peak_memory", "model_memory", "achieved_tflops"):
        values = frame.loc[frame["metric"] == metric, "value"]
        assert len(values) == 5 and (values > 0).all(), metric
    thr = frame[frame["metric"] == "throughput"]
    assert (thr["p20"] <= thr["value"]).all() and (thr["value"] <= thr["p80"]).all()
    assert set(thr["family"]) == {"vit", "cnn"} and (thr["gflops"] > 0).all()
    assert (thr["samples"].str.count(";") == 2).all()  # the 3 raw repeats beside the median
    assert thr["other_cpu"].notna().all() and (thr["usable_cores"] >= 1).all()
    cnn = thr[thr["family"] == "cnn"]
    assert set(cnn["attn_backend"]) == {"none"} and set(cnn["attn_backend_used"]) == {"none"}
    assert thr["code_version"].str.fullmatch(r"[0-9a-f]{40}(\+dirty\.[0-9a-f]{8})?").all()
    assert "[5/5]" in proc.stdout and "ETA" in proc.stdout and "python -m bench report" in proc.stdout
    assert not list((run_dir / "work").glob("*")), "transient job files are removed"


@pytest.mark.slow
def test_env_json(smoke_run):
    run_dir, _ = smoke_run
    env = json.loads((run_dir / "env.json").read_text())
    for key in ("python", "torch", "torchvision", "timm", "triton", "device", "device_name", "cpu", "git_sha",
                "git_dirty", "code_version", "command", "suite_text", "cuda", "matmul_policy", "usable_cores"):
        assert key in env, key
    assert env["suite_text"] == SMOKE.read_text() and env["device"] == "cpu" and env["suite"] == "smoke"


@pytest.mark.slow
def test_failures_become_rows_and_the_run_goes_on(tmp_path):
    suite = suite_file(tmp_path, """
        repeats: 2
        warmup: 0
        iters: 1
        grid:
          - {model: ["vit:Mu/4"], attn_backend: [triton], img_size: [28], batch_size: [2]}
          - {model: ["vit:Ti/2"], attn_backend: [math], img_size: [896], batch_size: [1], task: [infer]}
          - {model: [resnet20], img_size: [28], batch_size: [2]}
    """)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # triton on a CPU: a clear error
    env["CUDA_VISIBLE_DEVICES"] = ""
    proc = bench("run", suite, "--run-dir", tmp_path / "run", "--device", "cpu", env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    frame = pd.read_csv(tmp_path / "run" / "results.csv")
    by_model = frame.groupby("model")["status"].agg(set).to_dict()
    assert by_model == {"vit:Mu/4": {"error"}, "vit:Ti/2": {"oom"}, "resnet20": {"ok"}}
    errors = frame.set_index("model")["error"]
    assert "needs a CUDA device" in errors["vit:Mu/4"]
    assert "can't allocate memory" in errors["vit:Ti/2"]
    failed = frame[frame["status"] != "ok"]  # failure rows carry the requested settings, same as ok rows
    assert set(failed["attn_backend"]) == {"triton", "math"} and set(failed["img_size"]) == {28, 896}
    retry = bench("run", suite, "--run-dir", tmp_path / "run", "--device", "cpu", "--retry-failed", env=env,
                  timeout=600)
    assert retry.returncode == 0 and "1 already done" in retry.stdout and "2 cells run" in retry.stdout


@pytest.mark.slow
def test_timeout_is_recorded(tmp_path):
    suite = suite_file(tmp_path, SLOW_CELL.replace("timeout_s: 300", "timeout_s: 2"))
    proc = bench("run", suite, "--run-dir", tmp_path / "run", "--device", "cpu", timeout=300)
    assert proc.returncode == 0
    frame = pd.read_csv(tmp_path / "run" / "results.csv")
    assert frame["status"].tolist() == ["timeout"] and "timeout_s=2" in frame["error"].iloc[0]


@pytest.mark.slow
def test_runner_killed_with_sigkill_takes_its_cell_along_and_resumes_cleanly(tmp_path):
    run_dir = tmp_path / "run"
    # two quick cells, then one that trains for seconds (112 px, batch 128): the runner dies while it runs
    suite = suite_file(tmp_path, ONE_CELL.replace("  batch_size: [2]", "  batch_size: [2]\n  task: [infer, train]")
                       + "include: [{model: resnet32, task: train, img_size: 112, batch_size: 128}]\n")
    runner = start_runner(suite, run_dir)
    wait_for(lambda: len(list((run_dir / "cells").glob("*.json"))) >= 2 and cell_processes(run_dir), what="2 cells")
    runner.send_signal(signal.SIGKILL)  # the runner alone, not its process group
    runner.wait()
    wait_for(lambda: not cell_processes(run_dir), timeout=10, what="the orphaned cell to die")
    done_before = {p.stem for p in (run_dir / "cells").glob("*.json")}
    assert len(done_before) == 2
    rerun = bench("run", suite, "--run-dir", run_dir, "--device", "cpu", timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{len(done_before)} already done" in rerun.stdout
    assert "took over the lock left by a runner that is no longer running (pid" in rerun.stdout
    frame = pd.read_csv(run_dir / "results.csv")
    assert frame["cell_id"].nunique() == 3 and done_before <= set(frame["cell_id"])
    assert not frame.duplicated(["cell_id", "metric"]).any()
    assert len(json.loads((run_dir / "env.json").read_text())["resumed"]) == 1


@pytest.mark.slow
def test_second_runner_is_refused_and_a_cell_killed_by_a_signal_is_recorded(tmp_path):
    run_dir = tmp_path / "run"
    suite = suite_file(tmp_path, SLOW_CELL)
    runner = start_runner(suite, run_dir)
    try:
        (cell_pid,) = wait_for(lambda: cell_processes(run_dir), what="the cell process")
        second = bench("run", suite, "--run-dir", run_dir, "--device", "cpu", timeout=120)
        assert second.returncode == 2 and "Traceback" not in second.stderr
        assert f"in use by another runner (pid {runner.pid} on" in second.stderr
        os.kill(cell_pid, signal.SIGTERM)
        out, err = runner.communicate(timeout=120)
    finally:
        runner.kill()
    assert runner.returncode == 0, err
    frame = pd.read_csv(run_dir / "results.csv")
    assert frame["status"].tolist() == ["killed"]
    assert "killed by signal 15 (SIGTERM)" in frame["error"].iloc[0]


class _Payload:
    """Unpickling this creates a file: the proof that a loader ran foreign code."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "pwned"))


def test_untrusted_checkpoints_never_run_code(tmp_path, smoke_run):
    import torch

    from bench.models import build_model
    from bench.paths import CellContext
    from bench.spec import Budget
    from bench.tasks.supervised import load_init

    marker = tmp_path / "marker"
    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as f:
        pickle.dump({"model": _Payload(str(marker))}, f)
    # a report of a run dir holding a crafted checkpoint reads result files only
    run_dir = tmp_path / "run"
    shutil.copytree(smoke_run[0], run_dir)
    (run_dir / "checkpoints").mkdir()
    shutil.copy(evil, run_dir / "checkpoints" / "0123456789ab.pt")
    assert bench("report", run_dir).returncode == 0
    # fine-tuning from a file loads it with weights_only=True: refused, nothing executed
    spec = CellSpec(model="resnet20", task="finetune", dataset="fashion-mnist", img_size=28, budget=Budget(epochs=1),
                    init=f"file:{evil}")
    model, info = build_model("resnet20", img_size=28, in_chans=1, num_classes=10)
    with pytest.raises(pickle.UnpicklingError):
        load_init(model, info, spec, CellContext("t", "r", run_dir))
    assert not marker.exists()
    with pytest.raises(pickle.UnpicklingError):
        torch.load(evil, weights_only=True)
    assert not marker.exists()


def test_dry_run_lists_cells_and_list_command():
    proc = bench("run", SMOKE, "--dry-run", "--device", "cpu")
    assert proc.returncode == 0 and "5 cells" in proc.stdout and "vit:Mu/4 infer bs8 28px" in proc.stdout
    listing = bench("list")
    assert listing.returncode == 0
    for expected in ("vit:<variant>", "resnet20", "timm:<timm model name>", "Mu/<patch>", "suites/scaling.yaml",
                     "train_eval", "budget", "compare_to"):
        assert expected in listing.stdout


def test_bad_arguments_exit_2():
    assert bench("run").returncode == 2
    if not __import__("torch").cuda.is_available():
        proc = bench("run", SMOKE, "--device", "cuda")
        assert proc.returncode == 2 and "no CUDA device is visible" in proc.stderr
    assert bench("run", SMOKE, "--device", "tpu").returncode == 2
    assert bench("run", SMOKE, "--gpus", "a,b").returncode == 2
    proc = bench("run", "suites/none.yaml")
    assert proc.returncode == 2 and "cannot read suite file" in proc.stderr and "Traceback" not in proc.stderr


def test_the_eta_costs_each_kind_by_its_own_cells_and_says_when_it_guesses():
    """Three 1-second infer cells, then two latency cells on the compile engine that take 10 s each: the ETA is
    a guess until a latency cell has finished, then it costs them at their own 10 s."""
    now, lines = [0.0], []
    infer = [CellSpec(model="resnet9", task="infer", batch_size=b) for b in (1, 2, 3)]
    latency = [CellSpec(model="resnet9", task="latency", engine="compile", batch_size=b) for b in (1, 2)]
    progress = ProgressLog(infer + latency, lines.append, slots=1, clock=lambda: now[0])
    for cell, seconds in zip(infer + latency, (1, 1, 1, 10, 10)):
        progress.start(cell, "local:vm:0")
        now[0] += seconds
        progress.done(cell, "local:vm:0")
    assert "ETA ?" in lines[0]
    assert "ETA 4s (a guess: no latency/compile cell finished yet)" in lines[1]  # 2 x 1 s + 2 x the 1 s mean
    assert "ETA 2s (a guess" in lines[3] and "ETA 10s;" in lines[4]  # the last latency cell costs its own 10 s


def test_the_noisy_cells_warning_is_sized_for_a_person(tmp_path):
    """200 flagged cells: a few short lines with the count, the worst three (furthest past their limits) and where
    every cell's reason is, instead of one line listing them all."""
    from bench.paths import CellContext
    from bench.results import CellRecord, RowMaker
    from bench.runner import noisy_cells, noisy_warning

    records = []
    for batch in range(1, 201):
        spec = CellSpec(model="vit:S/4", task="infer", batch_size=batch, img_size=28)
        busy = 0.11 + batch / 1000  # batch 200 is the busiest; batch 7 has the widest spread below
        p20, p80 = (1.0, 3.0) if batch == 7 else (1.0, 1.02)
        noisy = f"busy: other processes used {busy:.0%} of the CPU" + ("; spread p80/p20 3.00" if batch == 7 else "")
        row = RowMaker(spec, CellContext("t", "r", tmp_path)).row("throughput", 100.0, p20=p20, p80=p80,
                                                                   other_cpu=busy, noisy=noisy)
        records.append(CellRecord(spec, [row]))
    warning = noisy_warning(noisy_cells(records), 210, Path("results/scaling/r1"))
    lines = warning.splitlines()
    assert len(lines) == 6 and all(len(line) <= 120 for line in lines), warning
    assert lines[0].startswith("warning: 200 of 210 cell(s) have suspicious timings")
    assert "bs7 " in lines[1] and "spread p80/p20 3.00" in lines[1] and "bs200 " in lines[2] and "bs199 " in lines[3]
    assert lines[4].endswith("noisy column of results/scaling/r1/results.csv")
    assert lines[5].endswith("python -m bench report results/scaling/r1")


def test_one_phase_split_for_the_runner_and_the_report():
    """phase_split sums the cells' wall time and phases, the rest is `other`, never below 0; the runner's time
    summary prints it (the report's time table calls it per run and device model)."""
    cells = pd.DataFrame({"cell_id": ["a", "b"], "cell_wall_s": [10.0, 5.0], **{f"{p}_s": [1.0, 1.0] for p in PHASES}})
    assert phase_split(cells) == {"wall": 15.0, **{p: 2.0 for p in PHASES}, "other": 3.0}
    assert phase_split(cells.assign(cell_wall_s=[1.0, 1.0]))["other"] == 0.0  # phases past the wall: clocks differ
    rows = [{**row, "metric": "throughput", "value": 1.0, "status": "ok"} for row in cells.to_dict("records")]
    assert time_summary(rows).startswith("time: 15 s in 2 cells: startup 2 s (13%), data 2 s (13%)")
    assert time_summary(rows).endswith("other 3 s (20%)")

