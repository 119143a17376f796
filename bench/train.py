"""Accuracy tasks: train_eval (from scratch), pretrain (from scratch, checkpoint saved), finetune (from a
checkpoint). Recipes per family and phase are data, in RECIPES; the budget is optimizer steps with a minimum
number of epochs. Top-1 accuracy is measured once, on the full test split, after training: the test split
never picks anything.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .cell import Job, RowMaker, autocast
from .data import DeviceAugment, ImageData, load_dataset, stratified_subset
from .models import ModelInfo, build_model, spec_slug
from .results import write_atomic


@dataclass(frozen=True)
class Recipe:
    optimizer: str  # adamw | sgd
    lr: float  # peak learning rate at batch 128 (scaled linearly with the batch size)
    weight_decay: float
    warmup_frac: float  # share of the steps spent in linear warm-up, then cosine decay to 0
    label_smoothing: float
    momentum: float = 0.9  # sgd only (Nesterov)
    grad_clip: float | None = 1.0


RECIPES: dict[tuple[str, str], Recipe] = {
    ("vit", "scratch"): Recipe("adamw", lr=1e-3, weight_decay=0.05, warmup_frac=0.05, label_smoothing=0.1),
    ("vit", "finetune"): Recipe("adamw", lr=3e-4, weight_decay=0.05, warmup_frac=0.05, label_smoothing=0.1),
    ("cnn", "scratch"): Recipe("sgd", lr=0.1, weight_decay=5e-4, warmup_frac=0.02, label_smoothing=0.0),
    ("cnn", "finetune"): Recipe("sgd", lr=0.02, weight_decay=5e-4, warmup_frac=0.02, label_smoothing=0.0),
}


class NonFiniteLoss(RuntimeError):
    pass


def checkpoint_path(run_dir: str | Path, model: str, dataset: str, img_size: int, seed: int) -> Path:
    name = f"{spec_slug(model)}__{spec_slug(dataset)}__{img_size}px__seed{seed}.pt"
    return Path(run_dir) / "checkpoints" / name


def make_optimizer(model: torch.nn.Module, recipe: Recipe, lr: float, device: str) -> torch.optim.Optimizer:
    """No weight decay on biases, norms, tokens and position embeddings (parameters with < 2 dims)."""
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), fused=device == "cuda")
    return torch.optim.SGD(groups, lr=lr, momentum=recipe.momentum, nesterov=True)


def warmup_cosine(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * progress))


@torch.no_grad()
def evaluate(model, data: ImageData, augment: DeviceAugment, device: str, dtype: str, batch: int = 1000):
    """(top-1 accuracy, mean cross-entropy) on the whole test split."""
    model.eval()
    correct, loss_sum = 0, 0.0
    for start in range(0, len(data.test_y), batch):
        x = augment.eval(data.test_x[start:start + batch])
        y = data.test_y[start:start + batch]
        with autocast(device, dtype):
            logits = model(x)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum").item()
        correct += (logits.argmax(-1) == y).sum().item()
    return correct / len(data.test_y), loss_sum / len(data.test_y)


def _load_init(model: torch.nn.Module, info: ModelInfo, job: Job) -> str:
    """Weights for a fine-tune cell; returns where they came from."""
    c = job.cell
    init = c["init"]
    if init == "timm":
        if info.impl != "timm":
            raise ValueError("init: timm needs a timm:<name> model (timm's pretrained weights)")
        import timm

        try:
            source = timm.create_model(info.variant, pretrained=True)
        except Exception as err:  # noqa: BLE001 - offline or not cached: say so plainly
            raise FileNotFoundError(f"pretrained weights for timm model {info.variant!r} are not available on "
                                    f"this machine (not in the Hugging Face / timm cache and no network): {err}")
        state, origin = source.state_dict(), f"timm:{info.variant} pretrained"
    elif init.startswith("file:"):
        path = Path(init[5:])
        if not path.is_file():
            raise FileNotFoundError(f"init checkpoint {path} does not exist")
        state, origin = torch.load(path, map_location="cpu", weights_only=True), str(path)
    else:
        path = checkpoint_path(job.run_dir, c["model"], init, c["img_size"], c["seed"])
        if not path.is_file():
            raise FileNotFoundError(f"pretrained checkpoint {path} is missing: run the matching pretrain cell "
                                    f"(model {c['model']}, dataset {init}, img_size {c['img_size']}, seed {c['seed']}) "
                                    "in this run dir first")
        state, origin = torch.load(path, map_location="cpu", weights_only=True)["model"], str(path)
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if hasattr(model, "load_pretrained"):  # native ViT: resamples position embeddings, new head
        model.load_pretrained(state, keep_head=False)
        return origin
    own = model.state_dict()
    fitting = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    missing = [k for k in own if k not in fitting]
    classifier = [k for k in missing if k.split(".")[0] in ("fc", "head", "classifier")]
    if len(missing) != len(classifier) or not fitting:
        raise ValueError(f"checkpoint {origin} does not fit {c['model']}: missing {missing[:8]}")
    model.load_state_dict(fitting, strict=False)
    return origin


def run_accuracy_cell(job: Job) -> list[dict]:
    c = job.cell
    device, dtype, task = c["device"], c["dtype"], c["task"]
    torch.manual_seed(c["seed"])
    data = load_dataset(c["dataset"], c["img_size"]).to(device)
    model, info = build_model(c["model"], img_size=c["img_size"], in_chans=data.in_chans,
                              num_classes=data.num_classes, attn_backend=c["attn_backend"])
    origin = _load_init(model, info, job) if task == "finetune" else "scratch"
    model = model.to(device)
    phase = "finetune" if task == "finetune" else "scratch"
    recipe = RECIPES[(info.family, phase)]

    train_idx = stratified_subset(data.train_y, c["train_size"], c["seed"]).to(device)
    batch = min(c["batch_size"], len(train_idx))
    steps_per_epoch = len(train_idx) // batch
    total_steps = max(c["steps"], c["min_epochs"] * steps_per_epoch)
    lr = recipe.lr * batch / 128
    optimizer = make_optimizer(model, recipe, lr, device)
    warmup = max(1, int(recipe.warmup_frac * total_steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, total_steps, warmup))
    scaler = torch.amp.GradScaler(device, enabled=dtype == "fp16")
    augment = DeviceAugment(data, c["img_size"])
    gen = torch.Generator(device=device).manual_seed(c["seed"])
    runnable = torch.compile(model) if c["compile"] else model

    curve, step, epoch = [], 0, 0
    started = time.perf_counter()
    model.train()
    while step < total_steps:
        order = train_idx[torch.randperm(len(train_idx), device=device, generator=gen)]
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        seen = 0
        for start in range(0, steps_per_epoch * batch, batch):
            if step >= total_steps:
                break
            idx = order[start:start + batch]
            x, y = augment.train(data.train_x[idx], gen), data.train_y[idx]
            with autocast(device, dtype):
                logits = runnable(x)
                loss = F.cross_entropy(logits.float(), y, label_smoothing=recipe.label_smoothing)
            scaler.scale(loss).backward()
            if recipe.grad_clip:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            loss_sum += loss.detach() * len(y)
            correct += (logits.argmax(-1) == y).sum()
            seen += len(y)
            step += 1
        epoch += 1
        train_loss = loss_sum.item() / max(1, seen)  # one host sync per epoch
        if not math.isfinite(train_loss):
            raise NonFiniteLoss(f"non-finite training loss ({train_loss}) in epoch {epoch} (by step {step}); "
                                f"recipe {recipe}")
        curve.append({"epoch": epoch, "step": step, "train_loss": train_loss,
                      "train_accuracy": correct.item() / max(1, seen), "seconds": time.perf_counter() - started,
                      "lr": scheduler.get_last_lr()[0]})
    if device == "cuda":
        torch.cuda.synchronize()
    train_time = time.perf_counter() - started
    accuracy, test_loss = evaluate(model, data, augment, device, dtype)

    run_dir = Path(job.run_dir)
    curves = run_dir / "curves"
    curves.mkdir(parents=True, exist_ok=True)
    write_atomic(curves / f"{job.cell_id}.json", json.dumps({"cell": c, "init": origin, "curve": curve}, indent=1))
    if task == "pretrain":
        path = checkpoint_path(run_dir, c["model"], c["dataset"], c["img_size"], c["seed"])
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"model": model.state_dict(), "cell": c, "accuracy": accuracy}, path)

    rows = RowMaker(job, info, steps=step, epochs=round(step / max(1, steps_per_epoch), 2), init=origin,
                    recipe=json.dumps({**asdict(recipe), "lr": lr, "batch_size": batch, "warmup_steps": warmup}),
                    train_size=len(train_idx))
    return [
        rows.row("accuracy", accuracy, "fraction", n_repeats=1),
        rows.row("test_loss", test_loss, "nats", n_repeats=1),
        rows.row("train_time", train_time, "s", n_repeats=1),
        rows.row("images_seen", step * batch, "images", n_repeats=1),
        rows.row("epoch_time", train_time / max(1e-9, step / max(1, steps_per_epoch)), "s", n_repeats=1),
    ]
