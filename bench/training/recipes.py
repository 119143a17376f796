"""Training recipes as data: per model family and phase (scratch, scratch-short, finetune, probe, mae), each
overridable per cell through the `recipe:` axis and recorded in every row (`recipe_used`)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

from ..subsets import VAL_SIZE
from ..spec import (Budget, CellSpec, boolean, choice, fraction, mapping_of, non_negative_int, non_negative_number,
                    optional, positive_int, positive_number)


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
    val_size: int = VAL_SIZE  # images of the fixed validation set (bench/subsets.py: validation_set)


# Recipes per (family, phase). "scratch" trains from scratch under the converged protocol; "scratch-short" under
# a compute-equal budget (seconds or FLOPs), where the search on validation splits (docs/suites.md, "Recipe
# search") found that crop/flip augmentation, label smoothing and a long warm-up cost more than they give: a 90 s
# budget on 60,000 images is 1.5 epochs for the ViT.
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
