"""Where a cell's time goes: a stopwatch that attributes every second to the current phase (switch with
`phase("train")`; the next switch ends it), so the phases add up to the cell's whole task time.

Phases: setup (model, optimizer, FLOP count, compilation), data (reading and decoding a dataset), train (the
timed region: training steps, or a throughput cell's timed repeats), eval (validation and the final test), write
(checkpoints, curves, figures). startup (from the runner's launch to the task's start) is measured by the cell
entry, and the cell's wall time by the runner.
"""

from __future__ import annotations

import time
from collections import defaultdict

PHASES = ("startup", "data", "setup", "train", "eval", "write")


class Stopwatch:
    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)
        self.current: str | None = None
        self.since = 0.0

    def start(self, name: str = "setup") -> None:
        self.seconds.clear()
        self.current, self.since = name, time.perf_counter()

    def switch(self, name: str) -> str | None:
        """Attribute the time since the last switch to the current phase and enter `name`; returns the phase
        left (to switch back to)."""
        now = time.perf_counter()
        left = self.current
        if left is not None:
            self.seconds[left] += now - self.since
        self.current, self.since = name, now
        return left

    def stop(self) -> dict[str, float]:
        self.switch(None)  # type: ignore[arg-type]
        return dict(self.seconds)


STOPWATCH = Stopwatch()  # the cell process's


def phase(name: str) -> str | None:
    return STOPWATCH.switch(name)


def phase_split(cells) -> dict[str, float]:
    """Where the cells' time went, summed over `cells` (a frame, one row per cell, with cell_wall_s and a
    <phase>_s column per phase): {"wall": their wall time, one entry per phase, "other": the wall time no phase
    holds (process start and reaping, recording: the runner's own share), never below 0}."""
    wall = float(cells["cell_wall_s"].sum())
    parts = {name: float(cells[f"{name}_s"].sum()) for name in PHASES}
    return {"wall": wall, **parts, "other": max(0.0, wall - sum(parts.values()))}
