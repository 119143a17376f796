"""Every autotune configuration of the attention kernels compiles for sm_90 and sm_80 without a GPU: within the
target's shared memory and without register spills (Triton's bundled ptxas; ~2 minutes cold on this CPU, seconds
with Triton's on-disk cache)."""

import csv
import io
import os
import subprocess
import sys

from vit_impl.kernels.compile_check import DTYPES, HEAD_DIMS, KERNELS, TARGETS, Row


def _compile_all() -> list[Row]:
    # The kernels must be triton.jit functions, not the interpreter's (conftest sets TRITON_INTERPRET=1 here).
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "VITBENCH_TRITON_FIXED_CONFIG")}
    proc = subprocess.run([sys.executable, "-m", "vit_impl.kernels.compile_check"], capture_output=True, text=True,
                          env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = list(csv.DictReader(io.StringIO(proc.stdout)))
    return [Row(**{k: (v if k in ("kernel", "target", "dtype", "error") else int(v)) for k, v in row.items()})
            for row in rows]


def test_every_autotune_configuration_compiles_within_limits_and_without_spills():
    rows = _compile_all()
    expected = {(kernel, target, dtype, head_dim, tile) for kernel, (_, tiles) in KERNELS.items() for tile in tiles
                for target in TARGETS for dtype in DTYPES for head_dim in HEAD_DIMS}
    got = {(r.kernel, r.target, r.dtype, r.head_dim, (r.block_m, r.block_n, r.num_warps, r.num_stages)) for r in rows}
    assert got == expected
    problems = [f"{r.kernel} {r.target} {r.dtype} D={r.head_dim} {r.config}: {'; '.join(r.problems())}"
                for r in rows if r.problems()]
    assert not problems, "\n".join(problems)
    assert all(r.registers > 0 and r.shared_bytes > 0 for r in rows)


def test_problems_name_compile_errors_shared_memory_and_spills():
    row = Row("fwd", "sm_80", "fp16", 128, 128, 128, 8, 3, shared_bytes=166_912, registers=255, spill_bytes=0)
    assert row.problems() == []
    assert "shared memory 166,913 B > 166,912 B" in Row(**{**vars(row), "shared_bytes": 166_913}).problems()[0]
    assert "spills 64 B" in Row(**{**vars(row), "spill_bytes": 64}).problems()[0]
    assert Row(**{**vars(row), "target": "sm_90", "shared_bytes": 200_000}).problems() == []
    assert Row(**{**vars(row), "error": "PTXASError: boom"}).problems() == ["compile error: PTXASError: boom"]
