"""What every task shares: its registry entry (Task), the checkpoint a task reads, out-of-memory detection, and
the model-cell rules."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..models import attn_backends, vit_variant
from ..paths import CellContext
from ..spec import CellSpec, SpecError


@dataclass(frozen=True)
class CheckpointRef:
    """The checkpoint a cell reads: that of this run's `task` cell on `dataset` with the reader's model, image
    size and seed (the suite resolves it to that cell's id, spec.init_cell)."""

    task: str
    dataset: str


def reads_nothing(spec: CellSpec) -> CheckpointRef | None:
    return None


def no_subset(spec: CellSpec) -> int | None:
    return None


@dataclass(frozen=True)
class Task:
    """A registry entry (bench/tasks/__init__.py): everything the suite, the runner and the executors need to know
    about a task, so that none of them branches on a task's name."""

    name: str
    kind: str  # throughput (the device to itself) | accuracy (may share a device)
    stage: int  # cells of a lower stage run first (pretraining writes the checkpoints fine-tuning reads)
    check: Callable[[CellSpec], CellSpec]  # cross-axis rules; returns the (normalised) spec or raises SpecError
    run: Callable[[CellSpec, CellContext], list[dict]]
    help: str
    reads_checkpoint: Callable[[CellSpec], CheckpointRef | None] = reads_nothing
    # the images a cell's train_size draws from, known without loading the data (a larger train_size gets them all);
    # None: the task takes no training subset
    train_pool: Callable[[CellSpec], int | None] = no_subset
    method_version: int = 1  # bump when a change alters what the task's numbers mean: compare refuses to pair them


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
    variant = vit_variant(spec.model)
    if variant is not None:
        from vit_impl import config_from_variant

        try:
            config_from_variant(variant, img_size=spec.img_size)
        except ValueError as err:
            raise SpecError(str(err)) from None
    return spec


def reject(spec: CellSpec, *axes: str) -> None:
    """Axes that mean nothing for this task must stay at their defaults (never silently ignored)."""
    for name in axes:
        default = CellSpec.__dataclass_fields__[name].default
        if getattr(spec, name) != default:
            raise SpecError(f"{name} does not apply to task {spec.task} (got {spec.column_value(name)!r})")
