"""The task registry: each task is a pure function `run(spec, ctx) -> rows` in its own module, with the
cross-axis rules its cells must satisfy (`check`, used by the suite validator) and how it shares a device.

  kind "throughput"  the cell has its device to itself (timing, memory)
  kind "accuracy"    small training cells may share a device (`concurrency` in the suite)
  stage              cells of a lower stage run first (pretraining writes the checkpoints fine-tuning reads)
"""

from __future__ import annotations

from . import accuracy, attention, mae, rollout, throughput
from .common import Task

TASKS: dict[str, Task] = {task.name: task for task in (*throughput.TASKS, *attention.TASKS, *accuracy.TASKS,
                                                        *mae.TASKS, *rollout.TASKS)}


def describe_tasks() -> str:
    return "\n".join(f"  {t.name:<13} {t.kind:<11} {t.help}" for t in TASKS.values())
