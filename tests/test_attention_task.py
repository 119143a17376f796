"""Task attention through the cell function: metrics, error against fp64, no gradient accumulation,
unavailable backends -> skipped with the reason."""


import pytest
import torch

from bench.cell import run_cell
from bench.paths import CellContext
from bench.spec import CellSpec
from bench.tasks import attention as attention_task


def attention_spec(backend, shape=(1, 2, 50, 32), dtype="fp32"):
    return CellSpec(task="attention", attn_backend=backend, attn_shape=shape, dtype=dtype, repeats=2, warmup=1,
                    iters=1)


@pytest.mark.parametrize("backend", ["math", "sdpa", "triton"])  # triton: under TRITON_INTERPRET=1 here
def test_attention_cell_metrics(backend, tmp_path):
    rows = {r["metric"]: r for r in run_cell(attention_spec(backend), CellContext("t", "r", tmp_path))}
    assert {r["status"] for r in rows.values()} == {"ok"}, rows
    for metric in ("fwd_time", "fwd_bwd_time", "fwd_tflops", "fwd_bwd_tflops", "peak_memory"):
        assert rows[metric]["value"] >= 0 and rows[metric]["unit"]
    assert rows["fwd_time"]["value"] > 0 and rows["fwd_time"]["n_repeats"] == 2
    assert 0 < rows["max_error"]["value"] < 1e-5 and 0 < rows["max_grad_error"]["value"] < 1e-5
    assert rows["fwd_time"]["attn_shape"] == "1x2x50x32" and rows["fwd_time"]["family"] == "attention"
    assert rows["fwd_time"]["samples"].count(";") == 1 and rows["fwd_time"]["other_cpu"] is not None


@pytest.mark.parametrize("backend", ["sdpa_flash", "sdpa_efficient", "sdpa_cudnn", "flex"])
def test_cuda_only_backends_are_skipped_with_reason_on_cpu(backend, tmp_path):
    (row,) = run_cell(attention_spec(backend), CellContext("t", "r", tmp_path))
    assert row["status"] == "skipped" and "CUDA" in row["error"]


def test_timed_backward_accumulates_no_gradients(monkeypatch, tmp_path):
    """Every timed forward+backward must start from the same state: nothing may pile up in q.grad."""
    seen = []
    real = attention_task.time_steps

    def spy(step, **kwargs):
        timing = real(step, **kwargs)
        seen.append(step)
        return timing

    grads = []
    real_grad = torch.autograd.grad

    def grad_spy(outputs, inputs, *args, **kwargs):
        grads.append(all(t.grad is None for t in inputs))
        return real_grad(outputs, inputs, *args, **kwargs)

    monkeypatch.setattr(attention_task, "time_steps", spy)
    monkeypatch.setattr(torch.autograd, "grad", grad_spy)
    rows = run_cell(attention_spec("sdpa"), CellContext("t", "r", tmp_path))
    assert {r["status"] for r in rows} == {"ok"} and len(seen) == 2 and grads and all(grads)
