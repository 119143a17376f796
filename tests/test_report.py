"""The report on a fixture run dir: files, real PNGs with the expected axes, skipped figures, failed cells."""

import json

import pytest

from bench import report as report_mod
from bench.results import write_results_csv

MODELS = {  # label: (family, impl, params, gflops, patch, throughput at batch 32)
    "vit:Ti/4": ("vit", "native", 5.5e6, 0.5, 4, 150.0),
    "timm-vit:Ti/4": ("vit", "timm", 5.5e6, 0.5, 4, 140.0),
    "resnet20": ("cnn", "native", 2.7e5, 0.06, None, 700.0),
}


def row(**kw):
    base = {"schema_version": 2, "suite": "fixture", "run_id": "r", "device": "cpu", "status": "ok", "dtype": "fp32",
            "img_size": 28, "dataset": "synthetic", "attn_backend": "sdpa", "seed": 0, "unit": "", "compile": False}
    base.update(kw)
    base.setdefault("attn_backend_used", "none" if kw.get("family") == "cnn" else base["attn_backend"])
    if "train_size" in kw:
        base.update(train_size_used=round(kw["train_size"] * 0.9), val_size=kw["train_size"] - round(kw["train_size"] * 0.9))
    base.setdefault("cell_id", "-".join(str(kw.get(k)) for k in ("model", "task", "batch_size", "train_size",
                                                                 "seed", "dataset", "img_size")))
    return base


@pytest.fixture
def run_dir(tmp_path):
    rows = []
    for model, (family, impl, params, gflops, patch, thr) in MODELS.items():
        info = dict(model=model, family=family, impl=impl, params=params, gflops=gflops, patch=patch,
                    variant=model.split(":")[-1])
        for task in ("infer", "train"):
            for batch in (8, 32):
                scale = (batch / 32) ** 0.2 * (1 if task == "infer" else 0.3)
                rows += [row(**info, task=task, batch_size=batch, metric="throughput", value=thr * scale,
                             p20=thr * scale * 0.95, p80=thr * scale * 1.05),
                         row(**info, task=task, batch_size=batch, metric="peak_memory", value=batch * 3.0)]
        if family == "vit" and impl == "native":  # another patch size -> another sequence length
            for task in ("infer", "train"):
                rows += [row(**{**info, "model": "vit:Ti/7", "patch": 7}, task=task, batch_size=32,
                             metric=m, value=v) for m, v in (("throughput", 500.0), ("peak_memory", 20.0))]
    # accuracy: the CNN leads at small sizes, the ViT at the largest (a crossover between 8000 and 60000)
    for model, family, accs in (("vit:Ti/4", "vit", [0.50, 0.70, 0.80, 0.92]),
                                ("resnet20", "cnn", [0.70, 0.80, 0.86, 0.90])):
        for size, acc in zip((500, 2000, 8000, 60000), accs):
            for seed in (0, 1):
                rows.append(row(model=model, family=family, impl="native", task="train_eval", batch_size=128,
                                dataset="fashion-mnist", train_size=size, seed=seed, metric="accuracy",
                                value=acc + 0.01 * seed))
    rows.append(row(model="vit:S/4", family="vit", impl="native", task="train", batch_size=4096, metric="status",
                    value=None, status="oom", error="OutOfMemoryError: tried to allocate 40 GiB"))
    path = tmp_path / "run"
    write_results_csv(path / "results.csv", rows)
    (path / "env.json").write_text(json.dumps({"device": "cpu", "device_name": "fixture cpu", "torch": "x",
                                               "timm": "y", "triton": "z", "git_sha": "abc", "git_dirty": False}))
    return path


def test_report_files_axes_skips_and_failures(run_dir, tmp_path, monkeypatch):
    figures = {}
    save = report_mod._save

    def capture(fig, out, name):
        figures[name] = [(ax.get_xlabel(), ax.get_ylabel(), ax.get_xscale(), ax.get_yscale())
                         for ax in fig.axes if ax.get_xlabel() or ax.get_ylabel()]
        return save(fig, out, name)

    monkeypatch.setattr(report_mod, "_save", capture)
    out = tmp_path / "report"
    report = report_mod.write_report([run_dir], out).read_text()

    for name in ("data_efficiency.png", "throughput_vs_params.png", "throughput_vs_gflops.png",
                 "sequence_length.png", "memory_vs_batch.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert f"]({name})" in report
    assert ("training images (log scale)", "test top-1 accuracy (%)", "log", "linear") in figures["data_efficiency.png"]
    params_axes = figures["throughput_vs_params.png"]
    assert any(x == "parameters (log scale)" and xs == ys == "log" for x, _, xs, ys in params_axes)
    assert any(y == "throughput (images/s, log scale)" for _, y, _, _ in params_axes)
    assert figures["memory_vs_batch.png"][0][:2] == ("batch size (log)", "peak step memory (MiB, log)")

    assert "_Skipped: no attention-kernel rows" in report  # missing metrics: a line, not a crash
    assert "_Skipped: no fine-tune cells" in report
    assert "ViT overtakes CNN between 8000 and 60000 images" in report
    assert "OutOfMemoryError: tried to allocate 40 GiB" in report and "| oom" in report
    assert "| vit:Ti/4" in report and (out / "results_combined.csv").exists()


def test_crossover_absent_is_stated(run_dir):
    data = report_mod.load_runs([run_dir])
    data = data[~((data["model"] == "vit:Ti/4") & (data["train_size"] == 60000))]
    assert "no crossover in the measured range (500-8000 images); CNN leads throughout" in \
        report_mod.crossover_statement(data)


def test_report_cli_rejects_a_folder_without_results(tmp_path):
    from bench.__main__ import main

    assert main(["report", str(tmp_path)]) == 2
