"""The task registry: each task is a pure function `run(spec, ctx) -> rows` in its own module, with the axes it reads
(`reads`, declared at the top of its module: every other axis must stay at its default), the cross-axis rules its
cells must satisfy (`rules`; Task.check applies both, for the suite validator), how it shares a device (kind),
when it runs (stage) and which checkpoints it writes or reads (bench/tasks/common.py: Task).

AXIS_CHECKS gathers every registry's check of the values an axis may take (a model the model table can build, a
dataset the dataset table knows, a task of this registry, ...); the suite layer applies them, so the cell spec
(bench/spec.py) depends on no registry.
"""

from __future__ import annotations

from .. import data, models, training
from ..spec import choice
from . import attention, latency, mae, robustness, rollout, supervised, throughput
from .common import Task

TASKS: dict[str, Task] = {task.name: task for task in (*throughput.TASKS, *latency.TASKS, *attention.TASKS,
                                                        *supervised.TASKS, *mae.TASKS, *rollout.TASKS,
                                                        *robustness.TASKS)}
AXIS_CHECKS = {"task": choice(*TASKS), **models.AXIS_CHECKS, **data.AXIS_CHECKS, **training.AXIS_CHECKS,
               **supervised.AXIS_CHECKS, **mae.AXIS_CHECKS, **robustness.AXIS_CHECKS}


def describe_tasks() -> str:
    return "\n".join(f"  {t.name:<13} {t.kind:<11} {t.help}" for t in TASKS.values())
