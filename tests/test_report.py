"""The report and `bench compare` on fixture run dirs: the answer first, figures by study tag (a GPU-shaped
fixture draws every figure of the GPU grids), protocols never mixed, compare's ratios, noise and exit codes."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench import report as report_mod
from bench.report import style as style_mod
from bench.results import CellContext, RowMaker, write_results_csv
from bench.spec import Budget, CellSpec
from bench.suite import load_suite

ROOT = Path(__file__).resolve().parent.parent
H100 = "NVIDIA H100 80GB HBM3"


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
    return dict(family="cnn", impl="torchvision" if depth >= 18 and depth != 20 else "native", variant=model,
                patch=None, params=depth * 1e6, gflops=depth * 0.2, attn_backend_used="none")


def fake_rows(spec: CellSpec, rng) -> list[dict]:
    """Plausible measurements for a cell: what a run on an H100 (or a CPU) would write."""
    ctx = CellContext(spec.study[0] if spec.study else "fixture", "r", Path("/tmp"))
    if spec.task == "attention":
        B, H, N, D = spec.attn_shape
        rows = RowMaker(spec, ctx, family="attention", impl=spec.attn_backend, attn_backend_used=spec.attn_backend)
        t = 4 * B * H * N * N * D / 300e12 * (1.3 if spec.attn_backend == "math" else 1.0)
        made = [rows.row(m, v, u, p20=v * 0.98, p80=v * 1.02, n_repeats=5)
                for m, v, u in (("fwd_time", t * 1e3, "ms"), ("fwd_bwd_time", 3.5 * t * 1e3, "ms"),
                                ("fwd_tflops", 4 * B * H * N * N * D / t / 1e12, "TFLOP/s"),
                                ("fwd_bwd_tflops", 4 * B * H * N * N * D / t / 1e12, "TFLOP/s"))]
    elif spec.task in ("infer", "train"):
        from bench.tasks.throughput import _other_side, _side_label

        info = info_of(spec)
        paired = {"paired_with": _side_label(_other_side(spec), spec)} if spec.compare_to else {}
        rows = RowMaker(spec, ctx, **info, **paired)
        thr = 4e12 / (info["gflops"] * 1e9 * (3 if spec.task == "train" else 1)) * rng.uniform(0.9, 1.1)
        made = [rows.row("throughput", thr, "img/s", p20=thr * 0.97, p80=thr * 1.03, n_repeats=10),
                rows.row("peak_memory", spec.batch_size * info["params"] / 1e6, "MiB", n_repeats=1)]
        if spec.compare_to:
            made.append(rows.row("throughput_ratio", 1.08, "x", ci_low=1.05, ci_high=1.11, n_repeats=10))
    else:
        info = info_of(spec)
        size = spec.train_size or 60_000
        rows = RowMaker(spec, ctx, **info, train_size_used=int(size * 0.9), val_size=size - int(size * 0.9),
                        protocol=spec.budget.protocol if spec.budget else None, converged=size > 500)
        base = 0.95 if info["family"] == "cnn" else 0.93
        acc = base - (0.25 if info["family"] == "vit" else 0.15) * (1000 / size) ** 0.5 + 0.003 * spec.seed
        made = [rows.row("accuracy", acc, "fraction", n_repeats=1),
                rows.row("train_flops", 3e9 * size * 30, "FLOP", n_repeats=1),
                rows.row("train_time", size / 500, "s", n_repeats=1)]
    for row in made:
        row.update(gpu=H100 if spec.device == "cuda" else "", device_name=H100 if spec.device == "cuda" else "cpu x")
    return made


def fixture_run(tmp_path: Path, suites: list[str], device: str, name: str = "run") -> Path:
    rng = np.random.default_rng(0)
    rows = [r for s in suites for spec in load_suite(ROOT / "suites" / f"{s}.yaml", device).cells
            for r in fake_rows(spec, rng)]
    path = tmp_path / name
    write_results_csv(path / "results.csv", rows)
    (path / "env.json").write_text(json.dumps({"device": device, "device_name": H100 if device == "cuda" else "cpu",
                                               "torch": "x", "code_version": "abc"}))
    return path


@pytest.fixture
def saved(monkeypatch):
    """name -> axes labels of every figure the report saves."""
    figures = {}
    real = style_mod.save

    def capture(fig, out, name, caption):
        figures[name] = [(ax.get_xlabel(), ax.get_ylabel(), ax.get_xscale(), ax.get_yscale()) for ax in fig.axes]
        return real(fig, out, name, caption)

    monkeypatch.setattr(report_mod.figures, "save", capture)
    return figures


def test_gpu_shaped_results_draw_every_figure_of_the_gpu_grids(tmp_path, saved):
    run = fixture_run(tmp_path, ["scaling", "attention", "data_efficiency"], "cuda")
    report = report_mod.write_report([run], tmp_path / "report").read_text()
    for name in ("data_efficiency_converged_cuda.png", "throughput_vs_params.png", "throughput_vs_gflops.png",
                 "sequence_length.png", "image_size.png", "batch_size.png", "attention_time.png",
                 "attention_tflops.png", "pareto_cuda.png", "accuracy_vs_compute_converged_cuda.png"):
        assert name in saved, name
        assert (tmp_path / "report" / name).read_bytes()[:4] == b"\x89PNG" and f"]({name})" in report
    # image size: both native ViT-B/16 and ResNet-50 at 224 and 384 px, selected by the study tag alone
    assert saved["image_size.png"][0][:2] == ("image size (px)", "throughput (images/s, log)")
    assert saved["sequence_length.png"][0][0].startswith("sequence length N")
    assert report.index("## Answer") < report.index("## Data efficiency")
    answer = report[report.index("## Answer"):report.index("## Data efficiency")]
    assert "### On cuda (NVIDIA H100 80GB HBM3)" in answer and "Native ViT against ResNet-50" in answer
    assert "`vit:B/16` vs `timm:vit_base_patch16_224`" in answer and "1.08x [1.05, 1.11] (faster)" in answer
    assert "| 60,000 |" in answer and "](data_efficiency_converged_cuda.png)" in answer
    assert "metrics.csv" in report and (tmp_path / "report" / "metrics.csv").exists()


def test_cpu_results_answer_first_protocols_apart_and_non_converged_marked(tmp_path, saved):
    run = fixture_run(tmp_path, ["scaling", "data_efficiency"], "cpu")
    report = report_mod.write_report([run], tmp_path / "report").read_text()
    # one figure per protocol, never both in one
    assert {"data_efficiency_converged_cpu.png", "data_efficiency_compute-equal_cpu.png"} <= set(saved)
    answer = report[report.index("## Answer"):report.index("## Data efficiency")]
    assert "**Accuracy on fashion-mnist, converged protocol**" in answer
    assert "**Accuracy on fashion-mnist, compute-equal protocol**" in answer
    assert "(not converged" in answer and "1 seed" in answer  # caveats beside the numbers they affect
    assert "**Crossover**" in answer and "CNN leads by" in answer
    assert "**Fastest model at or above an accuracy**" in answer
    assert ("training images drawn (log; 10% of them validate)", "test top-1 accuracy (%)", "log", "linear") \
        in saved["data_efficiency_converged_cpu.png"]
    assert "_Skipped: no fine-tune or linear-probe cells" in report  # a missing study is a line, not a crash


def test_transfer_answer_gives_every_route_and_whether_mae_reaches_the_cnn(tmp_path, saved):
    run = fixture_run(tmp_path, ["pretraining", "data_efficiency", "scaling"], "cpu")
    report = report_mod.write_report([run], tmp_path / "report").read_text()
    answer = report[report.index("## Answer"):report.index("## Data efficiency")]
    assert "**Few labels: fashion-mnist:5-9, converged protocol" in answer
    assert "| route | 100 labels | 1,000 labels | 5,000 labels |" in answer
    for route in ("resnet9, from scratch", "vit:Mu/4, from scratch", "vit:Mu/4, MAE (unlabeled) -> fine-tune",
                  "vit:Mu/4, supervised on fashion-mnist:0-4 -> fine-tune", "vit:Mu/4, MAE encoder, linear probe"):
        assert f"| {route} | " in answer, route
    assert "The MAE-initialised ViT does not reach the CNN at any labeled size measured" in answer
    fastest = answer[answer.index("**Fastest model"):]
    assert "fashion-mnist:5-9" not in fastest  # a class subset's accuracy never answers the 10-class question
    assert "transfer_converged_cpu.png" in saved


def test_failures_and_skips_are_listed(tmp_path):
    spec = CellSpec(model="vit:S/4", task="train", batch_size=4096, img_size=28)
    row = RowMaker(spec, CellContext("t", "r", tmp_path)).failure("oom", "OutOfMemoryError: tried to allocate 40 GiB")
    write_results_csv(tmp_path / "run" / "results.csv", [row])
    report = report_mod.write_report([tmp_path / "run"], tmp_path / "report").read_text()
    assert "OutOfMemoryError: tried to allocate 40 GiB" in report and "| oom" in report
    assert "_No accuracy or throughput results to answer from._" in report


def test_crossover_found_and_absent(tmp_path):
    rows = []
    for model, accs in (("vit:Ti/4", [0.50, 0.70, 0.80, 0.92]), ("resnet20", [0.70, 0.80, 0.86, 0.90])):
        for size, acc in zip((500, 2000, 8000, 60000), accs):
            spec = CellSpec(model=model, task="train_eval", dataset="fashion-mnist", img_size=28, train_size=size,
                            budget=Budget(epochs=10.0))
            info = info_of(spec)
            rows.append(RowMaker(spec, CellContext("t", "r", tmp_path), **info, train_size_used=size * 9 // 10,
                                 val_size=size // 10, protocol="converged", converged=True)
                        .row("accuracy", acc, "fraction"))
    write_results_csv(tmp_path / "run" / "results.csv", rows)
    runs = report_mod.load([tmp_path / "run"], tmp_path)
    (statement,) = report_mod.figures.crossover_statements(runs)
    assert "ViT overtakes CNN between 8,000 and 60,000 images (estimated crossover ~" in statement
    runs.rows = runs.rows[~((runs.rows["model"] == "vit:Ti/4") & (runs.rows["subset"] == 60000))]
    (statement,) = report_mod.figures.crossover_statements(runs)
    assert "no crossover in the measured range (500-8,000 images); CNN leads by 6.0-20.0 points" in statement


def test_report_cli_rejects_a_folder_without_results(tmp_path):
    from bench.__main__ import main

    assert main(["report", str(tmp_path)]) == 2


# ------------------------------------------------------------------------------------------ compare


def bench(*args):
    return subprocess.run([sys.executable, "-m", "bench", *map(str, args)], cwd=ROOT, capture_output=True, text=True)


def slowed(run: Path, out: Path, factor: float, device_name: str | None = None) -> Path:
    import pandas as pd

    frame = pd.read_csv(run / "results.csv")
    hit = frame["metric"] == "throughput"
    frame.loc[hit, ["value", "p20", "p80"]] = frame.loc[hit, ["value", "p20", "p80"]] / factor
    if device_name:
        frame["device_name"] = device_name
    out.mkdir()
    frame.to_csv(out / "results.csv", index=False)
    return out


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
    import pandas as pd

    table = pd.read_csv(tmp_path / "cmp.csv")
    thr = table[table["metric"] == "throughput"]
    assert np.allclose(thr["ratio"], 1 / 1.2) and (thr["verdict"] == "regression").all()
    assert bench("compare", run, slow, "--fail-above", "1.25").returncode == 0  # 20% is within a 25% threshold


def test_compare_refuses_unlike_devices_unless_asked(tmp_path):
    run = fixture_run(tmp_path, ["scaling"], "cuda")
    other = slowed(run, tmp_path / "other", 1.0, device_name="NVIDIA A100-SXM4-80GB")
    refused = bench("compare", run, other)
    assert refused.returncode == 2 and "not comparable" in refused.stderr and "Traceback" not in refused.stderr
    assert bench("compare", run, other, "--allow-different-devices").returncode == 0
    assert bench("compare", run, tmp_path / "missing").returncode == 2
