"""Training under a budget, shared by every accuracy task: the recipes, the budget clock, the schedules (the
learning rate, when to evaluate, when to stop), the loop (validation pauses the clock), the kept best-validation
weights, the training curve, and the final test.

Every cell trains under an explicit budget (bench/spec.py: Budget) with one of three protocols:
  converged      until the validation accuracy plateaus: linear warm-up over the first evaluation interval, then
                 the recipe's rate until `patience` evaluations bring no gain above 0.2 points, a tenth of the rate
                 after each of `lr_drops` such plateaus, and a stop at the next one (converged); the cap (epochs,
                 max_images) stops it too, and then it is not converged
  fixed          a fixed number of epochs (pretraining that keeps its final weights)
  compute-equal  the same training seconds on this device (evaluation pauses the clock) or the same training
                 FLOPs (forward FLOPs x 3 per image) for every model
Fixed and compute-equal budgets run a linear warm-up and a cosine decay over the budget's progress (0 to 1) and
evaluate `evals` times. Validation uses the fixed validation set of the training split (bench/data.py:
validation_set, 1,000 images), the same for every cell of a study; the best weights are kept and restored. The
test split is loaded only after training, by `final_test`, once: training code never holds it.

Recipes are data (RECIPES, per family and phase), overridable per cell (`recipe:` axis) and recorded in each row.
"""

from __future__ import annotations

import copy
import dataclasses
import errno
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from .data import VAL_SIZE, DeviceAugment, TrainData, load_test
from .distributed import Ranks
from .measure.noise import SystemLoad, noise_columns
from .measure.phases import phase
from .precision import autocast
from .results import RowMaker, write_atomic
from .spec import (Budget, CellSpec, boolean, choice, fraction, mapping_of, non_negative_int, non_negative_number,
                   optional, positive_int, positive_number)

PLATEAU_GAIN = 0.002  # a gain of validation accuracy above 0.2 points (2 images of 1,000) is progress
MIN_EVAL_IMAGES = 2048  # the converged protocol evaluates at most every 2,048 training images


# ------------------------------------------------------------------------------------------ recipes


@dataclass(frozen=True)
class Recipe:
    optimizer: str  # adamw | sgd (Nesterov)
    lr: float  # peak learning rate at batch 128, scaled linearly with the batch size
    weight_decay: float
    warmup_frac: float  # share of the budget in linear warm-up, then cosine decay to 0
    label_smoothing: float = 0.0
    momentum: float = 0.9  # sgd only
    beta2: float = 0.999  # adamw only
    grad_clip: float | None = 1.0
    drop_path: float = 0.0  # ViTs: stochastic depth, linearly increasing over the blocks
    crop_pad: int | None = None  # random-crop padding in pixels (None: image size / 8; 0: no crop)
    flip: bool = True  # horizontal flips where label-preserving
    mixup: float = 0.0  # mixup alpha (0: off)
    cutmix: float = 0.0  # cutmix alpha (0: off); with both, one of the two per batch
    ema: float | None = None  # decay of an exponential moving average of the weights, which is evaluated
    layer_decay: float | None = None  # ViT fine-tuning: learning rate x decay^(depth - layer) per layer
    val_size: int = VAL_SIZE  # images of the fixed validation set (bench/data.py: validation_set)


# Recipes per (family, phase). "scratch" trains from scratch under the converged protocol; "scratch-short" under
# a compute-equal budget (seconds or FLOPs), where the search on validation splits (README, "Recipe search") found
# that crop/flip augmentation, label smoothing and a long warm-up cost more than they give: a 90 s budget on
# 60,000 images is 1.5 epochs for the ViT.
RECIPES: dict[tuple[str, str], Recipe] = {
    ("vit", "scratch"): Recipe("adamw", lr=1e-3, weight_decay=0.05, warmup_frac=0.05, label_smoothing=0.1),
    ("vit", "scratch-short"): Recipe("adamw", lr=1e-3, weight_decay=0.1, warmup_frac=0.02, crop_pad=0, flip=False),
    ("vit", "finetune"): Recipe("adamw", lr=3e-4, weight_decay=0.05, warmup_frac=0.05, label_smoothing=0.1),
    ("cnn", "scratch"): Recipe("sgd", lr=0.1, weight_decay=5e-4, warmup_frac=0.02),
    ("cnn", "scratch-short"): Recipe("sgd", lr=0.1, weight_decay=5e-4, warmup_frac=0.02, crop_pad=0, flip=False),
    ("cnn", "finetune"): Recipe("sgd", lr=0.02, weight_decay=5e-4, warmup_frac=0.02),
    # a linear head on frozen features: no augmentation, no regularisation beyond the validation split
    ("vit", "probe"): Recipe("adamw", lr=1e-3, weight_decay=0.0, warmup_frac=0.05, crop_pad=0, flip=False),
    ("cnn", "probe"): Recipe("adamw", lr=1e-3, weight_decay=0.0, warmup_frac=0.05, crop_pad=0, flip=False),
    # masked-autoencoder pretraining (He et al. 2022: AdamW with beta2 0.95, weight decay 0.05, warm-up)
    ("vit", "mae"): Recipe("adamw", lr=1e-3, weight_decay=0.05, warmup_frac=0.05, beta2=0.95, grad_clip=None),
}
check_recipe_overrides = mapping_of({
    "optimizer": choice("adamw", "sgd"), "lr": positive_number, "weight_decay": non_negative_number,
    "warmup_frac": fraction, "label_smoothing": fraction, "momentum": fraction,
    "grad_clip": optional(positive_number), "drop_path": fraction, "crop_pad": optional(non_negative_int),
    "flip": boolean, "mixup": non_negative_number, "cutmix": non_negative_number, "ema": optional(fraction),
    "layer_decay": optional(fraction), "val_size": positive_int, "beta2": fraction,
}, "recipe")
AXIS_CHECKS = {"recipe": check_recipe_overrides}  # applied by the suite layer to the `recipe` axis


def recipe_phase(phase: str, budget: Budget) -> str:
    """Training from scratch under a compute-equal budget uses the short recipe."""
    return "scratch-short" if phase == "scratch" and budget.protocol == "compute-equal" else phase


def recipe_for(spec: CellSpec, family: str, phase: str) -> Recipe:
    """The family's recipe for the phase, with the cell's `recipe:` overrides."""
    return dataclasses.replace(RECIPES[(family, recipe_phase(phase, spec.budget))], **(spec.recipe or {}))


def recipe_column(recipe: Recipe, phase: str, budget: Budget, batch: int, **extra) -> str:
    """The `recipe_used` column: the recipe that ran, its phase and the learning rate at the batch that ran."""
    return json.dumps({"phase": recipe_phase(phase, budget), **dataclasses.asdict(recipe),
                       "lr_at_batch": recipe.lr * batch / 128, **extra}, sort_keys=True)


# ------------------------------------------------------------------------------------------ the budget


class BudgetClock:
    """Where training stands in its budget, from 0 to 1 (for the converged protocol: the share of its cap), and
    what it has spent."""

    def __init__(self, budget: Budget, n_train: int, batch: int, train_flops_per_image: float):
        self.budget = budget
        self.n_train = n_train
        self.batch = batch  # the global batch of one optimizer step
        self.train_flops_per_image = train_flops_per_image  # forward + backward (+ frozen parts' forward)
        self.steps = 0
        self.train_seconds = 0.0
        if budget.epochs is not None:
            total = math.ceil(budget.epochs * max(1, n_train // batch))
            if budget.max_images is not None:
                total = min(total, max(1, budget.max_images // batch))
            self.total_steps = total

    @property
    def images_seen(self) -> int:
        return self.steps * self.batch

    @property
    def epochs(self) -> float:
        return self.images_seen / self.n_train

    @property
    def train_flops(self) -> float:
        return self.images_seen * self.train_flops_per_image

    @property
    def fraction(self) -> float:
        if self.budget.epochs is not None:
            return self.steps / self.total_steps
        if self.budget.seconds is not None:
            return self.train_seconds / self.budget.seconds
        return self.train_flops / self.budget.train_flops

    @property
    def done(self) -> bool:
        return self.fraction >= 1.0

    def columns(self) -> dict:
        """The rows' effective columns about the budget."""
        return {"protocol": self.budget.protocol, "steps": self.steps, "epochs": round(self.epochs, 3)}

    def rows(self, maker: RowMaker) -> list[dict]:
        """What training cost: train_time, images_seen, train_flops, epoch_time."""
        return [maker.row("train_time", self.train_seconds, n_repeats=1),
                maker.row("images_seen", self.images_seen, n_repeats=1),
                maker.row("train_flops", self.train_flops, n_repeats=1),
                maker.row("epoch_time", self.train_seconds / max(1e-9, self.epochs), n_repeats=1)]


def lr_factor(progress: float, warmup_frac: float) -> float:
    """Linear warm-up over the first warmup_frac of the budget, then cosine decay to 0."""
    if progress < warmup_frac:
        return max(progress / warmup_frac, 1e-3)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (progress - warmup_frac) / max(1e-9, 1 - warmup_frac))))


class Cosine:
    """Fixed and compute-equal budgets: warm-up and cosine decay over the budget's progress, `evals` evaluations
    spread over it, no stop before the budget is spent."""

    def __init__(self, clock: BudgetClock, warmup_frac: float):
        self.clock, self.warmup_frac = clock, warmup_frac
        self.next_eval = 1

    def lr_factor(self) -> float:
        return lr_factor(self.clock.fraction, self.warmup_frac)

    def due(self) -> bool:
        evals = self.clock.budget.evals
        if self.clock.done or self.clock.fraction >= self.next_eval / evals:
            self.next_eval = math.floor(self.clock.fraction * evals) + 1
            return True
        return False

    def update(self, val_accuracy: float | None) -> bool:
        return False

    @property
    def converged(self) -> bool:
        return False


class Plateau:
    """The converged protocol: evaluate every `eval_images` training images (default one epoch, at least
    MIN_EVAL_IMAGES); a linear warm-up over the first interval, then the full rate until `patience` evaluations
    bring no validation-accuracy gain above PLATEAU_GAIN over the best so far; then a tenth of the rate, `lr_drops`
    times; the next plateau ends training, converged. Reaching the cap (the clock's total steps) ends it
    unconverged."""

    def __init__(self, clock: BudgetClock):
        budget = clock.budget
        images = budget.eval_images or max(clock.n_train, MIN_EVAL_IMAGES)
        self.clock, self.every = clock, max(1, round(images / clock.batch))
        self.patience, self.drops_left = budget.patience, budget.lr_drops
        self.scale, self.best, self.since = 1.0, -math.inf, 0
        self.converged = False

    def lr_factor(self) -> float:
        warmup = min(1.0, self.clock.steps / self.every)
        return self.scale * max(warmup, 1e-3)

    def due(self) -> bool:
        return self.clock.steps % self.every == 0 or self.clock.done

    def update(self, val_accuracy: float | None) -> bool:
        if val_accuracy > self.best + PLATEAU_GAIN:
            self.best, self.since = val_accuracy, 0
            return False
        self.best = max(self.best, val_accuracy)
        self.since += 1
        if self.since < self.patience:
            return False
        if self.drops_left == 0:
            self.converged = True
            return True
        self.drops_left -= 1
        self.scale /= 10
        self.since = 0
        return False


def schedule_for(clock: BudgetClock, warmup_frac: float) -> Cosine | Plateau:
    return Plateau(clock) if clock.budget.protocol == "converged" else Cosine(clock, warmup_frac)


def run_budget(clock: BudgetClock, schedule: Cosine | Plateau, optimizer: torch.optim.Optimizer, lr: float,
               gen: torch.Generator, device: str, step: Callable[[torch.Tensor], None],
               evaluate: Callable[[], float | None]) -> bool:
    """The training loop of every accuracy task: shuffled batches of indices into the n_train images until the
    budget is spent or the schedule stops it, the learning rate from the schedule, the training clock stopped
    during evaluation (when the schedule says it is due; `evaluate` returns the validation accuracy, or None where
    there is none). The first step, which pays one-time costs (allocations, kernel selection, compilation), counts
    as a step but runs before the clock starts. Returns whether the schedule stopped it before the budget."""
    phase("train")
    while True:
        order = torch.randperm(clock.n_train, device=device, generator=gen)
        for start in range(0, clock.n_train - clock.batch + 1, clock.batch):
            started = time.perf_counter()
            factor = schedule.lr_factor()
            for group in optimizer.param_groups:
                group["lr"] = lr * factor * group["lr_scale"]
            step(order[start:start + clock.batch])
            clock.steps += 1
            if device == "cuda" and (clock.budget.seconds is not None or clock.steps == 1):
                torch.cuda.synchronize()  # the clock must see the GPU's work, not only its launch
            if clock.steps > 1:
                clock.train_seconds += time.perf_counter() - started
            if schedule.due():
                phase("eval")
                stop = schedule.update(evaluate())
                phase("train")
                if stop:
                    return True
            if clock.done:
                return False


# ------------------------------------------------------------------------------------------ optimisation


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
def evaluate(model, x_uint8: torch.Tensor, y: torch.Tensor, augment: DeviceAugment, device: str, dtype: str,
             memory_format: torch.memory_format = torch.contiguous_format) -> tuple[float, float]:
    """(top-1 accuracy, mean cross-entropy) of a model on a labelled split: inference mode, the model's layout and
    dtype, the device's evaluation batch, one host sync at the end."""
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=y.device)
    loss_sum = torch.zeros((), device=y.device)
    batch = EVAL_BATCH.get(device, 256)
    for start in range(0, len(y), batch):
        x = augment.normalise(x_uint8[start:start + batch]).contiguous(memory_format=memory_format)
        target = y[start:start + batch].to(x.device)
        with autocast(device, dtype):
            logits = model(x)
        loss_sum += F.cross_entropy(logits.float(), target, reduction="sum")
        correct += (logits.argmax(-1) == target).sum()
    model.train(was_training)
    return correct.item() / max(1, len(y)), loss_sum.item() / max(1, len(y))


# ------------------------------------------------------------------------------------------ curves


def save_checkpoint(state: dict, path: Path) -> None:
    """torch.save, atomically (a temp file renamed over the target). torch reports a write that fails on a full
    device as a RuntimeError without an errno: that is raised as OSError(ENOSPC), so that the cell stops the run
    instead of recording an error row (bench/cell.py)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    except (RuntimeError, OSError) as err:
        full = shutil.disk_usage(path.parent).free < (64 << 20)  # before the partial file is removed
        tmp.unlink(missing_ok=True)
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
    model: torch.nn.Module  # the kept (best-validation) weights
    curve: Curve
    clock: BudgetClock
    best_val: float
    best_step: int
    converged: bool  # the converged protocol stopped at a validation plateau (never for the other protocols)
    stopped_early: bool  # ended by the schedule before the budget
    noise: dict  # the machine's load while training (a seconds budget buys less on a busy machine)


def train_classifier(model: torch.nn.Module, spec: CellSpec, recipe: Recipe, data: TrainData,
                     train_idx: torch.Tensor, val_idx: torch.Tensor, train_flops_per_image: float,
                     memory_format: torch.memory_format = torch.contiguous_format,
                     ranks: Ranks = Ranks()) -> TrainResult:
    """Train under the spec's budget, validate `evals` times, keep the best-validation weights. Never sees the
    test split (TrainData has none). With several ranks, each trains on its share of every global batch."""
    device, dtype = spec.device, spec.dtype
    batch = min(spec.batch_size * ranks.world, len(train_idx))  # the global batch of one optimizer step
    lr = recipe.lr * batch / 128
    optimizer = make_optimizer(model, recipe, lr, device)
    scaler = torch.amp.GradScaler(device, enabled=dtype == "fp16")
    augment = DeviceAugment(data, spec.img_size, pad=recipe.crop_pad, flip=recipe.flip)
    mixer = _mixer(recipe, data.num_classes)
    ema = None
    if recipe.ema:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(recipe.ema), use_buffers=True)
    evaluated = ema.module if ema is not None else model
    runnable = ranks.wrap(torch.compile(model) if spec.compile else model, device)
    gen = torch.Generator(device=device).manual_seed(spec.seed)  # the same order on every rank
    val_x, val_y = data.train.x[val_idx], data.train.y[val_idx]
    clock = BudgetClock(spec.budget, len(train_idx), batch, train_flops_per_image)
    curve = Curve(clock)
    best = {"val": -1.0, "state": None, "step": 0}
    totals = {"loss": torch.zeros((), device=device), "correct": torch.zeros((), device=device, dtype=torch.long),
              "seen": 0}

    def step(idx: torch.Tensor) -> None:
        idx = train_idx[ranks.shard(idx)]
        x, y = augment.train(data.train.x[idx], gen), data.train.y[idx]
        x = x.contiguous(memory_format=memory_format)
        target = y
        if mixer is not None:
            x, target = mixer(x, y)
        with autocast(device, dtype):
            logits = runnable(x)
            loss = F.cross_entropy(logits.float(), target, label_smoothing=recipe.label_smoothing)
        scaler.scale(loss).backward()
        if recipe.grad_clip:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.update_parameters(model)
        totals["loss"] += loss.detach() * len(y)
        totals["correct"] += (logits.argmax(-1) == y).sum()
        totals["seen"] += len(y)

    def validate() -> float:
        seen = ranks.total(torch.tensor(float(totals["seen"]), device=device)).item()
        train_loss = ranks.total(totals["loss"]).item() / max(1, seen)  # one host sync per evaluation
        correct = ranks.total(totals["correct"]).item()
        val_acc, val_loss = evaluate(evaluated, val_x, val_y, augment, device, dtype, memory_format)
        curve.add(optimizer, train_loss=train_loss, train_accuracy=correct / max(1, seen), val_accuracy=val_acc,
                  val_loss=val_loss)
        totals["loss"].zero_(), totals["correct"].zero_()
        totals["seen"] = 0
        if val_acc > best["val"]:
            best.update(val=val_acc, step=clock.steps, state=copy.deepcopy(evaluated.state_dict()))
        return val_acc

    model.train()
    schedule = schedule_for(clock, recipe.warmup_frac)
    with SystemLoad() as load:
        stopped_early = run_budget(clock, schedule, optimizer, lr, gen, device, step, validate)
    evaluated.load_state_dict(best["state"])
    return TrainResult(evaluated, curve, clock, best["val"], best["step"], schedule.converged, stopped_early,
                       noise_columns(load.report))


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


def divergence(test: FinalScore, num_classes: int, curve: Curve) -> str:
    """Why a finished training is no measurement ('' when it is one): a test accuracy within three standard errors
    of chance, a test loss ten times that of a uniform guess, or a training loss that ended ten times above where
    it started."""
    chance = 1 / num_classes
    margin = 3 * math.sqrt(chance * (1 - chance) / max(1, test.n))
    reasons = []
    if test.accuracy <= chance + margin:
        reasons.append(f"test accuracy {test.accuracy:.3f} is at chance ({chance:.3f})")
    if test.loss > 10 * math.log(num_classes):
        reasons.append(f"test loss {test.loss:.3g} is over 10x a uniform guess's ({math.log(num_classes):.3g})")
    losses = [p["train_loss"] for p in curve.points]
    if len(losses) > 1 and losses[-1] > 10 * losses[0]:
        reasons.append(f"training loss rose from {losses[0]:.3g} to {losses[-1]:.3g}")
    return "; ".join(reasons)
