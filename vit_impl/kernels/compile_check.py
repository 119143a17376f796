"""Compile the attention kernels for named GPUs on a machine without one: shared memory, registers and spills.

`triton.compile` builds a cubin for any `GPUTarget` with Triton's bundled ptxas; the bundled cuobjdump reads the
registers and the local memory (register spills) back. The kernels must be real `triton.jit` functions, so run
this in a process without TRITON_INTERPRET=1:  python -m vit_impl.kernels.compile_check  (prints CSV rows).
"""

from __future__ import annotations

import csv
import dataclasses
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from . import attention

# Opt-in shared memory per block (cudaDevAttrMaxSharedMemoryPerBlockOptin).
TARGETS = {"sm_90": (90, 232_448), "sm_80": (80, 166_912)}
DTYPES = ("fp16", "bf16")
HEAD_DIMS = (64, 128)
KERNELS = {  # name -> (kernel, its autotune (BLOCK_M, BLOCK_N, num_warps, num_stages) tiles)
    "fwd": (attention._fwd_kernel, attention.FWD_TILES),
    "bwd_dkdv": (attention._bwd_dkdv_kernel, attention.DKDV_TILES),
    "bwd_dq": (attention._bwd_dq_kernel, attention.DQ_TILES),
}
_SCALARS = {"H": "i32", "N": "i32", "N_BUCKET": "i32", "qk_scale": "fp32", "sm_scale": "fp32"}
_FP32_POINTERS = {"LSE", "DELTA"}


@dataclasses.dataclass
class Row:
    kernel: str
    target: str
    dtype: str
    head_dim: int
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int
    shared_bytes: int = -1  # Triton's dynamic shared memory + the cubin's static shared memory
    registers: int = -1
    spill_bytes: int = -1  # local memory per thread (ptxas's stack frame for spilled registers)
    error: str = ""

    @property
    def config(self) -> str:
        return f"{self.block_m}x{self.block_n} w{self.num_warps} s{self.num_stages}"

    def problems(self) -> list[str]:
        """Why this configuration must not be autotuned on its target (empty: fine)."""
        if self.error:
            return [f"compile error: {self.error}"]
        limit = TARGETS[self.target][1]
        found = []
        if self.shared_bytes > limit:
            found.append(f"shared memory {self.shared_bytes:,} B > {limit:,} B")
        if self.spill_bytes > 0:
            found.append(f"spills {self.spill_bytes} B of registers to local memory ({self.registers} registers)")
        return found


def _signature(kernel, dtype: str) -> tuple[dict, dict]:
    """Argument types and 16-divisibility hints as a launch from the ViT would give them: aligned tensors and
    strides that are multiples of 16 (the head dim is), i32 lengths."""
    signature, attrs = {}, {}
    for i, p in enumerate(kernel.params):
        if p.is_constexpr:
            signature[p.name] = "constexpr"
        elif p.name in _SCALARS:
            signature[p.name] = _SCALARS[p.name]
        elif p.name.startswith("stride"):
            signature[p.name] = "i32"
            attrs[(i,)] = [["tt.divisibility", 16]]
        else:  # a tensor
            signature[p.name] = "*fp32" if p.name in _FP32_POINTERS else f"*{dtype}"
            attrs[(i,)] = [["tt.divisibility", 16]]
    return signature, attrs


def _resources(cubin: bytes) -> tuple[int, int, int]:
    """(registers, static shared bytes, local bytes) of the cubin's one kernel, from `cuobjdump -res-usage`.
    Local memory is the stack frame (where ptxas spills registers) plus any other local memory; it is what the
    driver reports as a kernel's local size and Triton turns into n_spills."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([triton.knobs.nvidia.cuobjdump.path, "-res-usage", f.name], capture_output=True,
                             text=True, check=True).stdout
    usage = {key: int(n) for key, n in re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", out.split("Function", 1)[1])}
    return usage["REG"], usage["SHARED"], usage["STACK"] + usage["LOCAL"]


def compile_one(row: Row) -> Row:
    kernel = KERNELS[row.kernel][0]
    signature, attrs = _signature(kernel, row.dtype)
    constexprs = {"HEAD_DIM": row.head_dim, "BLOCK_D": attention._block_d(row.head_dim), "BLOCK_M": row.block_m,
                  "BLOCK_N": row.block_n, "PRECISION": "tf32"}
    target = GPUTarget("cuda", TARGETS[row.target][0], 32)
    try:
        compiled = triton.compile(ASTSource(kernel, signature, constexprs, attrs), target=target,
                                  options={"num_warps": row.num_warps, "num_stages": row.num_stages})
    except Exception as err:  # noqa: BLE001 - a compile error is a result here
        while err.__cause__ is not None:  # Triton wraps the root cause in one error per inlined function
            err = err.__cause__
        return dataclasses.replace(row, error=f"{type(err).__name__}: {' '.join(str(err).split())[:300]}")
    registers, static_shared, local = _resources(compiled.asm["cubin"])
    return dataclasses.replace(row, shared_bytes=compiled.metadata.shared + static_shared, registers=registers,
                               spill_bytes=local)


def planned_rows(kernels: dict[str, list[tuple[int, int, int, int]]] | None = None) -> list[Row]:
    """Every (kernel, target, dtype, head dim, tile) to compile; default: the kernels' autotune tiles."""
    kernels = kernels or {name: tiles for name, (_, tiles) in KERNELS.items()}
    return [Row(name, target, dtype, head_dim, *tile)
            for name, tiles in kernels.items() for tile in tiles
            for target in TARGETS for dtype in DTYPES for head_dim in HEAD_DIMS]


def compile_rows(rows: list[Row], workers: int | None = None) -> list[Row]:
    if attention.interpreting():
        raise RuntimeError("compile checks need real triton.jit kernels: unset TRITON_INTERPRET")
    with ProcessPoolExecutor(max_workers=workers or os.cpu_count()) as pool:
        return list(pool.map(compile_one, rows))


def write_csv(rows: list[Row], file) -> None:
    writer = csv.writer(file)
    writer.writerow([f.name for f in dataclasses.fields(Row)])
    writer.writerows(dataclasses.astuple(row) for row in rows)


if __name__ == "__main__":
    write_csv(compile_rows(planned_rows()), sys.stdout)
