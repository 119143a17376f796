"""The prepared GPU check: its plan fits the time it is given, and its ratio tool reads a GPU-shaped run."""

import os
import re
import subprocess
import sys

from tests.conftest import ROOT, fixture_run


def test_dry_run_prints_the_plan_within_seven_minutes():
    proc = subprocess.run(["bash", "tools/gpu_run.sh", "--dry-run"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, PYTHON=sys.executable))
    assert proc.returncode == 0, proc.stderr
    estimates = [int(s) for s in re.findall(r"~\s*(\d+) s\b", proc.stdout)]
    assert len(estimates) == 4 and sum(estimates[:-1]) == estimates[-1] <= 7 * 60
    assert "suite gpu_check (" in proc.stdout and "attention triton 256x12x197x64 bf16" in proc.stdout
    assert "vit:B/16 train bs128 224px bf16 triton vs timm:vit_base_patch16_224" in proc.stdout


def test_ratios_against_targets(tmp_path):
    run = fixture_run(tmp_path, ["gpu_check"], "cuda")
    proc = subprocess.run([sys.executable, "tools/gpu_ratios.py", str(run)], cwd=ROOT, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
    for expected in ("attention 256x12x197x64 forward: ours / fastest SDPA", "fwd+bwd: ours / SDPA flash",
                     "ViT-B/16 triton infer throughput / timm:vit_base_patch16_224 (paired)",
                     "ViT-B/16 peak training memory: ours / timm"):
        assert expected in proc.stdout
    assert re.search(r"paired\)\s+1\.080\s+target >= 1.05\s+met", proc.stdout)
