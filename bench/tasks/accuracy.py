"""Accuracy tasks: train_eval (from scratch), pretrain (from scratch, saves its checkpoint), finetune (from a
checkpoint).

Every cell trains under an explicit budget (bench/spec.py: Budget) with one of two protocols:
  converged      up to `epochs` epochs (at least min_steps steps, at most max_images images), early stop after
                 `patience` validations without a gain
  compute-equal  the same training seconds on this device (evaluation pauses the clock) or the same training
                 FLOPs (forward FLOPs x 3 per image) for every model
The learning-rate schedule (linear warm-up, cosine decay) runs over the budget's progress, 0 to 1. A stratified
validation split is carved from the cell's own training subset; the checkpoint with the best validation
accuracy is kept and restored. The test split is loaded only after training, by `final_test`, once: training
code never holds it. `converged` is true when the best validation accuracy of the last quarter of the budget
beats the best before it by at most 0.2 points, or when training stopped early.

Recipes are data (RECIPES, per family and phase), overridable per cell (`recipe:` axis) and recorded in each row.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from ..data import DeviceAugment, TrainData, is_real, load_test, load_train, stratified_subset, train_val_split
from ..measure.flops import forward_flops
from ..models import ModelInfo, build_model, load_weights, spec_slug
from ..results import CellContext, RowMaker, write_atomic
from ..spec import (CellSpec, SpecError, boolean, choice, fraction, mapping_of, non_negative_int,
                    non_negative_number, optional, positive_number)
from .common import Task, autocast, check_model_cell, reject
from .distributed import Ranks, launch

CONVERGED_GAIN = 0.002  # 0.2 points of validation accuracy


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
    val_fraction: float = 0.1  # validation split carved from the training subset


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


_RECIPE_CHECKS = {
    "optimizer": choice("adamw", "sgd"), "lr": positive_number, "weight_decay": non_negative_number,
    "warmup_frac": fraction, "label_smoothing": fraction, "momentum": fraction,
    "grad_clip": optional(positive_number), "drop_path": fraction, "crop_pad": optional(non_negative_int),
    "flip": boolean, "mixup": non_negative_number, "cutmix": non_negative_number, "ema": optional(fraction),
    "layer_decay": optional(fraction), "val_fraction": fraction, "beta2": fraction,
}
check_recipe_overrides = mapping_of(_RECIPE_CHECKS, "recipe")


PHASES = {"finetune": "finetune", "linear_probe": "probe", "pretrain_mae": "mae"}  # other tasks: scratch


def recipe_phase(spec: CellSpec) -> str:
    phase = PHASES.get(spec.task, "scratch")
    return "scratch-short" if phase == "scratch" and spec.budget.protocol == "compute-equal" else phase


def recipe_for(spec: CellSpec, family: str) -> Recipe:
    """The family's recipe for the cell's phase, with the cell's `recipe:` overrides."""
    return dataclasses.replace(RECIPES[(family, recipe_phase(spec))], **(spec.recipe or {}))


def normalise_init(value) -> str:
    """init: a pretrain dataset of this run (supervised, or mae:<dataset> for a pretrain_mae cell), 'timm', or
    'file:<path>' (made absolute from the current dir)."""
    from ..data import normalise_dataset_name

    if value == "timm":
        return value
    if isinstance(value, str) and value.startswith("file:"):
        return f"file:{Path(value[5:]).expanduser().resolve()}"
    mae = isinstance(value, str) and value.startswith("mae:")
    try:
        return ("mae:" if mae else "") + normalise_dataset_name(value[4:] if mae else value)
    except (ValueError, OSError):
        raise SpecError(f"expected a pretrain dataset of this suite (e.g. fashion-mnist:0-4), mae:<dataset> (a "
                        f"pretrain_mae cell's encoder), 'timm' (timm's cached pretrained weights) or "
                        f"'file:<path to a state dict>', got {value!r}") from None


def check_training(spec: CellSpec) -> CellSpec:
    """What every training task needs: a model, a real dataset, a budget."""
    spec = check_model_cell(spec)
    reject(spec, "compare_to")
    if not is_real(spec.dataset):
        raise SpecError(f"task {spec.task} measures accuracy and needs a real dataset; synthetic data is for "
                        "throughput and memory only")
    if spec.budget is None:
        raise SpecError(f"task {spec.task} needs a budget: {{epochs: N}} (converged) or {{seconds: S}} / "
                        "{train_flops: F} (compute-equal)")
    return spec


def check(spec: CellSpec) -> CellSpec:
    spec = check_training(spec)
    reject(spec, "mae", *(() if spec.task == "linear_probe" else ("pool",)))
    needs_init = spec.task in ("finetune", "linear_probe")
    if needs_init and spec.init is None:
        raise SpecError(f"task {spec.task} needs init: the pretrain dataset, mae:<dataset>, timm or file:<path>")
    if not needs_init and spec.init is not None:
        raise SpecError(f"task {spec.task} takes no init")
    if spec.init == "timm" and not spec.model.startswith("timm:"):
        raise SpecError("init: timm needs a timm:<name> model (timm's pretrained weights)")
    if spec.nproc > 1 and spec.budget.seconds is not None:
        raise SpecError("nproc > 1 needs an epochs or train_flops budget: the ranks must agree on when to stop, "
                        "which their separate clocks would not")
    if spec.init and spec.init.startswith("mae:") and not spec.model.startswith("vit:"):
        raise SpecError("init: mae:<dataset> needs a native ViT (vit:<variant>), the encoder of a pretrain_mae cell")
    return spec


class Probe(torch.nn.Module):
    """A linear probe: a frozen encoder (kept in eval mode), its class token or mean patch token, a linear head
    behind a parameter-free BatchNorm that puts the features on one scale (as MAE's linear probing does)."""

    def __init__(self, encoder: torch.nn.Module, pool: str):
        super().__init__()
        self.encoder, self.pool = encoder.requires_grad_(False), pool
        self.head = torch.nn.Sequential(torch.nn.BatchNorm1d(encoder.embed_dim, affine=False),
                                        torch.nn.Linear(encoder.embed_dim, encoder.num_classes))

    def train(self, mode: bool = True) -> "Probe":
        super().train(mode)
        self.encoder.eval()
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.encoder.forward_features(x)  # (B, N, D)
        return tokens[:, 0] if self.pool == "cls" else tokens[:, 1:].mean(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


# ------------------------------------------------------------------------------------------ budget


class Progress:
    """Where training stands in its budget, from 0 to 1, and what it has spent."""

    def __init__(self, spec: CellSpec, n_train: int, batch: int, train_flops_per_image: float):
        self.budget = spec.budget
        self.batch = batch
        self.train_flops_per_image = train_flops_per_image  # forward + backward (+ frozen parts' forward)
        self.steps = 0
        self.train_seconds = 0.0
        steps_per_epoch = max(1, n_train // batch)
        if self.budget.epochs is not None:
            total = max(math.ceil(self.budget.epochs * steps_per_epoch), self.budget.min_steps)
            if self.budget.max_images is not None:
                total = min(total, max(1, self.budget.max_images // batch))
            self.total_steps = total

    @property
    def images_seen(self) -> int:
        return self.steps * self.batch

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


def lr_factor(progress: float, warmup_frac: float) -> float:
    """Linear warm-up over the first warmup_frac of the budget, then cosine decay to 0."""
    if progress < warmup_frac:
        return max(progress / warmup_frac, 1e-3)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (progress - warmup_frac) / max(1e-9, 1 - warmup_frac))))


def run_budget(progress: Progress, optimizer: torch.optim.Optimizer, lr: float, warmup_frac: float, n: int,
               gen: torch.Generator, device: str, step: Callable[[torch.Tensor], None],
               evaluate: Callable[[], bool]) -> bool:
    """The training loop of every accuracy task: shuffled batches of indices into n images until the budget is
    spent, the learning rate set from the progress, the training clock stopped during evaluation, which runs
    `evals` times over the budget and returns True to stop early. Returns whether it stopped early."""
    evals = progress.budget.evals
    next_eval = 1
    while True:
        order = torch.randperm(n, device=device, generator=gen)
        for start in range(0, n - progress.batch + 1, progress.batch):
            clock = time.perf_counter()
            factor = lr_factor(progress.fraction, warmup_frac)
            for group in optimizer.param_groups:
                group["lr"] = lr * factor * group["lr_scale"]
            step(order[start:start + progress.batch])
            progress.steps += 1
            if device == "cuda" and progress.budget.seconds is not None:
                torch.cuda.synchronize()  # the clock must see the GPU's work, not only its launch
            progress.train_seconds += time.perf_counter() - clock
            if progress.done or progress.fraction >= next_eval / evals:
                next_eval = math.floor(progress.fraction * evals) + 1
                if evaluate():
                    return True
            if progress.done:
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


@torch.no_grad()
def evaluate(model, x_uint8: torch.Tensor, y: torch.Tensor, augment: DeviceAugment, device: str, dtype: str,
             batch: int = 1000) -> tuple[float, float]:
    """(top-1 accuracy, mean cross-entropy) of a model on a labelled split."""
    was_training = model.training
    model.eval()
    correct, loss_sum = 0, 0.0
    for start in range(0, len(y), batch):
        x = augment.normalise(x_uint8[start:start + batch])
        target = y[start:start + batch].to(x.device)
        with autocast(device, dtype):
            logits = model(x)
        loss_sum += F.cross_entropy(logits.float(), target, reduction="sum").item()
        correct += (logits.argmax(-1) == target).sum().item()
    model.train(was_training)
    return correct / max(1, len(y)), loss_sum / max(1, len(y))


class NonFiniteLoss(RuntimeError):
    pass


@dataclass
class TrainResult:
    model: torch.nn.Module  # the kept (best-validation) weights
    curve: list[dict]
    progress: Progress
    best_val: float
    best_step: int
    converged: bool
    stopped_early: bool
    train_seconds: float


def train_model(model: torch.nn.Module, spec: CellSpec, recipe: Recipe, data: TrainData, train_idx: torch.Tensor,
                val_idx: torch.Tensor, train_flops_per_image: float, channels_last: bool = False,
                ranks: Ranks = Ranks()) -> TrainResult:
    """Train under the spec's budget, validate `evals` times, keep the best-validation weights. Never sees the
    test split (TrainData has none). With several ranks, each trains on its share of every global batch."""
    device, dtype = spec.device, spec.dtype
    budget = spec.budget
    layout = torch.channels_last if channels_last else torch.contiguous_format
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
    progress = Progress(spec, len(train_idx), batch, train_flops_per_image)
    curve: list[dict] = []
    best = {"val": -1.0, "state": None, "step": 0, "since": 0}
    totals = {"loss": torch.zeros((), device=device), "correct": torch.zeros((), device=device, dtype=torch.long),
              "seen": 0}

    def step(idx: torch.Tensor) -> None:
        idx = train_idx[ranks.shard(idx)]
        x, y = augment.train(data.train.x[idx], gen), data.train.y[idx]
        x = x.contiguous(memory_format=layout)
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

    def validate() -> bool:
        seen = ranks.total(torch.tensor(float(totals["seen"]), device=device)).item()
        train_loss = ranks.total(totals["loss"]).item() / max(1, seen)  # one host sync per evaluation
        correct = ranks.total(totals["correct"]).item()
        if not math.isfinite(train_loss):
            raise NonFiniteLoss(f"non-finite training loss ({train_loss}) by step {progress.steps}; recipe {recipe}")
        val_acc, val_loss = evaluate(evaluated, val_x, val_y, augment, device, dtype)
        curve.append({"step": progress.steps, "epoch": progress.images_seen / len(train_idx),
                      "images_seen": progress.images_seen, "seconds": progress.train_seconds,
                      "progress": progress.fraction, "lr": optimizer.param_groups[0]["lr"], "train_loss": train_loss,
                      "train_accuracy": correct / max(1, seen), "val_accuracy": val_acc,
                      "val_loss": val_loss})
        totals["loss"].zero_(), totals["correct"].zero_()
        totals["seen"] = 0
        if val_acc > best["val"]:
            best.update(val=val_acc, step=progress.steps, since=0, state=copy.deepcopy(evaluated.state_dict()))
        else:
            best["since"] += 1
        return budget.patience is not None and best["since"] >= budget.patience

    model.train()
    stopped_early = run_budget(progress, optimizer, lr, recipe.warmup_frac, len(train_idx), gen, device, step,
                               validate)
    evaluated.load_state_dict(best["state"])
    return TrainResult(evaluated, curve, progress, best["val"], best["step"], stopped_early or _converged(curve),
                       stopped_early, progress.train_seconds)


def _converged(curve: list[dict]) -> bool:
    """No validation gain above 0.2 points over the last quarter of the budget."""
    last = [p["val_accuracy"] for p in curve if p["progress"] > 0.75]
    before = [p["val_accuracy"] for p in curve if p["progress"] <= 0.75]
    return bool(before) and max(last, default=-1.0) <= max(before) + CONVERGED_GAIN


def final_test(model, spec: CellSpec, data: TrainData) -> tuple[float, float]:
    """The reported numbers: the test split, loaded here for the first and only time."""
    test = load_test(spec.dataset, spec.img_size)
    return evaluate(model, test.x.to(spec.device), test.y.to(spec.device), DeviceAugment(data, spec.img_size),
                    spec.device, spec.dtype)


# ------------------------------------------------------------------------------------------ the cell


def checkpoint_path(run_dir: str | Path, model: str, dataset: str, img_size: int, seed: int) -> Path:
    name = f"{spec_slug(model)}__{spec_slug(dataset)}__{img_size}px__seed{seed}.pt"
    return Path(run_dir) / "checkpoints" / name


def _load_init(model: torch.nn.Module, info: ModelInfo, spec: CellSpec, ctx: CellContext) -> str:
    """Weights for a fine-tune cell (every file read with weights_only=True); returns where they came from."""
    init = spec.init
    if init == "timm":
        import timm

        try:
            state = timm.create_model(info.variant, pretrained=True).state_dict()
        except Exception as err:  # noqa: BLE001 - offline or not cached: say so plainly
            raise FileNotFoundError(f"pretrained weights for timm model {info.variant!r} are not available on "
                                    f"this machine (not in the Hugging Face / timm cache and no network): {err}")
        origin = f"timm:{info.variant} pretrained"
    elif init.startswith("file:"):
        path = Path(init[5:])
        if not path.is_file():
            raise FileNotFoundError(f"init checkpoint {path} does not exist")
        state, origin = torch.load(path, map_location="cpu", weights_only=True), str(path)
    else:
        path = checkpoint_path(ctx.run_dir, spec.model, init, spec.img_size, spec.seed)
        if not path.is_file():
            raise FileNotFoundError(f"pretrained checkpoint {path} is missing: run the matching pretrain cell "
                                    f"(model {spec.model}, dataset {init}, img_size {spec.img_size}, seed {spec.seed}) "
                                    "in this run dir first")
        state, origin = torch.load(path, map_location="cpu", weights_only=True)["model"], str(path)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    load_weights(spec.model, model, state)
    return origin


def run(spec: CellSpec, ctx: CellContext) -> list[dict]:
    if spec.nproc > 1:
        return launch(spec, ctx, run_ranks)
    return run_ranks(spec, ctx, Ranks())


def run_ranks(spec: CellSpec, ctx: CellContext, ranks: Ranks) -> list[dict] | None:
    """The cell on one rank of `ranks` (all of it on a single process); rank 0 writes and returns the rows."""
    device = spec.device
    torch.manual_seed(spec.seed)
    data = load_train(spec.dataset, spec.img_size).to(device)
    subset = stratified_subset(data.train.y, spec.train_size, spec.seed).to(device)
    model, info = build_model(spec.model, img_size=spec.img_size, in_chans=data.in_chans,
                              num_classes=data.num_classes, attn_backend=spec.attn_backend)
    recipe = recipe_for(spec, info.family)
    if recipe.drop_path and info.family == "vit":
        model, info = build_model(spec.model, img_size=spec.img_size, in_chans=data.in_chans,
                                  num_classes=data.num_classes, attn_backend=spec.attn_backend,
                                  drop_path_rate=recipe.drop_path)
    origin = _load_init(model, info, spec, ctx) if spec.init else "scratch"
    if spec.task == "linear_probe":
        model = Probe(model, spec.pool)
    channels_last = info.family == "cnn"  # faster convolutions on GPUs and on oneDNN CPUs
    model = model.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    train_idx, val_idx = train_val_split(data.train.y, subset, recipe.val_fraction)
    example = torch.zeros(1, data.in_chans, spec.img_size, spec.img_size, device=device)
    flops_per_image = forward_flops(model.eval(), example)
    # backward ~ 2x forward; a probe back-propagates through its head only
    backward = flops_per_image
    if spec.task == "linear_probe":
        model.head.eval()  # a single example through BatchNorm: statistics mode
        backward = forward_flops(model.head, torch.zeros(1, model.encoder.embed_dim, device=device))
    train_flops_per_image = flops_per_image + 2 * backward
    result = train_model(model, spec, recipe, data, train_idx, val_idx, train_flops_per_image, channels_last, ranks)
    if not ranks.main:
        return None
    accuracy, test_loss = final_test(result.model, spec, data)

    curves = ctx.run_dir / "curves"
    write_atomic(curves / f"{spec.cell_id}.json", json.dumps(
        {"spec": spec.to_dict(), "init": origin, "recipe": dataclasses.asdict(recipe), "curve": result.curve},
        indent=1))
    if spec.task == "pretrain":
        path = checkpoint_path(ctx.run_dir, spec.model, spec.dataset, spec.img_size, spec.seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"model": result.model.state_dict(), "spec": spec.to_dict(), "accuracy": accuracy}, path)

    progress = result.progress
    batch = progress.batch  # the global batch
    best_epoch = result.best_step * batch / len(train_idx)
    rows = RowMaker(spec, ctx, family=info.family, impl=info.impl, variant=info.variant, patch=info.patch,
                    params=info.params, gflops=flops_per_image / 1e9, attn_backend_used=info.attn_backend,
                    train_size_used=len(train_idx), val_size=len(val_idx), batch_size_used=batch // ranks.world,
                    effective_batch=batch, init_used=origin,
                    recipe_used=json.dumps({"phase": recipe_phase(spec), **dataclasses.asdict(recipe),
                                            "lr_at_batch": recipe.lr * batch / 128}, sort_keys=True),
                    channels_last=channels_last, protocol=spec.budget.protocol,
                    epochs=round(progress.images_seen / len(train_idx), 3),
                    steps=progress.steps, best_epoch=round(best_epoch, 3), converged=result.converged,
                    stopped_early=result.stopped_early)
    epochs = progress.images_seen / len(train_idx)
    return [
        rows.row("accuracy", accuracy, "fraction", n_repeats=1),
        rows.row("test_loss", test_loss, "nats", n_repeats=1),
        rows.row("val_accuracy", result.best_val, "fraction", n_repeats=1),
        rows.row("train_time", result.train_seconds, "s", n_repeats=1),
        rows.row("images_seen", progress.images_seen, "images", n_repeats=1),
        rows.row("train_flops", progress.train_flops, "FLOP", n_repeats=1),
        rows.row("epoch_time", result.train_seconds / max(1e-9, epochs), "s", n_repeats=1),
    ]


TASKS = (
    Task("pretrain", "accuracy", 0, check, run, "train from scratch, keep the checkpoint for finetune cells"),
    Task("train_eval", "accuracy", 1, check, run, "train from scratch, test accuracy (data efficiency)"),
    Task("finetune", "accuracy", 1, check, run, "fine-tune from init, test accuracy (transfer)"),
    Task("linear_probe", "accuracy", 1, check, run, "linear head on a frozen encoder from init, test accuracy"),
)
