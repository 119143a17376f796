#!/usr/bin/env bash
# The GPU machine's fixed stack (Python 3.12, torch 2.11.0, triton 3.6.0, torchvision 0.26.0; no internet, code
# run with PYTHONPATH=.) checked on a CPU: makes .venv-gpustack if missing (pip only for missing or mismatched
# packages; the project is not installed, its pyproject pins torch 2.14.1), then runs the interpreter kernel tests
# (tracing tests included), the sm_90/sm_80 compile table and test with Triton 3.6's ptxas, and the GPU run's dry
# run. Prints a summary (full logs in a temp folder); exits non-zero if any check fails.
#   bash tools/gpu_stack_check.sh [--kept-only]   (the table without its candidates: for CI, minutes less cold)
#   GPUSTACK_PYTHON: the Python for a new venv (default: 3.12 where found)
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv-gpustack
py=$venv/bin/python
# numpy<2.4: Triton 3.6's interpreter takes int() of 1-element arrays, an error from numpy 2.4 on (3.8 squeezes first)
packages=(torch==2.11.0 torchvision==0.26.0 triton==3.6.0 "numpy<2.4" timm pandas seaborn matplotlib scipy pyyaml
          tabulate pytest pytest-benchmark nvidia-ml-py)
logs=$(mktemp -d "${TMPDIR:-/tmp}/gpu_stack_check.XXXXXX")
started=$(date +%s)

if [ ! -x "$py" ]; then
  python=${GPUSTACK_PYTHON:-}
  for candidate in python3.12 "$(pyenv root 2>/dev/null)"/versions/3.12*/bin/python3 python3; do
    [ -z "$python" ] && "$candidate" -c '' 2>/dev/null && python=$candidate
  done
  "$python" -m venv "$venv"
fi
if ! "$py" - "${packages[@]}" 2>/dev/null <<'EOF'; then
import importlib.metadata as md, sys
from packaging.requirements import Requirement
for req in map(Requirement, sys.argv[1:]):
    assert req.specifier.contains(md.version(req.name)), req
EOF
  echo "installing the GPU stack into $venv (about 2 GB of wheels)"
  "$py" -m pip install -q --disable-pip-version-check "${packages[@]}" >"$logs/pip.log" 2>&1 ||
    { tail -20 "$logs/pip.log"; exit 1; }
fi
export PYTHONPATH=$PWD  # only now: pip would take the checkout's vitbench.egg-info for an installed vitbench
"$py" -c 'import platform, timm, torch, torchvision, triton
print(f"stack: Python {platform.python_version()}, torch {torch.__version__}, torchvision {torchvision.__version__}, "
      f"triton {triton.__version__}, timm {timm.__version__}")'
echo "venv ready in $(( $(date +%s) - started ))s"

failed=0
check() {  # check NAME COMMAND...: its output to $logs/NAME.log, one line here (with pytest's counts)
  local t0 status=0
  t0=$(date +%s)
  "${@:2}" >"$logs/$1.log" 2>&1 || status=$?
  [ "$status" -eq 0 ] || failed=1
  printf '%-13s %-4s %4ds %s\n' "$1" "$([ "$status" -eq 0 ] && echo ok || echo FAIL)" "$(( $(date +%s) - t0 ))" \
    "$(grep -E '^[0-9]+ (passed|failed).* in [0-9.]+s' "$logs/$1.log" | tail -1 | sed 's/^/ /')"
}
checks_started=$(date +%s)
check kernel-tests env TRITON_INTERPRET=1 "$py" -m pytest -q tests/test_attention_kernel.py
# the table first: it compiles the kept configurations too, so the compile test then finds them in Triton's cache
check table env -u TRITON_INTERPRET "$py" tools/kernel_compile_table.py --out "$logs/kernel_compile" "$@"
check compile-test "$py" -m pytest -q tests/test_kernel_compile.py
check dry-run env PYTHON="$py" bash tools/gpu_run.sh --dry-run
checks_took=$(( $(date +%s) - checks_started ))

if [ -s "$logs/kernel_compile/compile_table.csv" ]; then
  "$py" - "$logs/kernel_compile/compile_table.csv" <<'EOF'
import sys
import pandas as pd
import triton
from vit_impl.kernels.compile_check import TARGETS
rows = pd.read_csv(sys.argv[1], keep_default_na=False)
rows["over_shared"] = rows.shared_bytes > rows.target.map({t: limit for t, (_, limit) in TARGETS.items()})
rows["spills"], rows["errors"] = rows.spill_bytes > 0, rows.error != ""
print(f"compile table, Triton {triton.__version__} (ptxas {triton.knobs.nvidia.ptxas.version}): sm_90 and sm_80, "
      "fp16 and bf16, D=64 and 128")
for status, group in rows.groupby("status", sort=False):
    configs = group.groupby(["kernel", "block_m", "block_n", "num_warps", "num_stages"])
    counts = ", ".join(f"{configs[c].any().sum()} {c.replace('_', ' ')}" for c in ("spills", "over_shared", "errors"))
    shared = ", ".join(f"{t} {group[group.target == t].shared_bytes.max() / 1024:.0f}/{limit / 1024:.0f} KiB"
                       for t, (_, limit) in TARGETS.items())
    print(f"  {status:<6} {configs.ngroups:2d} configs ({len(group)} compiles): {counts}; largest shared {shared}")
EOF
fi
sed -n '/^GPU check plan/,/ total /p' "$logs/dry-run.log" | tr -s ' '
echo "checks $([ "$failed" -eq 0 ] && echo passed || echo FAILED) in ${checks_took}s," \
  "all in $(( $(date +%s) - started ))s; logs in $logs"
exit "$failed"
