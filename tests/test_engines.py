"""bench/engines.py: an engine serves a model only after it agrees with eager on the same input (ONNX export
parity, a wrong export caught, a backend that cannot export says why); a missing engine is a skipped row."""

import sys

import numpy as np
import pytest
import torch

from bench.cell import run_cell
from bench.engines import EngineMismatch, EngineUnavailable, serve
from bench.paths import CellContext
from tests.test_latency import _model, latency_cell


@pytest.mark.slow
@pytest.mark.parametrize("spec,backend", [("vit:Mu/7", "math"), ("vit:Mu/7", "sdpa"), ("resnet9", "sdpa")])
def test_onnx_export_matches_eager(tmp_path, spec, backend):
    """Mu/7 at 28 px has 17 tokens (16 patches and the class token): an odd length."""
    pytest.importorskip("onnxruntime")
    x = torch.randn(3, 1, 28, 28)
    served = serve("onnxruntime", _model(spec, backend), x, "cpu", "fp32", tmp_path)
    assert served.max_error < 1e-4 and served.setup_metric == "export_time" and served.setup_seconds > 0
    assert np.asarray(served.run()).shape == (3, 10) and served.detail["provider"] == "CPUExecutionProvider"


def test_the_triton_backend_does_not_export_and_says_why(tmp_path):
    pytest.importorskip("onnxruntime")
    with pytest.raises(EngineUnavailable, match="cannot export to ONNX"):
        serve("onnxruntime", _model("vit:Mu/7", "triton"), torch.randn(1, 1, 28, 28), "cpu", "fp32", tmp_path)


def test_a_wrong_export_is_caught_by_the_parity_check(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    real_export = torch.onnx.export

    def export_another_model(model, args, **kwargs):
        wrong = _model("resnet9")
        with torch.no_grad():
            wrong.fc.bias.add_(1.0)
        return real_export(wrong, args, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", export_another_model)
    with pytest.raises(EngineMismatch, match="disagrees with eager on the same input"):
        serve("onnxruntime", _model("resnet9"), torch.randn(1, 1, 28, 28), "cpu", "fp32", tmp_path)
    rows = run_cell(latency_cell(engine="onnxruntime"), CellContext("t", "r", tmp_path))
    assert rows[0]["status"] == "error" and "disagrees with eager" in rows[0]["error"]


def test_an_engine_that_is_not_installed_is_a_skipped_row_with_the_hint(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    rows = run_cell(latency_cell(engine="onnxruntime"), CellContext("t", "r", tmp_path))
    assert [r["status"] for r in rows] == ["skipped"] and "pip install 'vitbench[onnx]'" in rows[0]["error"]
