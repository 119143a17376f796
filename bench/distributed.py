"""Data-parallel training inside one accuracy cell (`nproc: N`): N processes launched as torchrun launches them
(torch.distributed's elastic launcher, one node), NCCL on GPUs (a GPU per rank), gloo on CPUs (the cores split
between the ranks). Every rank draws the same shuffled order; each step takes one global batch of
batch_size x N images and every rank trains on its 1/N of it; DistributedDataParallel averages the gradients,
so a step equals a single process's step on the whole global batch (the learning rate scales with it). Every
rank validates on the whole validation split, so all agree on the best checkpoint and on early stopping;
rank 0 alone writes rows, curves and checkpoints."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Callable

import torch
import torch.distributed as dist

from .lifetime import die_with_parent
from .paths import CellContext
from .spec import CellSpec


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def shard(self, batch: torch.Tensor) -> torch.Tensor:
        """This rank's part of a global batch of indices."""
        return batch[self.rank::self.world]

    def total(self, value: torch.Tensor) -> torch.Tensor:
        """The sum over ranks (in place)."""
        if self.world > 1:
            dist.all_reduce(value, op=dist.ReduceOp.SUM)
        return value

    def wrap(self, model: torch.nn.Module, device: str) -> torch.nn.Module:
        if self.world == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[torch.cuda.current_device()] if device == "cuda" else None)


Train = Callable[[CellSpec, CellContext, Ranks], "list[dict] | None"]  # rows on rank 0, None elsewhere


def _rank_main(train: Train, spec_json: str, ctx_json: str):
    """One rank (a process the launcher started): join the group, train, leave."""
    die_with_parent()  # with its cell, whatever ends it
    spec, ctx = CellSpec.from_json(spec_json), CellContext.from_dict(json.loads(ctx_json))
    ranks = Ranks(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]))
    if spec.device == "cuda":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    else:
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // ranks.world))
    dist.init_process_group("nccl" if spec.device == "cuda" else "gloo")
    try:
        return train(spec, ctx, ranks)
    finally:
        dist.destroy_process_group()


def launch(spec: CellSpec, ctx: CellContext, train: Train) -> list[dict]:
    """Run `train` (a module-level function: the launcher pickles it by name) on spec.nproc ranks; rank 0's
    rows."""
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=spec.nproc, run_id=f"vitbench-{spec.cell_id}",
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=1)
    results = elastic_launch(config, _rank_main)(train, spec.to_json(), json.dumps(ctx.to_dict()))
    return results[0]
