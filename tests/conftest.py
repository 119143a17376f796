"""Shared test set-up and helpers: the Triton interpreter on CPUs, the `bench` command, suite files, fixture run
dirs with plausible rows, and the Fashion-MNIST marker."""

import gzip
import json
import os
import re
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import torch

# The Triton kernels run on the CPU only under the interpreter, which must be chosen before triton.jit runs.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest

from bench.data import readers
from bench.paths import CellContext, RunPaths
from bench.results import CellRecord, RowMaker, write_results_csv
from bench.spec import CellSpec

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "suites" / "smoke.yaml"
H100 = "NVIDIA H100 80GB HBM3"
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
HAVE_FMNIST = any((p / "train-labels-idx1-ubyte.gz").exists() or (p / "train-labels-idx1-ubyte").exists()
                  for p in readers.fashion_mnist_search_path())
needs_fmnist = pytest.mark.skipif(not HAVE_FMNIST, reason="Fashion-MNIST not installed (tools/install.sh)")
ONE_CELL = "repeats: 1\nwarmup: 0\niters: 1\ngrid:\n  model: [resnet20]\n  img_size: [28]\n  batch_size: [2]\n"


def pytest_configure(config):
    """A plain `pytest` runs each micro-benchmark once, as a test; `pytest --benchmark-only` (or
    --benchmark-enable) times them. pytest-benchmark's own configure hook runs after this one (trylast)."""
    if not (config.getoption("benchmark_only", False) or config.getoption("benchmark_enable", False)):
        config.option.benchmark_disable = True


def write_idx(path, array):
    """An IDX file (gzipped) of a uint8 array."""
    header = struct.pack(">BBBB", 0, 0, 8, array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype("uint8").tobytes())


def fake_fashion(folder, n_train=40, n_test=20, value=7):
    """Four Fashion-MNIST idx files of constant images (value) and cycling labels."""
    folder.mkdir(parents=True)
    write_idx(folder / "train-images-idx3-ubyte.gz", np.full((n_train, 28, 28), value))
    write_idx(folder / "train-labels-idx1-ubyte.gz", np.arange(n_train) % 10)
    write_idx(folder / "t10k-images-idx3-ubyte.gz", np.full((n_test, 28, 28), value))
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", np.arange(n_test) % 10)


def bench(*args, env=None, **kwargs):
    """`python -m bench ARGS` from the project root."""
    return subprocess.run([sys.executable, "-m", "bench", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, env=env, **kwargs)


def suite_file(tmp_path, body, name="t"):
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"name: {name}\n" + textwrap.dedent(body))
    return path


def cell_processes(folder: Path) -> list[int]:
    """pids of live cell processes writing their output under `folder` (a run dir, or a Ray scratch dir's name):
    a cell's stdout is its log file, whether it was forked warm or started fresh."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            log = os.readlink(proc / "fd" / "1")
            state = next(line for line in (proc / "status").read_text().splitlines() if line.startswith("State:"))
        except (OSError, StopIteration):
            continue
        if str(folder) in log and "/logs/" in log and log.endswith(".log") and "zombie" not in state:
            pids.append(int(proc.name))
    return pids


def wait_for(predicate, timeout=120, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


# ------------------------------------------------------------------------------------------ fixture runs


def info_of(spec: CellSpec) -> dict:
    """Effective columns of a model without building it (an L/16 is 300M parameters)."""
    from vit_impl import config_from_variant

    model = spec.model
    if model.startswith(("vit:", "timm-vit:")) or "vit_" in model:
        variant = model.split(":")[-1] if ":" in model and "vit_" not in model else \
            {"small": "S", "base": "B"}[model.split("_")[1]] + "/16"
        cfg = config_from_variant(variant, img_size=spec.img_size)
        params = 12 * cfg.depth * cfg.embed_dim**2
        impl = "native" if model.startswith("vit:") else "timm"
        backend = spec.attn_backend if impl == "native" else "sdpa"
        return dict(family="vit", impl=impl, variant=variant, patch=cfg.patch_size, params=params,
                    gflops=2 * params * cfg.seq_len / 1e9, attn_backend_used=backend)
    depth = int(re.sub(r"\D", "", model.split("-")[0]) or 18)
    width = re.search(r"-w(\d+)", model)
    scale = (int(width[1]) / 16) ** 2 if width else 1.0  # resnet9-w<width>: parameters grow with width squared
    return dict(family="cnn", impl="torchvision" if depth >= 18 and depth != 20 else "native", variant=model,
                patch=None, params=depth * 1e6 * scale, gflops=depth * 0.2 * scale, attn_backend_used="none")


def fake_rows(spec: CellSpec, rng) -> list[dict]:
    """Plausible measurements for a cell: what a run on an H100 (or a CPU) would write."""
    ctx = CellContext(spec.study[0] if spec.study else "fixture", "r", Path("/tmp"))
    if spec.task == "attention":
        B, H, N, D = spec.attn_shape
        maker = RowMaker(spec, ctx, family="attention", impl=spec.attn_backend, attn_backend_used=spec.attn_backend)
        t = 4 * B * H * N * N * D / 300e12 * (1.3 if spec.attn_backend == "math" else 1.0)
        made = [maker.row(m, v, p20=v * 0.98, p80=v * 1.02, n_repeats=5)
                for m, v in (("fwd_time", t * 1e3), ("fwd_bwd_time", 3.5 * t * 1e3),
                             ("fwd_tflops", 4 * B * H * N * N * D / t / 1e12),
                             ("fwd_bwd_tflops", 4 * B * H * N * N * D / t / 1e12))]
    elif spec.task == "latency":
        from bench.tasks.pairing import other_requested, other_side, side_label

        info = info_of(spec)
        made, makers = [], []
        for side, other, override in ((spec, other_side(spec), {}), (other_side(spec), spec, other_requested(spec))):
            maker = RowMaker(spec, ctx, **info, paired_with=side_label(other, side))
            makers.append(maker)
            speedup = {"eager": 1.0, "compile": 1.5, "onnxruntime": 3.0}[side.engine]
            calls = list(info["gflops"] * spec.batch_size * rng.uniform(0.9, 1.3, 50) / speedup)
            q = np.percentile(calls, [50, 90, 99])
            made += [maker.row(m, v, samples=calls if m == "latency_p50" else None, n_repeats=50, **override)
                     for m, v in zip(("latency_p50", "latency_p90", "latency_p99"), q)]
        made.append(makers[0].row("latency_ratio", 0.5, ci_low=0.45, ci_high=0.55, n_repeats=5))
    elif spec.task in ("infer", "train"):
        from bench.tasks.pairing import other_side, side_label

        info = info_of(spec)
        paired = {"paired_with": side_label(other_side(spec), spec)} if spec.compare_to else {}
        maker = RowMaker(spec, ctx, **info, **paired)
        thr = 4e12 / (info["gflops"] * 1e9 * (3 if spec.task == "train" else 1)) * rng.uniform(0.9, 1.1)
        made = [maker.row("throughput", thr, p20=thr * 0.97, p80=thr * 1.03, n_repeats=10,
                          samples=list(thr * rng.uniform(0.95, 1.05, 10))),
                maker.row("peak_memory", spec.batch_size * info["params"] / 1e6, n_repeats=1)]
        if spec.compare_to:
            made.append(maker.row("throughput_ratio", 1.08, ci_low=1.05, ci_high=1.11, n_repeats=10))
    elif spec.task == "robustness":
        made = _robustness_rows(spec, ctx, rng)
    else:
        info = info_of(spec)
        size = min(spec.train_size or 59_000, 59_000)
        protocol = spec.budget.protocol if spec.budget else None
        maker = RowMaker(spec, ctx, **info, train_size_used=size, val_size=1000, protocol=protocol,
                         converged=protocol == "converged" and size > 200)
        base = 0.95 if info["family"] == "cnn" else 0.93
        acc = (base - (0.25 if info["family"] == "vit" else 0.15) * (1000 / size) ** 0.5
               - 0.02 * (1e6 / info["params"]) ** 0.3 + rng.normal(0, 0.004))  # more data and larger models help
        made = [maker.row("accuracy", acc, n_repeats=1), maker.row("train_flops", 3e9 * size * 30, n_repeats=1),
                maker.row("train_time", size / 500, n_repeats=1), maker.row("images_seen", size * 30, n_repeats=1)]
    timing = dict(cell_wall_s=12.0, startup_s=0.1, data_s=0.3, setup_s=0.5, train_s=10.0, eval_s=0.6, write_s=0.2)
    for row in made:
        row.update(gpu=H100 if spec.device == "cuda" else "", device_name=H100 if spec.device == "cuda" else "cpu x",
                   **timing)
    return made


def _robustness_rows(spec: CellSpec, ctx: CellContext, rng) -> list[dict]:
    """A robustness cell's rows: accuracy falling with severity and share dropped, the ViT's more slowly under
    occlusion, the CNN's more slowly under noise; more training data helps both."""
    from bench.corruptions import CORRUPTIONS

    info = info_of(spec)
    maker = RowMaker(spec, ctx, **info)
    vit = info["family"] == "vit"
    clean = (0.9 if spec.train_size is None else 0.8) - (0.05 if vit else 0.0) + rng.normal(0, 0.005)
    rows = [maker.row("robust_accuracy", clean, n_repeats=1, condition="clean", level=0)]
    for name, corruption in CORRUPTIONS.items():
        slope = 0.08 if (corruption.group == "noise") == vit else 0.05
        rows += [maker.row("robust_accuracy", max(0.1, clean - slope * s + rng.normal(0, 0.01)), n_repeats=1,
                           condition=name, level=s) for s in range(1, 6)]
    for grid in ("aligned", "offset"):
        rows += [maker.row("robust_accuracy", max(0.1, clean - (0.5 if vit else 0.8) * k / 16), n_repeats=1,
                           condition=f"patch_drop_{grid}", level=k / 16) for k in (0, 2, 3, 5, 6, 8, 10, 11, 13, 14)]
    rows += [maker.row("robust_accuracy", clean * 0.7, n_repeats=1, condition="patch_shuffle", level=g)
             for g in (2, 4, 7)]
    return rows + [maker.row("ece", 0.03 + 0.02 * vit, n_repeats=1, condition="clean"),
                   maker.row("ece", 0.15 + 0.05 * vit, n_repeats=1, condition="corrupted")]


def write_run(path: Path, records: list[CellRecord], env: dict | None = None) -> Path:
    """A run dir as `bench run` leaves it: cell records, the derived results.csv, env.json."""
    paths = RunPaths(path)
    for record in records:
        paths.cells_dir.mkdir(parents=True, exist_ok=True)
        paths.cell_record(record.spec.cell_id).write_text(record.to_json())
    write_results_csv(paths.results_csv, [row for record in records for row in record.rows])
    paths.env_json.write_text(json.dumps(env or {"device": "cpu", "device_name": "cpu x", "torch": "x",
                                                 "code_version": "abc"}))
    return path


def fixture_run(tmp_path: Path, suites: list[str], device: str, name: str = "run", rng_seed: int = 0) -> Path:
    """A run dir of the shipped suites' cells with plausible rows, as if run on `device` (the rows' noise drawn
    with `rng_seed`: another seed is the same suite run again)."""
    from bench.suite import load_suite

    rng = np.random.default_rng(rng_seed)
    records = [CellRecord(spec, fake_rows(spec, rng)) for s in suites
               for spec in load_suite(ROOT / "suites" / f"{s}.yaml", device).cells]
    return write_run(tmp_path / name, records, {"device": device, "device_name": H100 if device == "cuda" else "cpu x",
                                                "torch": "x", "code_version": "abc"})


@pytest.fixture(autouse=True)
def _fewer_report_refits(monkeypatch):
    """The report's curve and surface fits with 150 bootstrap refits (400 in a real report), as tests/test_stats.py
    fits its own: intervals as wide, their ends a little noisier, the test run shorter. Only where a test module
    has loaded the report (the GPU check runs kernel tests on a stack that need not hold the report's libraries)."""
    if "bench.report" not in sys.modules:
        return
    for module in ("bench.report.fits", "bench.report.grid"):
        monkeypatch.setattr(f"{module}.RESAMPLES", 150)


class FakeClock:
    """A perf_counter that advances only when a test says so: timing logic tested without sleeping."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def fake_clock(monkeypatch) -> FakeClock:
    """The timing modules (bench/measure/latency.py, timing.py) read this clock instead of time.perf_counter."""
    clock = FakeClock()
    for module in ("bench.measure.latency", "bench.measure.timing"):
        monkeypatch.setattr(f"{module}.time", clock)
    return clock


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """The smoke suite run once per test session: (its run dir, the finished process)."""
    run_dir = tmp_path_factory.mktemp("smoke") / "run"
    proc = bench("run", SMOKE, "--run-dir", run_dir, "--device", "cpu", timeout=600)
    assert proc.returncode == 0, proc.stderr
    return run_dir, proc
