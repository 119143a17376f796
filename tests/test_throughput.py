"""Tasks infer/train in one process: metrics, paired (alternated) timing with a ratio and its interval, and
noise flags when another process keeps the machine busy."""

import subprocess
import sys

import pytest

from bench.cell import run_cell
from bench.measure.noise import LoadReport, SystemLoad, noise_columns
from bench.measure.timing import time_paired
from bench.stats import median_interval
from bench.paths import CellContext
from bench.spec import CellSpec
from bench.tasks import TASKS



def spec(**kw):
    settings = dict(model="vit:Mu/4", img_size=28, in_chans=1, num_classes=10, batch_size=4, repeats=6, warmup=1,
                    iters=1)
    settings.update(kw)
    cell = CellSpec(**settings)
    return TASKS[cell.task].check(cell)


def test_paired_cell_gives_both_sides_and_their_ratio(tmp_path):
    rows = run_cell(spec(compare_to={"model": "timm-vit:Mu/4"}), CellContext("t", "r", tmp_path))
    assert {r["status"] for r in rows} == {"ok"}, rows
    thr = {r["model"]: r for r in rows if r["metric"] == "throughput"}
    assert set(thr) == {"vit:Mu/4", "timm-vit:Mu/4"}
    assert thr["vit:Mu/4"]["paired_with"] == "timm-vit:Mu/4" and thr["timm-vit:Mu/4"]["paired_with"] == "vit:Mu/4"
    assert thr["timm-vit:Mu/4"]["impl"] == "timm" and thr["timm-vit:Mu/4"]["attn_backend_used"] == "sdpa"
    (ratio,) = [r for r in rows if r["metric"] == "throughput_ratio"]
    samples = [float(v) for v in ratio["samples"].split(";")]
    assert len(samples) == 6 and ratio["ci_low"] <= ratio["value"] <= ratio["ci_high"]
    a = [float(v) for v in thr["vit:Mu/4"]["samples"].split(";")]
    b = [float(v) for v in thr["timm-vit:Mu/4"]["samples"].split(";")]
    assert samples == pytest.approx([x / y for x, y in zip(a, b)], rel=1e-4)


def test_paired_backends_of_one_model(tmp_path):
    rows = run_cell(spec(task="train", compare_to={"attn_backend": "math"}), CellContext("t", "r", tmp_path))
    thr = {r["attn_backend_used"]: r for r in rows if r["metric"] == "throughput"}
    assert set(thr) == {"sdpa", "math"} and any(r["metric"] == "throughput_ratio" for r in rows)
    assert thr["sdpa"]["paired_with"] == "vit:Mu/4 math" and thr["math"]["attn_backend"] == "math"


def test_alternation_cancels_drift(fake_clock):
    """Two identical steps under a machine that slows down steadily: the ratio stays 1 within its interval."""
    state = {"t": 0.0}

    def slowing():
        state["t"] += 0.0005
        fake_clock.advance(0.002 + state["t"])

    a, b = time_paired(slowing, slowing, device="cpu", warmup=0, repeats=8, iters=1)
    ratio = median_interval([tb / ta for ta, tb in zip(a.seconds, b.seconds)])
    assert ratio.method == "order statistics" and ratio.low <= 1.0 <= ratio.high


def test_a_cpu_region_that_got_little_cpu_time_is_flagged_starved():
    """A cell stopped or crowded out for part of a seconds budget trains on fewer images: its own CPU time against
    its wall time says so, whatever the load measure sees of other processes."""
    import time

    with SystemLoad(threads=2) as idle:
        time.sleep(0.5)  # no CPU time at all, as if stopped
    assert idle.report.own_share < 0.1 and "starved: the cell got" in noise_columns(idle.report)["noisy"]
    with SystemLoad(threads=1) as busy:
        end = time.monotonic() + 0.5
        while time.monotonic() < end:
            pass
    assert busy.report.own_share > 0.5 and "starved" not in noise_columns(busy.report)["noisy"]
    assert SystemLoad().__enter__().threads is None  # GPU regions: not asked


def test_noise_flags():
    quiet = LoadReport(0.1, 0.1, 2, 0.01)
    assert noise_columns(quiet, 1.0, 1.05)["noisy"] == ""
    assert noise_columns(quiet, 1.0, 1.5)["noisy"] == "spread p80/p20 1.50"
    busy = noise_columns(LoadReport(1.0, 1.9, 2, 0.45), 1.0, 1.0)
    assert busy["noisy"] == "busy: other processes used 45% of the CPU" and busy["other_cpu"] == 0.45
    assert "host-bound" in noise_columns(quiet, 1.0, 1.0, host_bound=True)["noisy"]


@pytest.mark.slow
def test_a_busy_machine_is_flagged(tmp_path):
    hog = subprocess.Popen([sys.executable, "-c", "print('spinning', flush=True)\nwhile True: pass"],
                           stdout=subprocess.PIPE, text=True)
    try:
        hog.stdout.readline()  # busy before the timing starts
        # a timed region of about a second: /proc/stat counts in 10 ms ticks, a few tiny steps would be noise
        rows = run_cell(spec(model="resnet20", repeats=4, batch_size=64, iters=5), CellContext("t", "r", tmp_path))
    finally:
        hog.kill()
    thr = next(r for r in rows if r["metric"] == "throughput")
    assert thr["other_cpu"] > 0.2 and "busy: other processes used" in thr["noisy"]


def test_energy_from_the_nvml_counter_or_nothing(monkeypatch):
    import sys
    import types

    from bench.measure import energy as energy_mod

    counter = iter([1_000_000, 1_000_000, 1_250_500])  # millijoules: the probe, the start, the end
    fake = types.SimpleNamespace(nvmlDeviceGetTotalEnergyConsumption=lambda device: next(counter))
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.setattr(energy_mod, "_handle", lambda: "gpu0")
    with energy_mod.GpuEnergy() as measured:
        pass
    assert measured.joules == pytest.approx(250.5)

    def no_gpu():
        raise RuntimeError("NVML Shared Library Not Found")

    monkeypatch.setattr(energy_mod, "_handle", no_gpu)
    with energy_mod.GpuEnergy() as measured:
        pass
    assert measured.joules is None  # and the throughput task then writes no energy metric
