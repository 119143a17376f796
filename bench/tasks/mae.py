"""Task `pretrain_mae`: masked-autoencoder pretraining (vit_impl/mae.py) of a native ViT on the *unlabeled*
training images of a dataset.

Labels never reach this task: it loads images with `load_unlabeled`, whose split has no labels (and which does not
even open Fashion-MNIST's label file). A held-out 2% of the images (at most 1,000) measures the reconstruction
loss on patches the model never trained on, `evals` times over the budget (the same masks each time). The final
weights are kept (no selection): checkpoints/<cell_id>.pt holds the encoder (timm names; `init: mae:<dataset>`
fine-tunes or probes it) and the whole MAE. artifacts/<cell_id>/ gets the reconstructions of a few test images
(original, masked input, reconstruction), which the report draws.
"""

from __future__ import annotations

import torch

from vit_impl import MaskedAutoencoder, config_from_variant

from ..data import DeviceAugment, is_class_range, is_real, load_unlabeled, train_images
from ..measure.flops import forward_flops
from ..measure.phases import phase
from ..models import model_family, vit_variant
from ..paths import CellContext
from ..precision import autocast
from ..results import RowMaker
from ..spec import CellSpec, SpecError, boolean, fraction, mapping_of, positive_int
from ..training import Objective, loss_rose, recipe_column, recipe_for, save_checkpoint, train
from .common import MODEL_CELL, Task, check_model_cell, reads

READS = reads(*MODEL_CELL, "train_size", "budget", "recipe", "mae")  # from scratch, one process, uncompiled
MAE_DEFAULTS = {"mask_ratio": 0.75, "decoder_depth": 2, "decoder_dim": 128, "decoder_heads": 4, "norm_pix_loss": True}
check_mae_options = mapping_of({"mask_ratio": fraction, "decoder_depth": positive_int, "decoder_dim": positive_int,
                                "decoder_heads": positive_int, "norm_pix_loss": boolean}, "mae")
HELD_OUT = 0.02
N_FIGURE = 8


def _held_out(n: int) -> int:
    """Images of a split of n held out to measure the reconstruction loss: 2 %, at least 1, at most 1,000."""
    return min(1000, max(1, int(HELD_OUT * n)))


def train_pool(spec: CellSpec) -> int:
    """The images a pretrain_mae cell's train_size draws from: its split less the held-out images."""
    n = train_images(spec.dataset)
    return n - _held_out(n)


def check(spec: CellSpec) -> CellSpec:
    spec = check_model_cell(spec)
    if not model_family(spec.model).native_vit:
        raise SpecError("task pretrain_mae needs a native ViT (vit:<variant>): its encoder is our ViT")
    if not is_real(spec.dataset) or is_class_range(spec.dataset):
        raise SpecError("task pretrain_mae needs a whole real dataset (no class range: that is chosen by labels)")
    if spec.budget is None:
        raise SpecError("task pretrain_mae needs a budget: {epochs: N} or {seconds: S} / {train_flops: F}")
    if spec.budget.patience is not None:
        raise SpecError("pretrain_mae keeps its final weights: a budget without patience")
    options = {**MAE_DEFAULTS, **(spec.mae or {})}
    cfg = config_from_variant(vit_variant(spec.model), img_size=spec.img_size)
    if int(cfg.num_patches * (1 - options["mask_ratio"])) < 1:
        raise SpecError(f"mask_ratio {options['mask_ratio']} leaves no visible patch of {cfg.num_patches}")
    if options["decoder_dim"] % options["decoder_heads"] or options["decoder_dim"] % 4:
        raise SpecError("mae: decoder_dim must be divisible by decoder_heads and by 4 (sin-cos position embedding)")
    return spec


class MaskedReconstruction(Objective):
    """The MAE's objective: the reconstruction loss of the masked patches (the masks drawn from the training
    generator); validated by the loss on held-out images with the same masks at every evaluation. No score: the
    final weights are kept."""

    def __init__(self, mae: MaskedAutoencoder, held_x: torch.Tensor, gen: torch.Generator, dtype: str):
        self.mae, self.held_x, self.gen, self.dtype = mae, held_x, gen, dtype

    def loss(self, model, x, y):
        return model(x, generator=self.gen)[0], {}

    @torch.inference_mode()
    def validate(self, model):
        model.eval()
        fixed = torch.Generator(device=self.held_x.device).manual_seed(12345)
        held_loss = 0.0
        with autocast(self.held_x.device.type, self.dtype):
            for chunk in self.held_x.split(500):
                held_loss += model(chunk, generator=fixed)[0].float().item() * len(chunk) / len(self.held_x)
        model.train()
        return {"recon_loss": held_loss}, None


def run(spec: CellSpec, ctx: CellContext) -> list[dict]:
    device = spec.device
    torch.manual_seed(spec.seed)
    phase("data")
    data = load_unlabeled(spec.dataset, spec.img_size).to(device)
    phase("setup")
    gen = torch.Generator(device=device).manual_seed(spec.seed)  # the held-out split, then training's draws
    order = torch.randperm(len(data.train.x), device=device, generator=gen)
    n_held = _held_out(len(order))
    held, train_idx = order[:n_held], order[n_held:]
    if spec.train_size is not None:
        train_idx = train_idx[: spec.train_size]
    options = {**MAE_DEFAULTS, **(spec.mae or {})}
    mae = MaskedAutoencoder(vit_variant(spec.model), img_size=spec.img_size, in_chans=data.in_chans,
                            attn_backend=spec.attn_backend, **options).to(device)
    recipe = recipe_for(spec, "vit", "mae")
    augment = DeviceAugment(data, spec.img_size, pad=recipe.crop_pad, flip=recipe.flip)
    example = torch.zeros(1, data.in_chans, spec.img_size, spec.img_size, device=device)
    train_flops_per_image = 3 * forward_flops(mae, example)  # the encoder sees the visible tokens only
    objective = MaskedReconstruction(mae, augment.normalise(data.train.x[held]), gen, spec.dtype)
    result = train(mae, objective, spec, recipe, data, train_idx, train_flops_per_image, augment, gen=gen)

    phase("write")
    save_checkpoint({"model": mae.encoder_state_dict(), "mae": mae.state_dict(), "mae_options": options,
                     "spec": spec.to_dict()}, ctx.paths.checkpoint(spec.cell_id))
    result.curve.write(ctx.paths.curve(spec.cell_id), spec=spec.to_dict(), mae=options)
    artifact = _reconstructions(mae, spec, data, ctx)

    clock = result.clock
    maker = RowMaker(spec, ctx, family="vit", impl="native", variant=vit_variant(spec.model), patch=mae.patch_size,
                     params=sum(p.numel() for p in mae.parameters()), gflops=train_flops_per_image / 3e9,
                     attn_backend_used=spec.attn_backend, train_size_used=len(train_idx), val_size=n_held,
                     batch_size_used=clock.batch, artifact=artifact, data_source=data.source,
                     data_checksum=data.checksum, **clock.columns(), **result.noise,
                     diverged=loss_rose(result.curve, "recon_loss", "held-out reconstruction loss"),
                     recipe_used=recipe_column(recipe, "mae", spec.budget, clock.batch, mae=options))
    last = result.curve.points[-1]
    return [maker.row("recon_loss", last["recon_loss"], n_repeats=1),
            maker.row("train_loss", last["train_loss"], n_repeats=1), *clock.rows(maker)]


def _reconstructions(mae, spec: CellSpec, data, ctx: CellContext) -> str:
    """Original, masked input and reconstruction of a few test images (shown, never used for any choice), saved
    for the report to draw (bench/report/artifacts.py)."""
    test = load_unlabeled(spec.dataset, spec.img_size, split="test").train.x
    picks = torch.randperm(len(test), generator=torch.Generator().manual_seed(spec.seed))[:N_FIGURE]
    x = DeviceAugment(data, spec.img_size).normalise(test[picks])
    mae.eval()
    masked, recon = mae.reconstruct(x, generator=torch.Generator(device=x.device).manual_seed(spec.seed))
    path = ctx.paths.artifact(spec.cell_id, "mae_reconstruction.pt")
    save_checkpoint({"images": x.cpu(), "masked": masked.cpu(), "reconstruction": recon.cpu(),
                     "mask_ratio": mae.mask_ratio}, path)
    return ctx.paths.relative(path)


TASKS = (Task("pretrain_mae", "accuracy", 0, READS, check, run,
              "masked-autoencoder pretraining on unlabeled images; saves the encoder for init: mae:<dataset>",
              train_pool=train_pool),)
AXIS_CHECKS = {"mae": check_mae_options}  # applied by the suite layer to the `mae` axis
