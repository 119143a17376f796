"""What several tasks share: dtypes and autocast, out-of-memory detection, and the model-cell rules."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable

import torch

from ..models import attn_backends
from ..results import CellContext
from ..spec import CellSpec, SpecError


@dataclass(frozen=True)
class Task:
    """A registry entry (bench/tasks/__init__.py)."""

    name: str
    kind: str  # throughput | accuracy
    stage: int
    check: Callable[[CellSpec], CellSpec]  # cross-axis rules; returns the (normalised) spec or raises SpecError
    run: Callable[[CellSpec, CellContext], list[dict]]
    help: str


TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def autocast(device: str, dtype: str):
    if dtype == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device, dtype=TORCH_DTYPES[dtype])


def is_oom(err: BaseException) -> bool:
    text = str(err)
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in text or "can't allocate memory" in text


def check_model_cell(spec: CellSpec) -> CellSpec:
    """A model is named; its attention backend is one it accepts (set to "none" where the choice does not
    apply: CNNs, timm's models); a ViT variant's patch divides the image size."""
    if spec.model is None:
        raise SpecError(f"task {spec.task} needs a model")
    if spec.attn_shape is not None:
        raise SpecError(f"attn_shape belongs to task attention, not {spec.task}")
    backends = attn_backends(spec.model)
    if not backends:
        spec = spec.replace(attn_backend="none")
    elif spec.attn_backend not in backends:
        raise SpecError(f"attn_backend for {spec.model} must be one of {', '.join(backends)}, got "
                        f"{spec.attn_backend!r}")
    if spec.model.startswith(("vit:", "timm-vit:")):
        from vit_impl import config_from_variant

        try:
            config_from_variant(spec.model.split(":", 1)[1], img_size=spec.img_size)
        except ValueError as err:
            raise SpecError(str(err)) from None
    return spec


def reject(spec: CellSpec, *axes: str) -> None:
    """Axes that mean nothing for this task must stay at their defaults (never silently ignored)."""
    for name in axes:
        default = CellSpec.__dataclass_fields__[name].default
        if getattr(spec, name) != default:
            raise SpecError(f"{name} does not apply to task {spec.task} (got {spec.column_value(name)!r})")
