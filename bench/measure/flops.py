"""FLOPs with torch.utils.flop_counter, and the dense peak of known GPUs for MFU."""

from __future__ import annotations

import torch
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

_CPU_SDPA = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
if _CPU_SDPA not in flop_counter.flop_registry:  # torch counts the CUDA SDPA kernels but not the CPU one

    @flop_counter.register_flop_formula(_CPU_SDPA)
    def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)


# Dense (no sparsity) tensor-core peaks in TFLOP/s from the vendors' data sheets; fp32 means TF32 matmuls.
PEAK_TFLOPS = {
    "H200": {"bf16": 989.4, "fp16": 989.4, "fp32": 494.7},
    "H100 NVL": {"bf16": 835.0, "fp16": 835.0, "fp32": 417.5},
    "H100 PCIe": {"bf16": 756.0, "fp16": 756.0, "fp32": 378.0},
    "H100": {"bf16": 989.4, "fp16": 989.4, "fp32": 494.7},  # SXM
    "A100": {"bf16": 312.0, "fp16": 312.0, "fp32": 156.0},
    "L4": {"bf16": 121.0, "fp16": 121.0, "fp32": 60.0},
}


def peak_tflops(gpu_name: str, dtype: str) -> float | None:
    for key, peaks in PEAK_TFLOPS.items():  # most specific names first
        if key in gpu_name:
            return peaks.get(dtype)
    return None


def forward_flops(model: torch.nn.Module, example: torch.Tensor) -> float:
    """FLOPs of one forward pass on `example` (a multiply-add counts 2)."""
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(example)
    return float(counter.get_total_flops())
