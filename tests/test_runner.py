"""The runner end to end: a real smoke run, failures recorded as rows, resume after kill -9, env.json."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest

from bench.results import COLUMNS

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "suites" / "smoke.yaml"


def bench(*args, env=None, **kwargs):
    return subprocess.run([sys.executable, "-m", "bench", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, env=env, **kwargs)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("smoke") / "run"
    proc = bench("run", SMOKE, "--run-dir", run_dir, "--device", "cpu", timeout=600)
    assert proc.returncode == 0, proc.stderr
    return run_dir, proc


@pytest.mark.slow
def test_smoke_run_writes_schema_rows(smoke_run):
    run_dir, proc = smoke_run
    frame = pd.read_csv(run_dir / "results.csv")
    assert list(frame.columns) == COLUMNS
    assert (frame["status"] == "ok").all()
    assert frame["cell_id"].nunique() == 5
    for metric in ("throughput", "step_time", "peak_memory", "model_memory", "achieved_tflops"):
        values = frame.loc[frame["metric"] == metric, "value"]
        assert len(values) == 5 and (values > 0).all(), metric
    thr = frame[frame["metric"] == "throughput"]
    assert (thr["p20"] <= thr["value"]).all() and (thr["value"] <= thr["p80"]).all()
    assert set(thr["family"]) == {"vit", "cnn"} and (thr["gflops"] > 0).all()
    assert "[5/5]" in proc.stdout and "ETA" in proc.stdout and "python -m bench report" in proc.stdout


@pytest.mark.slow
def test_env_json(smoke_run):
    run_dir, _ = smoke_run
    env = json.loads((run_dir / "env.json").read_text())
    for key in ("python", "torch", "torchvision", "timm", "triton", "device", "device_name", "cpu", "git_sha",
                "git_dirty", "command", "suite_text", "cuda"):
        assert key in env, key
    assert env["suite_text"] == SMOKE.read_text() and env["device"] == "cpu"


@pytest.mark.slow
def test_failures_become_rows_and_the_run_goes_on(tmp_path):
    suite = tmp_path / "fail.yaml"
    suite.write_text(textwrap.dedent("""
        name: fail
        repeats: 2
        warmup: 0
        iters: 1
        grid:
          - {model: ["vit:Mu/4"], attn_backend: [triton], img_size: [28], batch_size: [2]}
          - {model: ["vit:Ti/2"], attn_backend: [math], img_size: [896], batch_size: [1], task: [infer]}
          - {model: [resnet20], img_size: [28], batch_size: [2]}
    """))
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


@pytest.mark.slow
def test_timeout_is_recorded(tmp_path):
    suite = tmp_path / "slow.yaml"
    suite.write_text("name: slow\ntimeout_s: 1\ngrid:\n  model: [resnet20]\n  img_size: [28]\n")
    proc = bench("run", suite, "--run-dir", tmp_path / "run", "--device", "cpu", timeout=300)
    assert proc.returncode == 0
    frame = pd.read_csv(tmp_path / "run" / "results.csv")
    assert frame["status"].tolist() == ["timeout"] and "timeout_s=1" in frame["error"].iloc[0]


@pytest.mark.slow
def test_resume_after_kill_9(tmp_path):
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "bench", "run", str(SMOKE), "--run-dir", str(run_dir), "--device", "cpu"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    results = run_dir / "results.csv"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:  # kill -9 once two cells are recorded, in the middle of the third
        if results.exists() and pd.read_csv(results)["cell_id"].nunique() >= 2:
            break
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = set(pd.read_csv(results)["cell_id"])
    assert 2 <= len(done_before) < 5
    rerun = bench("run", SMOKE, "--run-dir", run_dir, "--device", "cpu", timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{len(done_before)} already done" in rerun.stdout
    frame = pd.read_csv(results)
    assert frame["cell_id"].nunique() == 5 and done_before <= set(frame["cell_id"])
    assert not frame.duplicated(["cell_id", "metric"]).any()
    assert len(json.loads((run_dir / "env.json").read_text())["resumed"]) == 1


def test_dry_run_lists_cells_and_list_command():
    proc = bench("run", SMOKE, "--dry-run", "--device", "cpu")
    assert proc.returncode == 0 and "5 cells" in proc.stdout and "vit:Mu/4 infer bs8 28px" in proc.stdout
    listing = bench("list")
    assert listing.returncode == 0
    for expected in ("vit:<variant>", "resnet20", "timm:<timm model name>", "Mu/<patch>", "suites/scaling.yaml"):
        assert expected in listing.stdout


def test_bad_arguments_exit_2():
    assert bench("run").returncode == 2
    if not __import__("torch").cuda.is_available():
        proc = bench("run", SMOKE, "--device", "cuda")
        assert proc.returncode == 2 and "no CUDA device is visible" in proc.stderr
    assert bench("run", SMOKE, "--device", "tpu").returncode == 2
    proc = bench("run", "suites/none.yaml")
    assert proc.returncode == 2 and "cannot read suite file" in proc.stderr and "Traceback" not in proc.stderr
