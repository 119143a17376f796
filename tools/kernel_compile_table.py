"""Compile the attention kernels' autotune configurations, and the candidates pruned from them, for sm_90 and
sm_80 without a GPU; write results/kernel_compile/compile_table.csv and its README.md. The kept ones must be
clean with this Triton (3.8) and with the GPU machine's 3.6: tools/gpu_stack_check.sh runs this with that one.

    env -u TRITON_INTERPRET python tools/kernel_compile_table.py     (~6 minutes on 2 cores; seconds cached)
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from pathlib import Path

import pandas as pd
import triton

from vit_impl.kernels.compile_check import KERNELS, TARGETS, Row, compile_rows, planned_rows

# Candidates tried beside the kept tiles (BLOCK_M, BLOCK_N, num_warps, num_stages): the Triton tutorial's and
# FlashAttention-2's usual tiles and their neighbours.
CANDIDATES = {
    "fwd": [(128, 64, 4, 3), (128, 64, 4, 4), (128, 32, 4, 4), (128, 128, 8, 3), (128, 128, 8, 2), (64, 128, 4, 3),
            (128, 64, 8, 4), (64, 128, 8, 3), (64, 64, 4, 4), (64, 32, 4, 4)],
    "bwd_dkdv": [(32, 128, 4, 5), (32, 128, 8, 5), (32, 128, 8, 4), (32, 128, 8, 3), (64, 128, 8, 3),
                 (16, 128, 4, 5), (64, 64, 4, 3), (16, 128, 8, 5), (32, 64, 4, 5), (64, 64, 8, 3), (64, 64, 8, 2)],
    "bwd_dq": [(128, 32, 4, 5), (128, 16, 4, 5), (128, 64, 8, 3), (128, 64, 8, 2), (64, 64, 4, 3), (64, 16, 4, 5),
               (128, 32, 8, 5), (64, 64, 8, 3), (64, 32, 4, 4)],
}
OUT = Path(__file__).resolve().parents[1] / "results" / "kernel_compile"


def _cell(rows: pd.DataFrame) -> str:
    """'shared KiB / registers / spilled B', the worse of fp16 and bf16."""
    return f"{rows.shared_bytes.max() / 1024:.0f} KiB / {rows.registers.max()} / {rows.spill_bytes.max()}"


def _why(rows: pd.DataFrame) -> str:
    """'spills on sm_80 D=128, sm_90 D=128': each kind of problem (spills, shared memory, compile error) and where."""
    places: dict[str, set[tuple[str, int]]] = {}
    for r in rows.itertuples():
        for problem in r.problems:
            places.setdefault(re.match(r"[a-z ]+", problem).group().strip(), set()).add((r.target, r.head_dim))
    return "; ".join(f"{kind} on {', '.join(f'{t} D={d}' for t, d in sorted(where))}" for kind, where in places.items())


def _table(frame: pd.DataFrame, why: bool = False) -> str:
    lines = []
    for (kernel, config), rows in frame.groupby(["kernel", "config"], sort=False):
        line = {"kernel": kernel, "config": config}
        line.update({f"{t} D={d}": _cell(rows[(rows.target == t) & (rows.head_dim == d)])
                     for t in TARGETS for d in sorted(rows.head_dim.unique())})
        if why:
            line["pruned because"] = _why(rows)
        lines.append(line)
    return pd.DataFrame(lines).to_markdown(index=False) if lines else "(none)"


def readme(frame: pd.DataFrame) -> str:
    kept, pruned, spare = (frame[frame.status == s] for s in ("kept", "pruned", "spare"))
    limits = ", ".join(f"{t} {limit:,} B" for t, (_, limit) in TARGETS.items())
    largest = ", ".join(f"{t} {frame[frame.target == t].shared_bytes.max():,} B" for t in TARGETS)
    per_kernel = kept.groupby("kernel").config.nunique().max()
    return f"""# Attention kernels compiled for sm_90 and sm_80 without a GPU

`python tools/kernel_compile_table.py` (Triton {triton.__version__}, its bundled ptxas
{triton.knobs.nvidia.ptxas.version}) compiles each configuration of the forward, dK/dV and dQ kernels with
`triton.compile(..., target=GPUTarget("cuda", 90 or 80, 32))`, in fp16 and bf16 at head dims 64 and 128, with
the argument types and 16-divisibility a ViT launch gives (aligned tensors, i32 strides that are multiples
of 16); `tests/test_kernel_compile.py` checks the kept ones in CI. (The delta kernel of the backward has one
fixed configuration and is not autotuned; it is not in this table.)

Each cell: shared memory per block / registers per thread / bytes spilled to local memory per thread, the
worse of fp16 and bf16 (`compile_table.csv` has every row). Shared memory is Triton's dynamic allocation plus
the cubin's static shared memory; registers and local memory (ptxas's stack frame, which the driver reports
as the local size behind Triton's n_spills) come from the bundled `cuobjdump -res-usage`. Shared memory
limits (opt-in, per block): {limits}.

Configurations are BLOCK_M x BLOCK_N (query x key tile), num_warps w, num_stages s. dK/dV runs a program per
key tile and loops over query tiles; the forward and dQ the other way round.

## Kept: the autotune configurations (the first of each kernel is the fixed one)

{_table(kept)}

## Pruned: spill registers (or break a limit) on at least one target, dtype and head dim

Largest shared memory of any configuration tried: {largest}.

{_table(pruned, why=True)}

## Clean but not kept

Within limits and without spills with this Triton, left out to keep autotuning (and the CI compile check) to
{per_kernel} configurations per kernel, or because they spill with the GPU machine's Triton 3.6
(`tools/gpu_stack_check.sh` builds this table with it; a kept configuration must be clean with both).

{_table(spare)}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--kept-only", action="store_true", help="no candidates: ~1 of the ~6 minutes, for CI")
    args = parser.parse_args()
    kept = {name: tiles for name, (_, tiles) in KERNELS.items()}
    candidates = {} if args.kept_only else CANDIDATES
    rows = compile_rows(planned_rows({name: kept[name] + candidates.get(name, []) for name in KERNELS}))
    frame = pd.DataFrame([{**dataclasses.asdict(r), "config": r.config, "problems": r.problems(),
                           "kept": (r.block_m, r.block_n, r.num_warps, r.num_stages) in kept[r.kernel]}
                          for r in rows])
    flagged = frame.groupby(["kernel", "config"]).problems.transform(lambda ps: any(len(p) for p in ps))
    frame["status"] = ["kept" if k else "pruned" if f else "spare" for k, f in zip(frame.kept, flagged)]
    args.out.mkdir(parents=True, exist_ok=True)
    columns = [f.name for f in dataclasses.fields(Row)] + ["status"]
    frame[columns].sort_values(["kernel", "status", "block_m", "block_n", "num_warps", "num_stages"]).to_csv(
        args.out / "compile_table.csv", index=False)
    (args.out / "README.md").write_text(readme(frame))
    bad = frame[(frame.status == "kept") & frame.problems.map(len).astype(bool)]
    if len(bad):
        raise SystemExit(f"kept configurations with problems:\n{bad.to_string()}")


if __name__ == "__main__":
    main()
