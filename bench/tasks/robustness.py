"""Task `robustness`: a trained classifier evaluated on a fixed test subset under corruptions, patch drop and patch
shuffle (bench/corruptions.py), and its calibration. It trains nothing: it reads the best checkpoint of the
train_eval or pretrain cell of this run with every axis equal but the task (a finetune cell's when `init` names a
pretraining), or a vitbench checkpoint file (init: file:<path>).

The subset (ROBUST_TEST images, stratified) and every corrupted image are drawn with seeds of their own, the same
for every cell, so two runs, and two models, see the same images. Rows: robust_accuracy per condition and level
(clean; each corruption at its severities; patch drop on the grid aligned with a ViT of patch img_size / 4 and on
the grid offset by half a cell, level = the share of the image dropped; patch shuffle, level = cells per side) and
ece (clean; pooled over every corrupted image). The report derives CE and mCE against the suite's baseline CNN.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from .. import corruptions
from ..data import DeviceAugment, is_real, load_test, load_train
from ..measure.calibration import expected_calibration_error
from ..measure.phases import phase
from ..models import build_model
from ..paths import CellContext
from ..results import RowMaker
from ..spec import CellSpec, SpecError, positive_int
from ..subsets import subset_order
from ..training import eval_logits
from .common import CheckpointRef, Task, check_model_cell, checkpoint_file, reads
from .supervised import TRAINING

READS = reads(*TRAINING, "init", "robustness")  # the writer's axes (they name its checkpoint), and what to apply
ROBUST_TEST = 2000  # test images evaluated (stratified, 200 per class of Fashion-MNIST)
ROBUST_SEED = 2_000_003  # the subset's and the corruptions' seed: apart from every cell's
DROP_SHARES = tuple(i / 10 for i in range(10))  # patch drop: 0 to 90 % in 10 % steps
GRID_CELLS = 4  # occlusion cells per side: img_size / 4 px, a ViT /7's patch at 28 px


def _check_robustness(value) -> dict | None:
    """robustness: {corruptions: [names of bench/corruptions.py], severities: [1..5]}; both optional (default:
    every corruption at every severity)."""
    if value is None:
        return None
    unknown = sorted(set(value) - {"corruptions", "severities"})
    if unknown:
        raise SpecError(f"unknown robustness key(s) {unknown}; allowed: corruptions, severities")
    names = value.get("corruptions", list(corruptions.CORRUPTIONS))
    bad = [n for n in names if n not in corruptions.CORRUPTIONS] if isinstance(names, list) else [names]
    if bad or not names:
        raise SpecError(f"robustness corruptions: unknown {bad or 'empty list'}; allowed: "
                        f"{', '.join(corruptions.CORRUPTIONS)}")
    levels = value.get("severities", list(range(1, corruptions.SEVERITIES + 1)))
    if not isinstance(levels, list) or not levels or any(isinstance(s, bool) or s not in range(
            1, corruptions.SEVERITIES + 1) for s in levels):
        raise SpecError(f"robustness severities: expected a list of integers 1 to {corruptions.SEVERITIES}, got "
                        f"{levels!r}")
    return {"corruptions": sorted(set(names), key=list(corruptions.CORRUPTIONS).index),
            "severities": sorted(set(map(positive_int, levels)))}


def _saved_spec(path: Path) -> dict:
    """The spec a vitbench checkpoint file was written with (checkpoints/<cell_id>.pt)."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError) as err:
        raise SpecError(f"init {path}: not a readable checkpoint ({type(err).__name__})") from None
    if not isinstance(saved, dict) or not isinstance(saved.get("spec"), dict) or "model" not in saved:
        raise SpecError(f"init {path}: not a vitbench checkpoint (checkpoints/<cell_id>.pt of a training cell)")
    return saved["spec"]


def check(spec: CellSpec) -> CellSpec:
    spec = check_model_cell(spec)
    if not is_real(spec.dataset):
        raise SpecError("task robustness evaluates on a real dataset's test split; synthetic data has none")
    if spec.init == "timm":
        raise SpecError("task robustness evaluates a classifier of this run or file:<checkpoint>; timm's weights "
                        "have no head for this dataset (fine-tune them first: task finetune, init timm)")
    if spec.init is not None and spec.init.startswith("file:"):
        saved = _saved_spec(Path(spec.init[5:]))
        theirs = (saved.get("model"), saved.get("img_size"), saved.get("dataset"))
        if theirs != (spec.model, spec.img_size, spec.dataset):
            raise SpecError(f"init {spec.init[5:]} holds {theirs[0]} at {theirs[1]} px on {theirs[2]}; this cell "
                            f"evaluates {spec.model} at {spec.img_size} px on {spec.dataset}")
    return spec


def trained_checkpoint(spec: CellSpec) -> CheckpointRef | None:
    """The training cell of this run with this cell's axes: train_eval or pretrain, or finetune from `init`."""
    if spec.init is not None and spec.init.startswith("file:"):
        return None
    tasks = ("finetune",) if spec.init else ("train_eval", "pretrain")
    return CheckpointRef(tasks, spec.dataset, tuple(sorted(READS.axes - {"task", "robustness"})))


def conditions(spec: CellSpec, img_size: int) -> list[tuple[str, float, Callable]]:
    """(condition, level, images -> images) in the order they run; clean first."""
    chosen = spec.robustness or _check_robustness({})
    cell = img_size // GRID_CELLS
    out = [("clean", 0, lambda x: x)]
    out += [(name, severity, lambda x, n=name, s=severity: corruptions.corrupt(x, n, s, ROBUST_SEED))
            for name in chosen["corruptions"] for severity in chosen["severities"]]
    for grid, offset in (("aligned", 0), ("offset", cell // 2)):
        out += [(f"patch_drop_{grid}", share, lambda x, s=share, o=offset: corruptions.patch_drop(
            x, s, cell, o, ROBUST_SEED)) for share in DROP_SHARES]
    out += [("patch_shuffle", grid, lambda x, g=grid: corruptions.patch_shuffle(x, g, ROBUST_SEED))
            for grid in (2, GRID_CELLS, cell)]
    return out


def run(spec: CellSpec, ctx: CellContext) -> list[dict]:
    path = checkpoint_file(spec, ctx, trained_checkpoint(spec))
    phase("data")
    data = load_train(spec.dataset, spec.img_size)
    test = load_test(spec.dataset, spec.img_size)
    picks = subset_order(test.y, ROBUST_SEED)[:ROBUST_TEST]
    images, labels = test.x[picks], test.y[picks].to(spec.device)  # (n, C, H, W) uint8, (n,)
    phase("setup")
    model, info = build_model(spec.model, img_size=spec.img_size, in_chans=data.in_chans,
                              num_classes=data.num_classes, attn_backend=spec.attn_backend)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True)["model"])
    model = model.to(spec.device, memory_format=info.memory_format).eval()
    augment = DeviceAugment(data, spec.img_size)
    maker = RowMaker(spec, ctx, family=info.family, impl=info.impl, variant=info.variant, patch=info.patch,
                     params=info.params, attn_backend_used=info.attn_backend, init_used=str(path),
                     data_source=data.source, data_checksum=data.checksum)
    phase("eval")
    rows, corrupted = [], []
    for condition, level, transform in conditions(spec, images.shape[-1]):
        shown = transform(images)
        if isinstance(shown, tuple):  # patch drop: (images, the share dropped)
            shown, level = shown
        logits = eval_logits(model, shown, augment, spec.device, spec.dtype, info.memory_format)  # (n, K)
        probs = F.softmax(logits, dim=-1)
        accuracy = (probs.argmax(-1) == labels).float().mean().item()
        rows.append(maker.row("robust_accuracy", accuracy, n_repeats=1, condition=condition, level=round(level, 4)))
        if condition == "clean":
            rows.append(maker.row("ece", expected_calibration_error(probs, labels), n_repeats=1, condition="clean"))
        elif condition in corruptions.CORRUPTIONS:
            corrupted.append(probs)
    rows.append(maker.row("ece", expected_calibration_error(torch.cat(corrupted), labels.repeat(len(corrupted))),
                          n_repeats=1, condition="corrupted"))
    phase("write")
    return rows


TASKS = (Task("robustness", "accuracy", 2, READS, check, run,
              "a trained cell's checkpoint under corruptions, patch drop and shuffle; calibration (ECE)",
              reads_checkpoint=trained_checkpoint),)
AXIS_CHECKS = {"robustness": _check_robustness}
