"""The task registry crossed with the axes: every task refuses each grid axis it does not declare (bench/tasks/
common.py: Reads) and accepts a valid non-default value of each one it does, through the suite's checks of a value
(bench/suite.py: axis_check) and the task's Task.check."""

from __future__ import annotations

import pytest

from bench.spec import AXES, GRID_AXES, CellSpec, SpecError
from bench.suite import axis_check
from bench.tasks import TASKS
from bench.tasks.common import reads

TRAINING = {"model": "vit:Mu/7", "img_size": 28, "dataset": "fashion-mnist", "budget": {"epochs": 1}}
BASE = {  # a valid cell of each task, as a suite's grid writes it
    "infer": {"model": "vit:Mu/7", "img_size": 28},
    "train": {"model": "vit:Mu/7", "img_size": 28},
    "latency": {"model": "vit:Mu/7", "img_size": 28},
    "attention": {"attn_shape": [2, 3, 50, 64]},
    "pretrain": TRAINING,
    "train_eval": TRAINING,
    "finetune": {**TRAINING, "init": "fashion-mnist:0-4"},
    "linear_probe": {**TRAINING, "init": "fashion-mnist:0-4"},
    "pretrain_mae": TRAINING,
    "rollout": {"model": "vit:Mu/7", "img_size": 28, "dataset": "fashion-mnist"},
    "robustness": {"model": "vit:Mu/7", "img_size": 28, "dataset": "fashion-mnist"},
}
EXAMPLES = {  # a non-default value of each grid axis (but task) that every task reading it accepts on its BASE cell
    "model": "vit:Mu/4",
    "batch_size": 8,
    "img_size": 56,
    "dtype": "bf16",
    "attn_backend": "math",
    "compile": True,
    "engine": "onnxruntime",
    "dataset": "cifar10",
    "train_size": 500,
    "seed": 3,
    "in_chans": 1,
    "num_classes": 10,
    "attn_shape": [1, 2, 17, 32],
    "budget": {"epochs": 2},
    "recipe": {"lr": 0.001},
    "init": "mae:fashion-mnist",
    "mae": {"mask_ratio": 0.5},
    "pool": "mean",
    "nproc": 2,
    "compare_to": {"attn_backend": "math"},
    "calls": 50,
    "robustness": {"corruptions": ["rotate"], "severities": [1, 3]},
}
CROSSED = [axis for axis in GRID_AXES if axis != "task"]  # the task axis picks the task


def spec_with(task: str, **values) -> CellSpec:
    """The task's BASE cell with `values`, each through the suite's whole check of its axis."""
    cell = {"task": task, **BASE[task], **values}
    return CellSpec(**{axis: axis_check(axis)(value) for axis, value in cell.items()})


def test_every_task_has_a_base_cell_and_every_axis_an_example():
    assert set(BASE) == set(TASKS), "give each task a valid cell in BASE"
    assert set(EXAMPLES) == set(CROSSED), "give each grid axis a non-default value in EXAMPLES"
    for axis, value in EXAMPLES.items():
        assert axis_check(axis)(value) != AXES[axis].default, axis


@pytest.mark.parametrize("task", TASKS)
def test_base_cells_are_valid(task):
    TASKS[task].check(spec_with(task))


@pytest.mark.parametrize("axis", CROSSED)
@pytest.mark.parametrize("task", TASKS)
def test_a_task_refuses_every_axis_it_does_not_read_and_keeps_every_one_it_does(task, axis):
    declared = TASKS[task].reads
    spec = spec_with(task, **{axis: EXAMPLES[axis]})
    if axis not in declared.axes:
        with pytest.raises(SpecError, match=rf"^{axis} does not apply to task {task} \(got .+\)$"):
            TASKS[task].check(spec)
        return
    assert axis not in declared.values or getattr(spec, axis) in declared.values[axis]
    assert getattr(TASKS[task].check(spec), axis) == getattr(spec, axis)  # read, not dropped or reset


def test_a_task_accepts_only_the_values_it_declares():
    assert "none" not in TASKS["attention"].reads.values["attn_backend"]
    with pytest.raises(SpecError, match="^attn_backend for task attention must be one of triton, .*, got 'none'$"):
        TASKS["attention"].check(spec_with("attention", attn_backend="none"))


def test_a_declaration_names_grid_axes_only():
    with pytest.raises(ValueError, match="not grid axes of the cell spec: device, modle"):
        reads("modle", "device")


@pytest.mark.parametrize("task", [name for name, entry in TASKS.items() if entry.reads_checkpoint(
    CellSpec(task=name, **{**BASE[name], "budget": None})) is not None])
def test_every_task_that_reads_a_checkpoint_says_why_it_is_absent(tmp_path, task):
    """No cell of the run, a cell that kept no checkpoint, an init file that is gone: each a FileNotFoundError
    naming what is missing and what to do (bench/tasks/common.py: checkpoint_file)."""
    from bench.paths import CellContext
    from bench.tasks.common import checkpoint_file

    spec = CellSpec(task=task, **{**BASE[task], "budget": None})
    ref, ctx = TASKS[task].reads_checkpoint(spec), CellContext("s", "r", tmp_path)
    with pytest.raises(FileNotFoundError, match="this run has no such cell"):
        checkpoint_file(spec, ctx, ref)
    with pytest.raises(FileNotFoundError, match=r"checkpoints/0123456789ab.pt is missing: the .* cell on .* has not "
                                                r"run in this run dir"):
        checkpoint_file(spec.replace(init_cell="0123456789ab"), ctx, ref)
    ctx.paths.cells_dir.mkdir()
    ctx.paths.cell_record("0123456789ab").write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"cells/0123456789ab.json\) finished without keeping one: it failed "
                                                r"\(run again with --retry-failed\) or had no reader then"):
        checkpoint_file(spec.replace(init_cell="0123456789ab"), ctx, ref)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "0123456789ab.pt").write_bytes(b"")
    assert checkpoint_file(spec.replace(init_cell="0123456789ab"), ctx, ref) == ctx.paths.checkpoint("0123456789ab")
    with pytest.raises(FileNotFoundError, match="init checkpoint .*gone.pt does not exist"):
        checkpoint_file(spec.replace(init=f"file:{tmp_path / 'gone.pt'}"), ctx, None)
