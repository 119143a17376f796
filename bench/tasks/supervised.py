"""Tasks `train_eval`, `pretrain`, `finetune`, `linear_probe`: a classifier trained under a budget
(bench/training.py), then tested once. They differ only in where the weights start and what is trained:

  train_eval    from scratch (data efficiency)
  pretrain      from scratch; the kept weights go to checkpoints/<cell_id>.pt for the cells that read them
  finetune      from `init`: this run's pretrain or pretrain_mae cell, timm's pretrained weights, or a file
  linear_probe  a linear head on the frozen encoder from `init`

With `nproc > 1` the cell trains data-parallel on that many processes (bench/distributed.py).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from ..data import input_shape, is_real, load_train, normalise_dataset_name, train_images
from ..distributed import Ranks, launch
from ..measure.flops import forward_flops
from ..measure.phases import phase
from ..models import ModelInfo, build_model, load_weights, model_family
from ..paths import CellContext
from ..results import RowMaker
from ..spec import CellSpec, SpecError
from ..subsets import VAL_SIZE, cell_split, pool_size
from ..training import divergence, final_test, recipe_column, recipe_for, save_checkpoint, train_classifier
from .common import MODEL_CELL, CheckpointRef, Reads, Task, check_model_cell, checkpoint_file, reads

TRAINING = (*MODEL_CELL, "compile", "train_size", "budget", "recipe", "nproc")  # what every training task reads


@dataclass(frozen=True)
class Start:
    """How a task's model starts and what it trains."""

    from_init: bool  # weights from `init`
    probe: bool  # a linear head on the frozen encoder
    phase: str  # the recipe phase (bench/training.py: RECIPES)
    keeps_weights: bool = False  # checkpoints/<cell_id>.pt, for the cells that read it

    @property
    def reads(self) -> Reads:
        """TRAINING, with init where the weights start from one and pool for a probe."""
        return reads(*TRAINING, *(["init"] if self.from_init else []), *(["pool"] if self.probe else []))


STARTS = {"train_eval": Start(False, False, "scratch"), "pretrain": Start(False, False, "scratch", keeps_weights=True),
          "finetune": Start(True, False, "finetune"), "linear_probe": Start(True, True, "probe")}


def normalise_init(value) -> str:
    """init: a pretrain dataset of this run (supervised, or mae:<dataset> for a pretrain_mae cell), 'timm', or
    'file:<path>' (made absolute from the current dir)."""
    if value == "timm":
        return value
    if isinstance(value, str) and value.startswith("file:"):
        return f"file:{Path(value[5:]).expanduser().resolve()}"
    mae = isinstance(value, str) and value.startswith("mae:")
    try:
        return ("mae:" if mae else "") + normalise_dataset_name(value[4:] if mae else value)
    except (ValueError, OSError) as err:
        raise SpecError(f"expected a pretrain dataset of this suite (e.g. fashion-mnist:0-4), mae:<dataset> (a "
                        f"pretrain_mae cell's encoder), 'timm' (timm's cached pretrained weights) or "
                        f"'file:<path to a state dict>', got {value!r} ({err})") from None


def init_checkpoint(spec: CellSpec) -> CheckpointRef | None:
    """The run checkpoint `init` names: a pretrain cell's, or a pretrain_mae cell's (mae:<dataset>)."""
    if spec.init is None or spec.init == "timm" or spec.init.startswith("file:"):
        return None
    if spec.init.startswith("mae:"):
        return CheckpointRef(("pretrain_mae",), spec.init[4:])
    return CheckpointRef(("pretrain",), spec.init)


def check_training(spec: CellSpec) -> CellSpec:
    """What every training task needs: a model, a real dataset, a budget."""
    spec = check_model_cell(spec)
    if not is_real(spec.dataset):
        raise SpecError(f"task {spec.task} measures accuracy and needs a real dataset; synthetic data is for "
                        "throughput and memory only")
    if spec.budget is None:
        raise SpecError(f"task {spec.task} needs a budget: {{epochs: cap, patience: P}} (converged), "
                        "{epochs: E} (fixed) or {seconds: S} / {train_flops: F} (compute-equal)")
    classes = input_shape(spec.dataset, spec.in_chans, spec.num_classes)[1]
    if spec.train_size is not None and spec.train_size < classes:
        raise SpecError(f"train_size {spec.train_size} is below one image for each of the {classes} classes")
    return spec


def check(spec: CellSpec) -> CellSpec:
    spec = check_training(spec)
    if STARTS[spec.task].from_init and spec.init is None:
        raise SpecError(f"task {spec.task} needs init: the pretrain dataset, mae:<dataset>, timm or file:<path>")
    family = model_family(spec.model)
    if spec.init == "timm" and not family.timm_weights:
        raise SpecError("init: timm needs a timm:<name> model (timm's pretrained weights)")
    if spec.nproc > 1 and spec.budget.seconds is not None:
        raise SpecError("nproc > 1 needs an epochs or train_flops budget: the ranks must agree on when to stop, "
                        "which their separate clocks would not")
    if spec.init and spec.init.startswith("mae:") and not family.native_vit:
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


def load_init(model: torch.nn.Module, info: ModelInfo, spec: CellSpec, ctx: CellContext) -> str:
    """Weights for a fine-tune or probe cell (every file read with weights_only=True); returns where they came
    from."""
    init = spec.init
    if init == "timm":
        import timm

        try:
            state = timm.create_model(info.variant, pretrained=True).state_dict()
        except Exception as err:  # noqa: BLE001 - offline or not cached: say so plainly
            raise FileNotFoundError(f"pretrained weights for timm model {info.variant!r} are not available on this "
                                    f"machine (not in the Hugging Face / timm cache and no network): {err}") from None
        origin = f"timm:{info.variant} pretrained"
    else:
        ref = init_checkpoint(spec)  # None: a file:<path>
        path = checkpoint_file(spec, ctx, ref)
        state = torch.load(path, map_location="cpu", weights_only=True)
        state, origin = (state, str(path)) if ref is None else (state["model"], ctx.paths.relative(path))
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
    start, device = STARTS[spec.task], spec.device
    torch.manual_seed(spec.seed)
    phase("data")
    data = load_train(spec.dataset, spec.img_size).to(device)
    phase("setup")

    def build(drop_path_rate: float = 0.0) -> tuple[torch.nn.Module, ModelInfo]:
        return build_model(spec.model, img_size=spec.img_size, in_chans=data.in_chans, num_classes=data.num_classes,
                           attn_backend=spec.attn_backend, drop_path_rate=drop_path_rate)

    model, info = build()
    recipe = recipe_for(spec, info.family, start.phase)
    if recipe.drop_path and info.family == "vit":
        model, info = build(recipe.drop_path)
    origin = load_init(model, info, spec, ctx) if start.from_init else "scratch"
    if start.probe:
        model = Probe(model, spec.pool)
    model = model.to(device, memory_format=info.memory_format)
    train_idx, val_idx = cell_split(data.train.y, spec.train_size, spec.seed, recipe.val_size)
    example = torch.zeros(1, data.in_chans, spec.img_size, spec.img_size, device=device)
    flops_per_image = forward_flops(model.eval(), example)
    backward = flops_per_image  # backward ~ 2x forward; a probe back-propagates through its head only
    if start.probe:
        model.head.eval()  # a single example through BatchNorm: statistics mode
        backward = forward_flops(model.head, torch.zeros(1, model.encoder.embed_dim, device=device))
    result = train_classifier(model, spec, recipe, data, train_idx, val_idx, flops_per_image + 2 * backward,
                              info.memory_format, ranks)
    if not ranks.main:
        return None
    phase("eval")
    test = final_test(result.model, spec, data, info.memory_format)
    diverged = divergence(test, data.num_classes, result.curve)

    phase("write")
    result.curve.write(ctx.paths.curve(spec.cell_id), spec=spec.to_dict(), init=origin,
                       recipe=dataclasses.asdict(recipe))
    if start.keeps_weights or spec.keep_checkpoint:
        save_checkpoint({"model": result.model.state_dict(), "spec": spec.to_dict(), "accuracy": test.accuracy},
                        ctx.paths.checkpoint(spec.cell_id))

    clock = result.clock
    maker = RowMaker(spec, ctx, family=info.family, impl=info.impl, variant=info.variant, patch=info.patch,
                     params=info.params, gflops=flops_per_image / 1e9, attn_backend_used=info.attn_backend,
                     train_size_used=len(train_idx), val_size=len(val_idx), batch_size_used=clock.batch // ranks.world,
                     effective_batch=clock.batch, init_used=origin,
                     recipe_used=recipe_column(recipe, start.phase, spec.budget, clock.batch),
                     channels_last=info.channels_last,
                     best_epoch=round(result.best_step * clock.batch / len(train_idx), 3),
                     converged=result.converged and not diverged, stopped_early=result.stopped_early,
                     diverged=diverged, data_source=data.source, data_checksum=data.checksum, **clock.columns(),
                     **result.noise)
    return [maker.row("accuracy", test.accuracy, n_repeats=1), maker.row("test_loss", test.loss, n_repeats=1),
            maker.row("val_accuracy", result.best_val, n_repeats=1), *clock.rows(maker)]


def train_pool(spec: CellSpec) -> int:
    """The training images outside the fixed validation set (of the recipe's val_size), as cell_split draws them."""
    return pool_size(train_images(spec.dataset), (spec.recipe or {}).get("val_size", VAL_SIZE))


TASKS = (
    Task("pretrain", "accuracy", 0, STARTS["pretrain"].reads, check, run,
         "train from scratch, keep the weights for finetune cells", train_pool=train_pool),
    Task("train_eval", "accuracy", 1, STARTS["train_eval"].reads, check, run,
         "train from scratch, test accuracy (data efficiency)", train_pool=train_pool),
    Task("finetune", "accuracy", 1, STARTS["finetune"].reads, check, run,
         "fine-tune from init, test accuracy (transfer)", reads_checkpoint=init_checkpoint, train_pool=train_pool),
    Task("linear_probe", "accuracy", 1, STARTS["linear_probe"].reads, check, run,
         "linear head on a frozen encoder from init, test accuracy", reads_checkpoint=init_checkpoint,
         train_pool=train_pool),
)
AXIS_CHECKS = {"init": normalise_init}  # applied by the suite layer to the `init` axis
