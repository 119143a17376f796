"""Deployment speed (bench/measure/latency.py, the latency task): per-call latency percentiles, calls timed
alone and in ABBA pairs, setup time kept out of the timed region, engines for inference only. The engines
themselves: tests/test_engines.py."""

import time

import pytest
import torch

from bench import engines
from bench.cell import run_cell
from bench.measure.latency import percentiles, time_calls, time_calls_paired
from bench.models import build_model
from bench.paths import CellContext
from bench.spec import CellSpec
from bench.tasks import TASKS


def latency_cell(**kw) -> CellSpec:
    settings = dict(model="resnet9", task="latency", batch_size=1, img_size=28, in_chans=1, num_classes=10, calls=20)
    settings.update(kw)
    spec = CellSpec(**settings)
    return TASKS["latency"].check(spec)


def test_percentiles_of_a_known_sample():
    assert percentiles(list(range(1, 101))) == {50: 50.5, 90: pytest.approx(90.1), 99: pytest.approx(99.01)}
    assert percentiles([3.0] * 7) == {50: 3.0, 90: 3.0, 99: 3.0}


def test_every_call_is_timed_alone_and_pairs_alternate(fake_clock):
    calls = []
    samples = time_calls(lambda: calls.append(fake_clock.advance(0.002)), device="cpu", warmup=3, calls=10)
    assert len(calls) == 13 and samples == pytest.approx([0.002] * 10)
    order = []
    a, b, ratios = time_calls_paired(lambda: order.append("a") or fake_clock.advance(0.001),
                                     lambda: order.append("b") or fake_clock.advance(0.003), device="cpu", warmup=1,
                                     calls=20, block=5)
    # ABBA, each block after one untimed call of its side
    assert order[2:8] == ["a"] * 6 and order[8:14] == ["b"] * 6 and order[14:20] == ["b"] * 6
    assert a == pytest.approx([0.001] * 20) and b == pytest.approx([0.003] * 20)
    assert ratios == pytest.approx([1 / 3] * 4)


def _model(spec: str, backend: str = "sdpa"):
    torch.manual_seed(0)
    return build_model(spec, img_size=28, in_chans=1, num_classes=10, attn_backend=backend)[0].eval()


def test_setup_time_is_never_inside_the_timed_region(tmp_path, monkeypatch):
    """A compile that takes 1.5 s: its own metric, while every timed call stays fast; paired with eager."""

    def slow_compile(model, **kwargs):
        time.sleep(1.5)
        return model

    monkeypatch.setattr(engines.torch, "compile", slow_compile)
    rows = run_cell(latency_cell(engine="compile", compare_to={"engine": "eager"}), CellContext("t", "r", tmp_path))
    by = {(r["metric"], r["engine"]): r for r in rows}
    assert {r["status"] for r in rows} == {"ok"}, rows
    assert by[("compile_time", "compile")]["value"] >= 1.5 and by[("engine_max_error", "compile")]["value"] == 0
    for engine in ("compile", "eager"):
        samples = [float(v) for v in by[("latency_p50", engine)]["samples"].split(";")]
        assert len(samples) == 20 and max(samples) < 1000  # ms: no call paid the 1.5 s
        assert by[("latency_p50", engine)]["value"] <= by[("latency_p99", engine)]["value"]
    ratio = by[("latency_ratio", "compile")]
    assert ratio["paired_with"] == "resnet9 eager" and ratio["n_repeats"] == 2
    assert ratio["ci_low"] is None and ratio["ci_high"] is None  # 2 blocks: too few for an interval of the median


def test_engines_apply_to_inference_only():
    from bench.spec import SpecError

    with pytest.raises(SpecError, match="engine does not apply to task train"):
        TASKS["train"].check(CellSpec(model="resnet9", task="train", img_size=28, engine="compile"))
    with pytest.raises(SpecError, match="compile does not apply to task infer"):
        TASKS["infer"].check(CellSpec(model="resnet9", img_size=28, compile=True))
    with pytest.raises(SpecError, match="compare_to names the same"):
        latency_cell(compare_to={"engine": "eager"})
