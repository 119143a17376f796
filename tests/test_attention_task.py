"""Task attention through the runner's cell function: metrics, error against fp64, unavailable -> skipped."""

import pytest

from bench.cell import Job, run_cell


def attention_job(backend, shape=(1, 2, 50, 32), dtype="fp32"):
    cell = {"model": None, "task": "attention", "batch_size": 32, "img_size": 224, "dtype": dtype,
            "attn_backend": backend, "compile": False, "dataset": "synthetic", "train_size": None, "seed": 0,
            "in_chans": 3, "num_classes": 1000, "attn_shape": list(shape), "steps": 1, "min_epochs": 0,
            "init": None, "device": "cpu", "repeats": 2, "warmup": 1, "iters": 1}
    return Job(cell=cell, cell_id=f"att-{backend}", suite="t", run_id="r", run_dir="/tmp")


@pytest.mark.parametrize("backend", ["math", "sdpa", "triton"])  # triton: under TRITON_INTERPRET=1 here
def test_attention_cell_metrics(backend):
    rows = {r["metric"]: r for r in run_cell(attention_job(backend))}
    assert {r["status"] for r in rows.values()} == {"ok"}, rows
    for metric in ("fwd_time", "fwd_bwd_time", "fwd_tflops", "fwd_bwd_tflops", "peak_memory"):
        assert rows[metric]["value"] >= 0 and rows[metric]["unit"]
    assert rows["fwd_time"]["value"] > 0 and rows["fwd_time"]["n_repeats"] == 2
    assert 0 < rows["max_error"]["value"] < 1e-5 and 0 < rows["max_grad_error"]["value"] < 1e-5
    assert rows["fwd_time"]["attn_shape"] == "1x2x50x32" and rows["fwd_time"]["family"] == "attention"


@pytest.mark.parametrize("backend", ["sdpa_flash", "sdpa_efficient", "sdpa_cudnn", "flex"])
def test_cuda_only_backends_are_skipped_with_reason_on_cpu(backend):
    (row,) = run_cell(attention_job(backend))
    assert row["status"] == "skipped" and "CUDA" in row["error"]
