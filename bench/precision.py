"""The dtype axis in torch terms: fp32 runs as is, fp16 and bf16 under autocast."""

from __future__ import annotations

import contextlib

import torch

TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def autocast(device: str, dtype: str):
    if dtype == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device, dtype=TORCH_DTYPES[dtype])
