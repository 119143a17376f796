#!/usr/bin/env bash
# The first GPU check, in one call of a few minutes on one H100 (the device tool's machine has torch, timm,
# triton, pandas, seaborn, pytest-benchmark, but no internet: nothing is installed; the data comes from .data/,
# see ../shared/tools/gpu-prep.sh). Steps:
#   1. the GPU-only kernel tests (bf16 and fp16 at two shapes, a compiled ViT training step)
#   2. suites/gpu_check.yaml: attention kernels at two ViT shapes, ViT-B/16 (triton, sdpa) vs timm's and
#      ResNet-50, paired ratios, one Fashion-MNIST epoch of a small ViT
#   3. the report of that run, and the ratios against their targets (tools/gpu_ratios.py)
# Everything lands in results/gpu/<gpu>-<date>/ (run dir with env.json, report/), tarred into $OUT when set.
#   bash tools/gpu_run.sh --dry-run   the plan with a time estimate per step (runs anywhere, CI included)
set -uo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && python=.venv/bin/python
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 VITBENCH_DATA=${VITBENCH_DATA:-$PWD/.data}
export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-$PWD/.triton-cache} TRITON_CACHE_AUTOTUNING=1

listing=$("$python" -m bench run suites/gpu_check.yaml --dry-run --device cuda) ||
  { echo "cannot list suites/gpu_check.yaml with $python" >&2; exit 1; }
# per cell, start-up and CUDA context included: an attention kernel ~10 s, a model ~20 s, a paired cell ~30 s
attention=$(grep -c '  attention ' <<<"$listing")
paired=$(grep -c ' vs ' <<<"$listing")
models=$(( $(grep -cE '^ +[0-9]+\. ' <<<"$listing") - attention - paired ))
plan=(
  "kernel tests (GPU-only: bf16/fp16 at two shapes, compiled ViT step)|90|$python -m pytest -q -m gpu tests/test_attention_kernel.py"
  "suite gpu_check ($attention attention, $models model, $paired paired cells; autotune cached in the run dir)|$((attention * 10 + models * 20 + paired * 30))|RUN"
  "report and ratios|20|REPORT"
)

if [ "${1:-}" = "--dry-run" ]; then
  total=0
  echo "GPU check plan (estimates for one H100, compile and autotune included):"
  for step in "${plan[@]}"; do
    IFS='|' read -r name seconds _ <<<"$step"
    printf '  %-100s ~%4d s\n' "$name" "$seconds"
    total=$((total + seconds))
  done
  printf '  %-100s ~%4d s (%d min)\n' "total" "$total" "$(( (total + 59) / 60 ))"
  echo "$listing"
  exit 0
fi

gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | tr -cs 'A-Za-z0-9' '-' | sed 's/-$//')
dest=results/gpu/${gpu}-$(date +%Y%m%d-%H%M)
mkdir -p "$dest"
started=$(date +%s)
status=0
for step in "${plan[@]}"; do
  IFS='|' read -r name seconds command <<<"$step"
  echo "=== $name (estimate ~${seconds}s, $(( $(date +%s) - started ))s so far)"
  case "$command" in
    RUN) "$python" -m bench run suites/gpu_check.yaml --run-dir "$dest/run" || status=1 ;;
    REPORT) "$python" -m bench report "$dest/run" --out "$dest/report" || status=1
            "$python" tools/gpu_ratios.py "$dest/run" | tee "$dest/ratios.txt" ;;
    *) $command 2>&1 | tail -25 | tee "$dest/kernel_tests.txt"; [ "${PIPESTATUS[0]}" -eq 0 ] || status=1 ;;
  esac
done
echo "=== done in $(( $(date +%s) - started ))s: $dest"
if [ -n "${OUT:-}" ]; then
  tar -czf "$OUT/gpu_results.tgz" --exclude=checkpoints --exclude=.triton-cache --exclude=work "$dest"
  cp "$dest/ratios.txt" "$OUT/" 2>/dev/null
fi
exit $status
