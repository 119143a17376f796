"""The layout of a run directory, in one place: every path inside a run dir is built here, and a cell reaches
its run dir only through `CellContext.paths`.

results/<suite>/<run-id>/
  .lock                     held (flock) by the one runner using the dir; holds that runner's pid
  env.json                  environment of the first invocation, later ones under "resumed"
  cells/<cell_id>.json      a finished cell's spec and rows (atomic): the durable record
  results.csv               derived from cells/ after every cell (atomic); rebuilt whenever the dir is opened
  logs/<cell_id>.log        the cell process's output
  work/                     a running cell's job and rows files (transient)
  curves/<cell_id>.json     training curves
  artifacts/<cell_id>/      figures a task drew and their data
  checkpoints/<cell_id>.pt  weights a pretraining cell wrote, keyed by its cell id (git-ignored)
  report/                   the report of this run alone (bench run --report; bench report's default)
  .cache/                   Triton's and torch.compile's caches and exported models of this run (git-ignored)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunPaths:
    root: Path

    @property
    def lock(self) -> Path:
        return self.root / ".lock"

    @property
    def write_test(self) -> Path:
        """A file the runner creates and removes to learn whether it may write here."""
        return self.root / f".write-test-{os.getpid()}"

    @property
    def env_json(self) -> Path:
        return self.root / "env.json"

    @property
    def cells_dir(self) -> Path:
        return self.root / "cells"

    def cell_record(self, cell_id: str) -> Path:
        return self.cells_dir / f"{cell_id}.json"

    @property
    def results_csv(self) -> Path:
        return self.root / "results.csv"

    def log(self, cell_id: str) -> Path:
        return self.root / "logs" / f"{cell_id}.log"

    def job(self, cell_id: str) -> Path:
        return self.root / "work" / f"{cell_id}.job.json"

    def rows(self, cell_id: str) -> Path:
        return self.root / "work" / f"{cell_id}.rows.json"

    @property
    def curves_dir(self) -> Path:
        return self.root / "curves"

    def curve(self, cell_id: str) -> Path:
        return self.curves_dir / f"{cell_id}.json"

    def artifact(self, cell_id: str, name: str) -> Path:
        return self.root / "artifacts" / cell_id / name

    def relative(self, path: Path) -> str:
        """A path inside the run dir as the rows record it (relative, so a copied run dir still resolves)."""
        return str(path.relative_to(self.root))

    def inside(self, relative: str) -> Path:
        """The inverse of `relative`, refusing anything that would leave the run dir (a file handed back by a
        remote cell, or named in a row)."""
        path = (self.root / relative).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise ValueError(f"{relative!r} is not a path inside the run dir {self.root}")
        return path

    def checkpoint(self, cell_id: str) -> Path:
        return self.root / "checkpoints" / f"{cell_id}.pt"

    @property
    def report_dir(self) -> Path:
        """Where `bench run --report` and `bench report RUN_DIR` write the report by default."""
        return self.root / "report"

    @property
    def cache_dir(self) -> Path:
        return self.root / ".cache"

    SHIPPED = ("curves", "artifacts", "checkpoints", "logs")  # what a remote cell hands back to the driver


@dataclass(frozen=True)
class CellContext:
    """What a cell needs beyond its spec: where it writes and how it is placed."""

    suite: str
    run_id: str
    run_dir: Path
    concurrency: int = 1
    placement: str = "local"

    @property
    def paths(self) -> RunPaths:
        return RunPaths(Path(self.run_dir))

    def to_dict(self) -> dict:
        return {"suite": self.suite, "run_id": self.run_id, "run_dir": str(self.run_dir),
                "concurrency": self.concurrency, "placement": self.placement}

    @classmethod
    def from_dict(cls, data: dict) -> "CellContext":
        return cls(**{**data, "run_dir": Path(data["run_dir"])})
