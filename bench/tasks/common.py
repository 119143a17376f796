"""What every task shares: its registry entry (Task), the declaration of the axes it reads (Reads), the checkpoint a
task reads, out-of-memory detection, and the model-cell rules."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import torch

from ..models import attn_backends, vit_variant
from ..paths import CellContext
from ..spec import AXES, GRID_AXES, CellSpec, SpecError

EVERY_TASK = ("task", "seed")  # the grid axes every task reads; the fields outside the grid are the suite's to set
MODEL_CELL = ("model", "batch_size", "img_size", "dtype", "attn_backend", "dataset")  # a model on inputs of a shape


@dataclass(frozen=True)
class Reads:
    """A task's declaration: the grid axes it reads (EVERY_TASK included), and for an axis whose values it
    restricts to a fixed set, that set. Task.check refuses every other grid axis set to a value other than its
    default, so an axis a task does not read is refused, never silently ignored."""

    axes: frozenset[str]
    values: Mapping[str, tuple[str, ...]]

    def refuse_others(self, spec: CellSpec) -> None:
        for name in GRID_AXES:
            value = getattr(spec, name)
            if name not in self.axes and value != AXES[name].default:
                raise SpecError(f"{name} does not apply to task {spec.task} (got {spec.column_value(name)!r})")
            if name in self.values and value not in self.values[name]:
                raise SpecError(f"{name} for task {spec.task} must be one of {', '.join(self.values[name])}, got "
                                f"{value!r}")


def reads(*axes: str, **values: tuple[str, ...]) -> Reads:
    """reads("model", ..., attn_backend=(...)): the axes a task reads besides EVERY_TASK, a keyword restricting its
    axis to the values given. A name that is no grid axis fails at import, when the registry is built."""
    unknown = sorted((set(axes) | set(values)) - set(GRID_AXES))
    if unknown:
        raise ValueError(f"not grid axes of the cell spec: {', '.join(unknown)}")
    return Reads(frozenset((*EVERY_TASK, *axes, *values)), values)


@dataclass(frozen=True)
class CheckpointRef:
    """The checkpoint a cell reads: that of the one cell of this run whose task is one of `tasks`, on `dataset`,
    with the reader's values of the axes `same` (the suite resolves it to that cell's id, spec.init_cell, and marks
    that cell keep_checkpoint)."""

    tasks: tuple[str, ...]
    dataset: str
    same: tuple[str, ...] = ("model", "img_size", "seed")


def checkpoint_file(spec: CellSpec, ctx: CellContext, ref: CheckpointRef | None) -> Path:
    """The checkpoint a reading cell loads: that of the cell of this run `ref` names (spec.init_cell, as the suite
    resolved it), or init's file:<path> where ref is None; FileNotFoundError saying why it is absent."""
    if ref is None:
        path = Path(spec.init.removeprefix("file:"))
        if not path.is_file():
            raise FileNotFoundError(f"init checkpoint {path} does not exist")
        return path
    writer = f"the {' or '.join(ref.tasks)} cell on {ref.dataset} with this cell's {', '.join(ref.same)}"
    if not spec.init_cell:
        raise FileNotFoundError(f"task {spec.task} reads the checkpoint of {writer}, and this run has no such cell")
    path, record = ctx.paths.checkpoint(spec.init_cell), ctx.paths.cell_record(spec.init_cell)
    if path.is_file():
        return path
    if record.is_file():
        raise FileNotFoundError(f"checkpoint {path} is missing: {writer} ({record}) finished without keeping one: "
                                "it failed (run again with --retry-failed) or had no reader then (delete its record to "
                                "run it again)")
    raise FileNotFoundError(f"checkpoint {path} is missing: {writer} ({spec.init_cell}) has not run in this run dir "
                            "(python -m bench run SUITE --run-dir runs a suite's checkpoint writers first)")


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
    reads: Reads  # the axes it reads; every other one stays at its default
    rules: Callable[[CellSpec], CellSpec]  # cross-axis rules; returns the (normalised) spec or raises SpecError
    run: Callable[[CellSpec, CellContext], list[dict]]
    help: str
    reads_checkpoint: Callable[[CellSpec], CheckpointRef | None] = reads_nothing
    # the images a cell's train_size draws from, known without loading the data (a larger train_size gets them all);
    # None: the task takes no training subset
    train_pool: Callable[[CellSpec], int | None] = no_subset
    method_version: int = 1  # bump when a change alters what the task's numbers mean: compare refuses to pair them

    def check(self, spec: CellSpec) -> CellSpec:
        """The spec as this task runs it (normalised), or SpecError: an axis it does not read, or a broken rule."""
        self.reads.refuse_others(spec)
        return self.rules(spec)


def is_oom(err: BaseException) -> bool:
    text = str(err)
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in text or "can't allocate memory" in text


def check_model_cell(spec: CellSpec) -> CellSpec:
    """A model is named; its attention backend is one it accepts (set to "none" where the choice does not
    apply: CNNs, timm's models); a ViT variant's patch divides the image size."""
    if spec.model is None:
        raise SpecError(f"task {spec.task} needs a model")
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
