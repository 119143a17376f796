"""Training a model under its budget with an objective: the optimizer, the shared step (augmentation,
mixed precision, gradient scaling and clipping, weight averaging, ranks), validation that pauses the clock, the
kept best weights, the training curve, checkpoints, and the final test of a classifier."""

from __future__ import annotations

import copy
import errno
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..data import DeviceAugment, TrainData, load_test
from ..distributed import Ranks
from ..measure.noise import SystemLoad, noise_columns
from ..precision import autocast
from ..results import write_atomic
from ..spec import CellSpec
from .budget import BudgetClock, run_budget, schedule_for
from .recipes import Recipe


def _layer_id(name: str, depth: int) -> int:
    """ViT parameter -> layer for layer-wise decay: embeddings 0, block i -> i + 1, the rest depth + 1."""
    if name.startswith(("patch_embed", "cls_token", "pos_embed")):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return depth + 1


def make_optimizer(model: torch.nn.Module, recipe: Recipe, lr: float, device: str) -> torch.optim.Optimizer:
    """No weight decay on biases, norms, tokens and position embeddings (parameters with < 2 dims); with
    layer_decay, one learning rate per ViT layer."""
    depth = len(getattr(model, "blocks", []))
    groups: dict[tuple[int, bool], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        layer = _layer_id(name, depth) if recipe.layer_decay and depth else depth + 1
        groups.setdefault((layer, p.ndim >= 2), []).append(p)
    params = [{"params": ps, "weight_decay": recipe.weight_decay if decay else 0.0,
               "lr_scale": (recipe.layer_decay or 1.0) ** (depth + 1 - layer)}
              for (layer, decay), ps in groups.items()]
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=(0.9, recipe.beta2), fused=device == "cuda")
    return torch.optim.SGD(params, lr=lr, momentum=recipe.momentum, nesterov=True)


def _mixer(recipe: Recipe, num_classes: int):
    """MixUp / CutMix on a normalised batch with integer labels -> (images, soft labels); None when off."""
    from torchvision.transforms import v2

    mixers = [v2.MixUp(alpha=recipe.mixup, num_classes=num_classes)] if recipe.mixup else []
    mixers += [v2.CutMix(alpha=recipe.cutmix, num_classes=num_classes)] if recipe.cutmix else []
    return v2.RandomChoice(mixers) if mixers else None


# Evaluation batches: a GPU is fastest with large ones; a CPU with cache-sized ones (10,000 Fashion-MNIST test images
# took 1.8 / 2.7 / 8.0 s at batch 250 against 2.0 / 2.8 / 13.9 s at 1,000 for ResNet-9 / ViT Mu/7 / Mu/4 here).
EVAL_BATCH = {"cuda": 1024, "cpu": 256}


@torch.inference_mode()
def eval_logits(model, x_uint8: torch.Tensor, augment: DeviceAugment, device: str, dtype: str,
                memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    """The model's logits (N, K) in fp32 on `device` for images (N, C, H, W) uint8 on any device: inference mode,
    the model's dtype and layout, the device's evaluation batch (EVAL_BATCH). The caller sets train or eval mode."""
    batch = EVAL_BATCH.get(device, 256)
    out = []
    for start in range(0, len(x_uint8), batch):
        x = augment.normalise(x_uint8[start:start + batch].to(device)).contiguous(memory_format=memory_format)
        with autocast(device, dtype):
            out.append(model(x).float())
    return torch.cat(out)


def evaluate(model, x_uint8: torch.Tensor, y: torch.Tensor, augment: DeviceAugment, device: str, dtype: str,
             memory_format: torch.memory_format = torch.contiguous_format) -> tuple[float, float]:
    """(top-1 accuracy, mean cross-entropy) of a model on a labelled split (eval mode for the call; eval_logits);
    an empty split (a dataset of under 5 images has no validation images) scores (0, 0)."""
    if len(y) == 0:
        return 0.0, 0.0
    was_training = model.training
    model.eval()
    logits = eval_logits(model, x_uint8, augment, device, dtype, memory_format)  # (N, K)
    model.train(was_training)
    target = y.to(logits.device)
    return (logits.argmax(-1) == target).sum().item() / len(target), F.cross_entropy(logits, target).item()


# ------------------------------------------------------------------------------------------ curves


def save_checkpoint(state: dict, path: Path) -> None:
    """torch.save, atomically (bench/results.py: write_atomic). torch reports a write that fails on a full device
    as a RuntimeError without an errno: that is raised as OSError(ENOSPC), so that the cell stops the run instead
    of recording an error row (bench/cell.py)."""
    try:
        write_atomic(path, lambda file: torch.save(state, file))
    except (RuntimeError, OSError) as err:
        full = shutil.disk_usage(path.parent).free < (64 << 20)
        if full and not (isinstance(err, OSError) and err.errno not in (None, errno.ENOSPC)):
            raise OSError(errno.ENOSPC, f"no space left on the device writing {path}") from err
        raise


class NonFiniteLoss(RuntimeError):
    pass


class Curve:
    """A training curve: one point per evaluation (where the budget stood, plus the task's measurements)."""

    def __init__(self, clock: BudgetClock):
        self.clock = clock
        self.points: list[dict] = []

    def add(self, optimizer: torch.optim.Optimizer, **measured: float) -> None:
        for name, value in measured.items():
            if not math.isfinite(value):
                raise NonFiniteLoss(f"non-finite {name} ({value}) by step {self.clock.steps}")
        clock = self.clock
        self.points.append({"step": clock.steps, "epoch": clock.epochs, "images_seen": clock.images_seen,
                            "seconds": clock.train_seconds, "progress": clock.fraction,
                            "lr": optimizer.param_groups[0]["lr"], **measured})

    def write(self, path: Path, **meta) -> None:
        write_atomic(path, json.dumps({**meta, "curve": self.points}, indent=1, default=str))


# ------------------------------------------------------------------------------------------ classifiers


@dataclass
class TrainResult:
    model: torch.nn.Module  # the kept weights: the best-validation ones where the objective scores, else the last
    curve: Curve
    clock: BudgetClock
    best_val: float | None  # the kept weights' validation score (None: an objective without one keeps the last)
    best_step: int
    converged: bool  # the converged protocol stopped at a validation plateau (never for the other protocols)
    stopped_early: bool  # ended by the schedule before the budget
    noise: dict  # the machine's load while training (a seconds budget buys less on a busy machine)


class Objective:
    """What a training minimises and how it is validated; the loop (train) is the same for every objective.
    loss: one batch's loss (under autocast) and per-batch sums to report as training means (e.g. correct
    predictions); validate: the curve's validation measurements and the score whose best weights are kept (higher
    is better), or None to keep the last weights."""

    def loss(self, model, x: torch.Tensor, y: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def validate(self, model) -> tuple[dict[str, float], float | None]:
        raise NotImplementedError


class Classification(Objective):
    """Cross-entropy on labelled images (label smoothing, MixUp / CutMix from the recipe); validated by top-1
    accuracy on the fixed validation images, the score that keeps the best weights."""

    def __init__(self, recipe: Recipe, data: TrainData, val_idx: torch.Tensor, augment: DeviceAugment, device: str,
                 dtype: str, memory_format: torch.memory_format):
        self.recipe, self.augment, self.device, self.dtype = recipe, augment, device, dtype
        self.memory_format = memory_format
        self.mixer = _mixer(recipe, data.num_classes)
        self.val_x, self.val_y = data.train.x[val_idx], data.train.y[val_idx]

    def loss(self, model, x, y):
        target = y
        if self.mixer is not None:
            x, target = self.mixer(x, y)
        logits = model(x)
        loss = F.cross_entropy(logits.float(), target, label_smoothing=self.recipe.label_smoothing)
        return loss, {"train_accuracy": (logits.argmax(-1) == y).sum()}

    def validate(self, model):
        val_acc, val_loss = evaluate(model, self.val_x, self.val_y, self.augment, self.device, self.dtype,
                                     self.memory_format)
        return {"val_accuracy": val_acc, "val_loss": val_loss}, val_acc


def train(model: torch.nn.Module, objective: Objective, spec: CellSpec, recipe: Recipe, data: TrainData,
          train_idx: torch.Tensor, train_flops_per_image: float, augment: DeviceAugment,
          gen: torch.Generator | None = None, memory_format: torch.memory_format = torch.contiguous_format,
          ranks: Ranks | None = None) -> TrainResult:
    """Train `model` on the images train_idx under the spec's budget: shuffled batches (each rank its share of
    every global batch), the recipe's optimizer and learning rate (scaled with the batch), gradient scaling for
    fp16, clipping, weight averaging, the schedule's evaluations (the objective validates), the kept weights.
    Never sees the test split (TrainData has none). gen: the generator of batch order, augmentation and the
    objective's draws (default: one seeded by the cell's seed)."""
    ranks = ranks or Ranks()
    device, dtype = spec.device, spec.dtype
    batch = min(spec.batch_size * ranks.world, len(train_idx))  # the global batch of one optimizer step
    lr = recipe.lr * batch / 128
    optimizer = make_optimizer(model, recipe, lr, device)
    scaler = torch.amp.GradScaler(device, enabled=dtype == "fp16")
    ema = None
    if recipe.ema:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(recipe.ema), use_buffers=True)
    evaluated = ema.module if ema is not None else model
    runnable = ranks.wrap(torch.compile(model) if spec.compile else model, device)
    gen = gen or torch.Generator(device=device).manual_seed(spec.seed)  # the same order on every rank
    clock = BudgetClock(spec.budget, len(train_idx), batch, train_flops_per_image)
    curve = Curve(clock)
    best = {"val": None, "state": None, "step": 0}
    totals: dict[str, torch.Tensor] = {"seen": torch.zeros((), device=device)}

    def step(idx: torch.Tensor) -> None:
        idx = train_idx[ranks.shard(idx)]
        x = augment.train(data.train.x[idx], gen).contiguous(memory_format=memory_format)
        y = data.train.y[idx] if data.train.y is not None else None
        with autocast(device, dtype):
            loss, sums = objective.loss(runnable, x, y)
        scaler.scale(loss).backward()
        if recipe.grad_clip:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.update_parameters(model)
        for name, value in {"train_loss": loss.detach() * len(x), **sums, "seen": len(x)}.items():
            totals[name] = totals.get(name, 0) + value

    def validate() -> float | None:
        seen = max(1.0, ranks.total(totals["seen"]).item())  # one host sync per evaluation
        means = {name: ranks.total(value).item() / seen for name, value in totals.items() if name != "seen"}
        measured, score = objective.validate(evaluated)
        curve.add(optimizer, **means, **measured)
        totals.clear()
        totals["seen"] = torch.zeros((), device=device)
        if score is not None and (best["val"] is None or score > best["val"]):
            best.update(val=score, step=clock.steps, state=copy.deepcopy(evaluated.state_dict()))
        return score

    model.train()
    schedule = schedule_for(clock, recipe.warmup_frac)
    with SystemLoad(threads=torch.get_num_threads() if device == "cpu" else None) as load:
        stopped_early = run_budget(clock, schedule, optimizer, lr, gen, device, step, validate)
    if best["state"] is not None:
        evaluated.load_state_dict(best["state"])
    return TrainResult(evaluated, curve, clock, best["val"], best["step"] if best["state"] else clock.steps,
                       schedule.converged, stopped_early, noise_columns(load.report))


def train_classifier(model: torch.nn.Module, spec: CellSpec, recipe: Recipe, data: TrainData,
                     train_idx: torch.Tensor, val_idx: torch.Tensor, train_flops_per_image: float,
                     memory_format: torch.memory_format = torch.contiguous_format,
                     ranks: Ranks | None = None) -> TrainResult:
    """Supervised training and fine-tuning: train with the classification objective, validated on val_idx."""
    augment = DeviceAugment(data, spec.img_size, pad=recipe.crop_pad, flip=recipe.flip)
    objective = Classification(recipe, data, val_idx, augment, spec.device, spec.dtype, memory_format)
    return train(model, objective, spec, recipe, data, train_idx, train_flops_per_image, augment,
                 memory_format=memory_format, ranks=ranks)


@dataclass(frozen=True)
class FinalScore:
    accuracy: float
    loss: float
    n: int  # test images


def final_test(model, spec: CellSpec, data: TrainData,
               memory_format: torch.memory_format = torch.contiguous_format) -> FinalScore:
    """The reported numbers: the test split, loaded here for the first and only time."""
    test = load_test(spec.dataset, spec.img_size)
    accuracy, loss = evaluate(model, test.x.to(spec.device), test.y.to(spec.device),
                              DeviceAugment(data, spec.img_size), spec.device, spec.dtype, memory_format)
    return FinalScore(accuracy, loss, len(test.y))


def loss_rose(curve: Curve, name: str, what: str) -> str:
    """Why a training is no measurement by its curve ('' when it is one): the loss `name` (described as `what`)
    ended ten times above where it started."""
    losses = [p[name] for p in curve.points]
    if len(losses) > 1 and losses[-1] > 10 * losses[0]:
        return f"{what} rose from {losses[0]:.3g} to {losses[-1]:.3g}"
    return ""


def divergence(test: FinalScore, num_classes: int, curve: Curve) -> str:
    """Why a finished classifier is no measurement ('' when it is one): a test accuracy within three standard
    errors of chance, a test loss ten times that of a uniform guess, or a training loss that rose tenfold."""
    chance = 1 / num_classes
    margin = 3 * math.sqrt(chance * (1 - chance) / max(1, test.n))
    reasons = []
    if test.accuracy <= chance + margin:
        reasons.append(f"test accuracy {test.accuracy:.3f} is at chance ({chance:.3f})")
    if test.loss > 10 * math.log(num_classes):
        reasons.append(f"test loss {test.loss:.3g} is over 10x a uniform guess's ({math.log(num_classes):.3g})")
    reasons.append(loss_rose(curve, "train_loss", "training loss"))
    return "; ".join(r for r in reasons if r)
