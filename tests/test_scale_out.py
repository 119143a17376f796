"""Scale-out: the Ray executor on a local 2-CPU instance (same cells and columns as the local executor, a lost
worker becomes a `killed` row, resume after the driver dies, the lock), GPU placement of the local executor, and
data-parallel training inside one cell (nproc: 2, gloo on CPU) against a single process."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from bench.cell import run_cell
from bench.paths import CellContext
from bench.spec import Budget, CellSpec, SpecError
from bench.tasks import TASKS
from tests.conftest import ONE_CELL, ROOT, SMOKE, bench, cell_processes, suite_file, wait_for


@pytest.fixture(scope="module", autouse=True)
def no_stray_ray():
    yield
    subprocess.run([sys.executable, "-m", "ray.scripts.scripts", "stop", "--force"], capture_output=True)


def ray_run(suite, run_dir, *extra, **kwargs):
    return bench("run", suite, "--run-dir", run_dir, "--device", "cpu", "--executor", "ray", *extra, **kwargs)


def start_ray_runner(suite, run_dir):
    return subprocess.Popen([sys.executable, "-m", "bench", "run", str(suite), "--run-dir", str(run_dir), "--device",
                             "cpu", "--executor", "ray"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def ray_worker_of(pid: int) -> int:
    """The Ray worker process above a cell process (its parent, or the warm parent's parent)."""
    while pid > 1:
        pid = int(Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[1])
        if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::"):
            return pid
    raise AssertionError("no Ray worker above the cell process")


def cell_process_of(cell_id: str) -> int | None:
    """pid of the cell process a Ray task started for this cell (its scratch dir names the cell)."""
    pids = cell_processes(f"vitbench-{cell_id}-")
    return pids[0] if pids else None


@pytest.mark.slow
def test_ray_runs_the_smoke_suite_like_the_local_executor(tmp_path):
    pytest.importorskip("ray")
    local, ray = tmp_path / "local", tmp_path / "ray"
    assert bench("run", SMOKE, "--run-dir", local, "--device", "cpu", timeout=600).returncode == 0
    proc = ray_run(SMOKE, ray, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    a, b = pd.read_csv(local / "results.csv"), pd.read_csv(ray / "results.csv")
    assert list(a.columns) == list(b.columns) and set(a["cell_id"]) == set(b["cell_id"])
    assert (b["status"] == "ok").all() and b["placement"].str.startswith("ray:").all()
    assert "running ray:" in proc.stdout


@pytest.mark.slow
def test_a_worker_lost_mid_cell_is_a_killed_row_and_the_run_completes(tmp_path):
    pytest.importorskip("ray")
    suite = suite_file(tmp_path, """
        repeats: 100000
        warmup: 0
        iters: 10
        timeout_s: 300
        grid:
          - {model: [resnet20], task: [train], img_size: [28], batch_size: [64]}
          - {model: [resnet20], task: [train_eval], dataset: [fashion-mnist], img_size: [28], train_size: [200],
             budget: [{seconds: 2, evals: 1}]}
    """)
    from bench.suite import load_suite

    slow = next(c for c in load_suite(suite, "cpu").cells if c.task == "train")
    run_dir = tmp_path / "run"
    runner = start_ray_runner(suite, run_dir)
    try:
        cell = wait_for(lambda: cell_process_of(slow.cell_id), timeout=180, what="the slow cell on a Ray worker")
        worker = ray_worker_of(cell)
        os.kill(worker, signal.SIGKILL)
        out, err = runner.communicate(timeout=300)
    finally:
        runner.kill()
    assert runner.returncode == 0, err[-2000:]
    frame = pd.read_csv(run_dir / "results.csv").set_index("cell_id")
    assert frame.loc[slow.cell_id, "status"] == "killed" and "Ray lost the cell" in frame.loc[slow.cell_id, "error"]
    assert frame.drop(index=slow.cell_id)["status"].eq("ok").all()


@pytest.mark.slow
def test_ray_resume_after_the_driver_dies_and_the_lock(tmp_path):
    pytest.importorskip("ray")
    # 1,500 timed calls a cell (about 10-20 s each here): the first runner must still hold the lock, with cells to
    # go, when the second asks for it; with one call a cell a quiet machine finished all three first
    suite = suite_file(tmp_path, ONE_CELL.replace("[resnet20]", "[resnet20, resnet32, resnet56]")
                       .replace("repeats: 1\n", "repeats: 1500\n"))
    run_dir = tmp_path / "run"
    runner = start_ray_runner(suite, run_dir)
    try:
        wait_for(lambda: len(list((run_dir / "cells").glob("*.json"))) >= 1, timeout=180, what="a finished cell")
        second = ray_run(suite, run_dir, timeout=120)
        assert second.returncode == 2 and "in use by another runner" in second.stderr
        runner.send_signal(signal.SIGKILL)
        runner.wait()
    finally:
        runner.kill()
    done = {p.stem for p in (run_dir / "cells").glob("*.json")}
    rerun = ray_run(suite, run_dir, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"{len(done)} already done" in rerun.stdout
    frame = pd.read_csv(run_dir / "results.csv")
    assert frame["cell_id"].nunique() == 3 and not frame.duplicated(["cell_id", "metric"]).any()


def test_local_executor_places_cells_on_the_gpus_it_is_given(tmp_path, monkeypatch):
    """Each throughput cell alone on one GPU, accuracy cells packed `concurrency` per GPU, recorded as placement."""
    from bench.executors import local

    seen = []

    def fake(cell, ctx, timeout_s, env_extra=None, live=None, lock=None):
        seen.append((cell.task, env_extra["CUDA_VISIBLE_DEVICES"], ctx.placement, ctx.concurrency))
        time.sleep(0.05)
        return [{"cell_id": cell.cell_id}]

    monkeypatch.setattr(local, "run_cell_process", fake)
    cells = [TASKS["infer"].check(CellSpec(model="resnet20", img_size=28, batch_size=b, device="cuda"))
             for b in (1, 2, 3)]
    cells += [TASKS["train_eval"].check(CellSpec(model="resnet20", task="train_eval", dataset="fashion-mnist",
                                                 img_size=28, seed=s, budget=Budget(epochs=1.0), device="cuda"))
              for s in range(4)]
    executor = local.LocalExecutor(tmp_path, CellContext("t", "r", tmp_path), timeout_s=10, concurrency=2,
                                   gpus=["3", "5"])
    executor.run(cells, lambda c, p: None, lambda c, rows: None)
    assert {gpu for task, gpu, _, _ in seen} == {"3", "5"}
    assert all(p.endswith(f"cuda:{gpu}") for _, gpu, p, _ in seen)
    assert {conc for task, _, _, conc in seen if task == "infer"} == {1}
    assert {conc for task, _, _, conc in seen if task == "train_eval"} == {2}


def test_nproc_rules():
    with pytest.raises(SpecError, match="nproc > 1 needs an epochs or train_flops budget"):
        TASKS["train_eval"].check(CellSpec(model="vit:Mu/7", task="train_eval", dataset="fashion-mnist",
                                           img_size=28, nproc=2, budget=Budget(seconds=5.0)))
    with pytest.raises(SpecError, match="nproc does not apply to task infer"):
        TASKS["infer"].check(CellSpec(model="vit:Mu/7", img_size=28, nproc=2))


@pytest.mark.slow
def test_two_gloo_ranks_match_one_process_with_the_same_effective_batch(tmp_path):
    """Same global batches in the same order, gradients averaged by DDP: the loss curves agree."""
    common = dict(model="vit:Mu/7", task="train_eval", dataset="fashion-mnist", img_size=28, train_size=640,
                  recipe={"crop_pad": 0, "flip": False}, budget=Budget(epochs=2.0, evals=3))
    curves, rows = {}, {}
    for nproc, batch in ((1, 64), (2, 32)):
        spec = TASKS["train_eval"].check(CellSpec(**common, nproc=nproc, batch_size=batch))
        out = tmp_path / f"n{nproc}"
        rows[nproc] = {r["metric"]: r for r in run_cell(spec, CellContext("t", "r", out))}
        assert {r["status"] for r in rows[nproc].values()} == {"ok"}, rows[nproc]
        curves[nproc] = json.loads((out / "curves" / f"{spec.cell_id}.json").read_text())["curve"]
    assert rows[2]["accuracy"]["effective_batch"] == 64 and rows[2]["accuracy"]["batch_size_used"] == 32
    assert [p["step"] for p in curves[1]] == [p["step"] for p in curves[2]]
    for one, two in zip(curves[1], curves[2]):
        assert two["train_loss"] == pytest.approx(one["train_loss"], rel=2e-3)
        assert two["val_accuracy"] == pytest.approx(one["val_accuracy"], abs=0.02)
    assert rows[2]["images_seen"]["value"] == rows[1]["images_seen"]["value"]
