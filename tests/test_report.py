"""The report on fixture run dirs: the answer first, with intervals and verdicts, learning-curve fits, back-tests
and forecasts; figures by study tag (a GPU-shaped fixture draws every figure of the GPU grids), protocols never
mixed, deployment latency, where the time went."""


import json
import math
import re

import numpy as np
import pytest
from scipy.optimize import brentq

from bench import report as report_mod
from bench.paths import CellContext, RunPaths
from bench.report import style as style_mod
from bench.report.answer import answer as answer_of
from bench.results import CellRecord, RowMaker
from bench.spec import Budget, CellSpec
from tests.conftest import fixture_run, info_of, write_run


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
    assert "`vit:B/16` vs `timm:vit_base_patch16_224`" in answer
    assert "1.08x [1.05, 1.11] (n=10, recorded; faster)" in answer
    assert "| 59,000 |" in answer and "](data_efficiency_converged_cuda.png)" in answer
    assert "- ViT (`vit:Ti/4`, `vit:S/4`, `vit:B/4`: " in answer and "](grid_cuda_fashion-mnist.png)" in report
    assert "metrics.csv" in report and (tmp_path / "report" / "metrics.csv").exists()


def test_cpu_results_answer_first_protocols_apart_and_non_converged_marked(tmp_path, saved):
    run = fixture_run(tmp_path, ["scaling", "data_efficiency", "compute_equal"], "cpu")
    report = report_mod.write_report([run], tmp_path / "report").read_text()
    # one figure per protocol, never both in one
    assert {"data_efficiency_converged_cpu.png", "data_efficiency_compute-equal_cpu.png"} <= set(saved)
    answer = report[report.index("## Answer"):report.index("## Data efficiency")]
    assert "**Accuracy on fashion-mnist, converged protocol**" in answer
    assert "**Accuracy on fashion-mnist, compute-equal protocol**" in answer
    assert "(not converged: reached its cap)" in answer  # caveats beside the numbers they affect
    assert "(n=3, t)" in answer
    assert "(paired t, n=3;" in answer  # differences paired by seed (every seed draws the same subset for both)
    assert "**Crossover in the measured range**" in answer and "CNN leads by" in answer
    assert "**Forecast beyond the measured range**" in answer  # a forecast, or a line saying why there is none
    assert "**Fastest model at or above an accuracy**" in answer
    assert "batch-1 latency, onnxruntime: `" in answer and "**ViT / CNN latency across engines**" in answer
    assert "**Paired latency ratios**" in answer and "`vit:Mu/7` compile vs `vit:Mu/7 eager`, latency batch 1" in answer
    assert "latency_cpu.png" in saved and "| onnxruntime | vit:Ti/4" in report
    assert "## Where the time went" in report and "overhead per cell (s)" in report
    assert ("training images (log; validation: a fixed 1,000 more)", "test top-1 accuracy (%)", "log", "linear") \
        in saved["data_efficiency_converged_cpu.png"]
    assert "_Skipped: no fine-tune or linear-probe cells" in report  # a missing study is a line, not a crash
    grid = answer[answer.index("**Model size x data size on fashion-mnist**"):answer.index("**Learning curves**")]
    assert "- ViT (`vit:Na/7`, `vit:Mu/7`, `vit:Sm/7`: " in grid
    assert "- CNN (`resnet9-w8`, `resnet9`, `resnet9-w32`" in grid
    assert grid.count("back-test on the held-out corner (fitted without 4,000 images and without `") == 2
    assert "| 4,000 | `vit:" in grid and "**Where the ViT overtakes the CNN**" in grid
    assert "4x larger models (" in grid and "**How the compute-optimal model grows with data**" in grid
    for name in ("grid_cpu_fashion-mnist.png", "grid_backtest_cpu_fashion-mnist.png",
                 "grid_crossover_cpu_fashion-mnist.png"):
        assert (tmp_path / "report" / name).read_bytes()[:4] == b"\x89PNG" and f"]({name})" in report, name
    assert "| vit | `vit:Sm/7` | 4,000 |" in report  # the back-test's cells, one per row


def test_transfer_answer_gives_every_route_and_whether_mae_reaches_the_cnn(tmp_path, saved):
    run = fixture_run(tmp_path, ["pretraining", "data_efficiency", "scaling"], "cpu")
    report = report_mod.write_report([run], tmp_path / "report").read_text()
    answer = report[report.index("## Answer"):report.index("## Data efficiency")]
    assert "**Few labels: fashion-mnist:5-9, converged protocol" in answer
    assert "| route | 100 labels | 300 labels | 1,000 labels |" in answer
    for route in ("resnet9 bf16, from scratch", "vit:Mu/7 fp32, from scratch",
                  "vit:Mu/7 fp32, MAE (unlabeled) -> fine-tune",
                  "vit:Mu/7 fp32, supervised on fashion-mnist:0-4 -> fine-tune",
                  "vit:Mu/7 fp32, MAE encoder, linear probe"):
        assert f"| {route} | " in answer, route
    assert "- 1,000 labels, MAE-initialised `vit:Mu/7`: MAE gain over the same ViT from scratch" in answer
    assert "against the same ViT from scratch with as many images (90 epochs: 30,000 images seen" in answer
    assert "against the CNN (`resnet9`) -" in answer and "difference shown)" in answer
    fastest = answer[answer.index("**Fastest model"):]
    assert "fashion-mnist:5-9" not in fastest  # a class subset's accuracy never answers the 10-class question
    assert "transfer_converged_cpu.png" in saved


def test_failures_and_skips_are_listed(tmp_path):
    spec = CellSpec(model="vit:S/4", task="train", batch_size=4096, img_size=28)
    row = RowMaker(spec, CellContext("t", "r", tmp_path)).failure("oom", "OutOfMemoryError: tried to allocate 40 GiB")
    write_run(tmp_path / "run", [CellRecord(spec, [row])])
    report = report_mod.write_report([tmp_path / "run"], tmp_path / "report").read_text()
    assert "OutOfMemoryError: tried to allocate 40 GiB" in report and "| oom" in report
    assert "_No accuracy or throughput results to answer from._" in report


def test_cells_capped_by_their_dataset_are_said_beside_the_failures(tmp_path):
    records = []
    for size, used in ((1000, 1000), (59000, 59000), (100000, 59000)):
        spec = CellSpec(model="resnet9", task="train_eval", dataset="fashion-mnist", img_size=28, train_size=size,
                        budget=Budget(epochs=1.0))
        maker = RowMaker(spec, CellContext("t", "r", tmp_path), **info_of(spec), train_size_used=used, val_size=1000)
        records.append(CellRecord(spec, [maker.row("accuracy", 0.9, n_repeats=1)]))
    write_run(tmp_path / "run", records)
    report = report_mod.write_report([tmp_path / "run"], tmp_path / "report").read_text()
    assert ("**Capped:** 1 cell(s) asked for more training images than their dataset gives and trained on all of them "
            "(train_size -> train_size_used): resnet9 on fashion-mnist: 100,000 -> 59,000.") in report


def accuracy_records(tmp_path, model, curve, sizes, seeds=(0, 1, 2), noise=0.004, converged=True, rng=None):
    """Converged-protocol cells of `model` whose test accuracy follows curve(n), plus noise per seed."""
    rng = rng or np.random.default_rng(1)
    records = []
    for size in sizes:
        for seed in seeds:
            spec = CellSpec(model=model, task="train_eval", dataset="fashion-mnist", img_size=28, train_size=size,
                            seed=seed, budget=Budget(epochs=10.0, patience=3))
            maker = RowMaker(spec, CellContext("t", "r", tmp_path), **info_of(spec), train_size_used=size,
                             val_size=1000, protocol="converged", converged=converged)
            records.append(CellRecord(spec, [maker.row("accuracy", curve(size) + rng.normal(0, noise))]))
    return records


SIZES = (250, 500, 1000, 2000, 4000)


def envelope_accuracy(a: float, alpha: float, c: float):
    """Accuracy at n under Rosenfeld's envelope law with ten classes (bench/stats/laws.py)."""
    def accuracy(n):
        z = a * n ** -alpha + c
        return 1 - 0.9 * z / math.sqrt(1 + z * z)
    return accuracy


def test_crossover_found_and_absent(tmp_path):
    sizes = (500, 2000, 8000, 60000)
    records = (accuracy_records(tmp_path, "vit:Ti/4", dict(zip(sizes, (0.50, 0.70, 0.80, 0.92))).get, sizes, (0,), 0)
               + accuracy_records(tmp_path, "resnet20", dict(zip(sizes, (0.70, 0.80, 0.86, 0.90))).get, sizes, (0,), 0))
    write_run(tmp_path / "run", records)
    runs = report_mod.load([tmp_path / "run"], tmp_path)
    (statement,) = report_mod.tables.crossover_statements(runs)
    assert "ViT overtakes CNN between 8,000 and 60,000 images (estimated crossover ~" in statement
    runs.rows = runs.rows[~((runs.rows["model"] == "vit:Ti/4") & (runs.rows["subset"] == 60000))]
    (statement,) = report_mod.tables.crossover_statements(runs)
    assert "no crossover in the measured range (500-8,000 images); CNN leads by" in statement


def test_differences_are_shown_only_when_their_interval_excludes_zero(tmp_path):
    close = (accuracy_records(tmp_path, "vit:Ti/4", lambda n: 0.80, (1000,), noise=0.02)
             + accuracy_records(tmp_path, "resnet20", lambda n: 0.805, (1000,), noise=0.02,
                                rng=np.random.default_rng(7)))
    write_run(tmp_path / "close", close)
    far = (accuracy_records(tmp_path, "vit:Ti/4", lambda n: 0.70, (1000,))
           + accuracy_records(tmp_path, "resnet20", lambda n: 0.85, (1000,), rng=np.random.default_rng(7)))
    write_run(tmp_path / "far", far)
    for run, verdict in (("close", "difference not shown with 3 seeds"), ("far", "difference shown")):
        answer = answer_of(report_mod.load([tmp_path / run], tmp_path))
        row = next(line for line in answer.splitlines() if line.startswith("| 1,000 |"))
        assert f"(paired t, n=3; {verdict})" in row, row
        assert "% [" in row  # every mean with its interval


def test_a_seed_run_again_in_another_run_dir_is_one_seed_not_another(tmp_path):
    """The same cells (ids, seeds) in two run dirs of one machine: each seed is the mean of its two runs, and the
    intervals stand on the 3 seeds, never on 6 values (a rerun of a seed is not an independent replicate)."""
    runs_dirs = []
    for name, rng_seed in (("first", 1), ("again", 2)):
        records = (accuracy_records(tmp_path, "vit:Ti/4", lambda n: 0.80, (1000,), noise=0.02,
                                    rng=np.random.default_rng(rng_seed))
                   + accuracy_records(tmp_path, "resnet20", lambda n: 0.85, (1000,), noise=0.02,
                                      rng=np.random.default_rng(rng_seed + 10)))
        runs_dirs.append(write_run(tmp_path / name, records))
    runs = report_mod.load(runs_dirs, tmp_path)
    summary = report_mod.frame.accuracy_summary(runs.rows).set_index("label")
    acc = runs.rows[(runs.rows["metric"] == "accuracy") & (runs.rows["label"] == "vit:Ti/4")]
    by_seed = (acc.groupby("seed")["value"].mean() * 100).sort_index()
    assert summary.loc["vit:Ti/4", "seeds"] == 3 and summary.loc["vit:Ti/4", "seed_list"] == [0, 1, 2]
    assert np.allclose(summary.loc["vit:Ti/4", "values"], by_seed.to_numpy())
    answer = answer_of(runs)
    assert answer.count("(n=3, t)") == 2 and "n=6" not in answer
    row = next(line for line in answer.splitlines() if line.startswith("| 1,000 |"))
    assert "(paired t, n=3;" in row, row
    assert "**Repeated:** 6 cell(s)" in report_mod.write_report(runs_dirs, tmp_path / "report").read_text()


def test_the_mae_gain_and_the_compute_frontier_count_each_seed_once_when_a_run_dir_is_repeated(tmp_path):
    """A run dir given twice (a copy): the MAE gain pairs each seed once, and the compute frontier is the same as
    from one copy, one error per seed at each point (never the seed's two copies as two seeds)."""
    dirs = [fixture_run(tmp_path, ["pretraining", "data_efficiency"], "cpu", name) for name in ("run", "copy")]
    runs = report_mod.load(dirs, tmp_path)
    gains = re.findall(r"\(seeds ([^)]*)\)", report_mod.tables.mae_gain(runs))
    assert gains and all(len(g.split(", ")) == 3 for g in gains), gains
    frontiers = [{curve.family: curve.points for curve in report_mod.fits.frontier_curves(r)}
                 for r in (report_mod.load(dirs[:1], tmp_path), runs)]
    assert frontiers[0].keys() == {"vit", "cnn"} and frontiers[0] == frontiers[1]


def test_learning_curves_back_test_and_forecast(tmp_path, saved):
    """Curves that meet at a known size: fitted, back-tested, the crossover forecast with its interval and the
    extrapolation factor; a ViT curve the power law cannot extrapolate makes the forecast unreliable."""
    # the curves meet near 7,700 images
    vit, cnn = envelope_accuracy(a=40.0, alpha=0.6, c=0.04), envelope_accuracy(a=2.5, alpha=0.35, c=0.12)
    records = accuracy_records(tmp_path, "vit:Ti/4", vit, SIZES, noise=0.002) + \
        accuracy_records(tmp_path, "resnet20", cnn, SIZES, noise=0.002, rng=np.random.default_rng(3))
    write_run(tmp_path / "run", records)
    report = report_mod.write_report([tmp_path / "run"], tmp_path / "report").read_text()
    answer = report[report.index("## Answer"):report.index("## Data efficiency")]
    assert "**Learning curves**" in answer and "back-test (fit without 4,000, predict its mean)" in answer
    assert answer.count(", reliable") >= 2 and "UNRELIABLE" not in answer
    forecast = answer[answer.index("**Forecast beyond the measured range** (extrapolation"):]
    assert "at 40,000 images (10x the largest measured)" in forecast
    line = next(line for line in forecast.splitlines() if "meets the CNN's at about" in line)
    n_star = float(line.split("at about ")[1].split(" images")[0].replace(",", ""))
    low, high = (float(v.replace(",", "")) for v in line.split("[")[1].split("]")[0].split(", "))
    true_n = math.exp(brentq(lambda x: vit(math.exp(x)) - cnn(math.exp(x)), math.log(100), math.log(1e7)))
    assert low <= true_n <= high and 0.5 < n_star / true_n < 2
    assert "x beyond the measured range" in line
    assert {"backtest.png", "data_efficiency_converged_cpu.png"} <= set(saved)

    bent = accuracy_records(tmp_path, "vit:Ti/4", lambda n: vit(n) + (0.08 if n == 4000 else 0), SIZES, noise=0.002)
    write_run(tmp_path / "bent", bent + records[len(bent):])
    answer = answer_of(report_mod.load([tmp_path / "bent"], tmp_path))
    assert "UNRELIABLE (more than 3 points off)" in answer and "UNRELIABLE, not an answer" in answer


def test_too_few_sizes_say_why_there_is_no_fit(tmp_path):
    write_run(tmp_path / "run", accuracy_records(tmp_path, "vit:Ti/4", lambda n: 0.8, (250, 1000)))
    answer = answer_of(report_mod.load([tmp_path / "run"], tmp_path))
    assert "no fit (the envelope law needs at least 4 cells, got 2)" in answer


def test_report_cli_rejects_a_folder_without_results(tmp_path):
    from bench.__main__ import main

    assert main(["report", str(tmp_path)]) == 2


def test_the_report_never_prints_an_interval_of_zero_width(tmp_path):
    run = fixture_run(tmp_path, ["scaling", "data_efficiency", "pretraining"], "cpu")
    agree = accuracy_records(tmp_path, "resnet20", lambda n: 0.85, (1000,), noise=0.0)  # three seeds, one value
    write_run(tmp_path / "agree", agree)
    report = report_mod.write_report([run, tmp_path / "agree"], tmp_path / "report").read_text()
    brackets = re.findall(r"\[(-?[\d.,]+)(?: \w+)?, (-?[\d.,]+)(?: \w+)?\]", report)
    assert len(brackets) > 20 and all(low != high for low, high in brackets), \
        [b for b in brackets if b[0] == b[1]]
    assert "every seed gave 85.0: no spread to go on" in report


def test_values_no_measurement_can_have_are_left_out_and_listed(tmp_path):
    """An accuracy of NaN (written as NaN or as null) or above 1 is no measurement: the answer never prints it nor
    pools it into a mean or a difference, and the failure region names each such value's cell file."""
    records = (accuracy_records(tmp_path, "vit:Ti/4", lambda n: 0.80, (1000,))
               + accuracy_records(tmp_path, "resnet20", lambda n: 0.85, (1000,), rng=np.random.default_rng(7)))
    impossible = {0: math.nan, 1: None, 3: 1.107}  # vit seeds 0 (NaN) and 1 (null), resnet20 seed 0 (110.7 %)
    for i, value in impossible.items():
        records[i].rows[0]["value"] = value
    run = write_run(tmp_path / "run", records)
    cell_file = RunPaths(run).cell_record(records[0].spec.cell_id)
    cell_file.write_text(cell_file.read_text().replace('"value": null', '"value": NaN'))  # a literal NaN
    runs = report_mod.load([run], tmp_path)
    answer = answer_of(runs)
    assert "nan" not in answer.lower() and "110.7" not in answer and "| 1,000 |" in answer
    # the seeds that are measurements, and only they
    assert "`resnet20` fp32: 85.0 % (n=2: " in answer and "`vit:Ti/4` fp32: 80.1 % (n=1;" in answer
    failures = report_mod.failure_table(runs)
    for i in impossible:
        assert str(RunPaths(run).cell_record(records[i].spec.cell_id)) in failures
    assert "accuracy nan" in failures and "accuracy 1.107" in failures and "valid 0 to 1" in failures


def test_two_device_models_are_two_lines_everywhere_and_no_cell_is_dropped_across_run_dirs(tmp_path, saved):
    """The same cells (same ids) run on two CPU models: each section and table keeps the two apart as the Answer
    does (a figure, a crossover statement, a time-table row and a failure row each), never one pooled line."""
    runs_of = {}
    for name, shift in (("Intel Xeon 8375C", 0.0), ("AMD EPYC 7B13", -0.10)):
        records = (accuracy_records(tmp_path, "vit:Ti/4", lambda n, s=shift: 0.70 + s + n / 1e5, (500, 1000))
                   + accuracy_records(tmp_path, "resnet20", lambda n: 0.85 + n / 1e5, (500, 1000)))
        spec = CellSpec(model="vit:S/4", task="train", batch_size=4096, img_size=28)
        records.append(CellRecord(spec, [RowMaker(spec, CellContext("t", "r", tmp_path)).failure("oom", "OOM")]))
        for model in ("vit:Ti/4", "resnet20"):  # inference throughput: a Pareto figure per machine
            spec = CellSpec(model=model, task="infer", batch_size=64, img_size=28)
            maker = RowMaker(spec, CellContext("t", "r", tmp_path), **info_of(spec))
            records.append(CellRecord(spec, [maker.row("throughput", 900.0 + 100 * shift)]))
        for record in records:
            for row in record.rows:
                row.update(device_name=name, cell_wall_s=10.0, train_s=8.0)
        runs_of[name] = write_run(tmp_path / name.split()[0].lower(), records)
        curve = RunPaths(runs_of[name]).curve(records[0].spec.cell_id)  # one training curve, the same id in each
        curve.parent.mkdir(parents=True, exist_ok=True)
        curve.write_text(json.dumps({"curve": [{"epoch": e, "images_seen": 500 * e, "train_loss": 1 / e + shift,
                                                "val_accuracy": 0.5 + e / 20} for e in (1, 2, 3)]}))
    runs = report_mod.load(list(runs_of.values()), tmp_path / "report")
    (tmp_path / "report").mkdir()
    answer = answer_of(runs)
    assert "### On cpu (Intel Xeon 8375C)" in answer and "### On cpu (AMD EPYC 7B13)" in answer
    report_mod.figures.data_efficiency(runs)
    assert {"data_efficiency_converged_cpu-intel-xeon-8375c.png",
            "data_efficiency_converged_cpu-amd-epyc-7b13.png"} <= set(saved)
    assert "](data_efficiency_converged_cpu-amd-epyc-7b13.png)" in answer
    statements = report_mod.tables.crossover_statements(runs)
    assert len(statements) == 2 and all("CNN leads by" in s for s in statements)
    assert {s.split(", ")[0] for s in statements} == {"fashion-mnist on cpu-intel-xeon-8375c",
                                                      "fashion-mnist on cpu-amd-epyc-7b13"}
    assert runs.curves.groupby("machine")["curve"].nunique().to_dict() == {"cpu-amd-epyc-7b13": 1,
                                                                           "cpu-intel-xeon-8375c": 1}
    report_mod.figures.training_curves(runs)
    assert "curves_converged_cpu-amd-epyc-7b13_epochs.png" in saved
    report_mod.figures.pareto(runs)
    assert {"pareto_cpu-intel-xeon-8375c.png", "pareto_cpu-amd-epyc-7b13.png"} <= set(saved)
    times = report_mod.time_table(runs)
    assert len(re.findall(r"\| +15 \| +150\.0 \|", times)) == 2, times  # each run dir's 15 cells, ids alike
    assert report_mod.failure_table(runs).count("| oom ") == 2
