"""Task `pretrain_mae`: masked-autoencoder pretraining (vit_impl/mae.py) of a native ViT on the *unlabeled*
training images of a dataset.

Labels never reach this task: it loads images with `load_unlabeled`, whose split has no labels (and which does not
even open Fashion-MNIST's label file). A held-out 2% of the images (at most 1,000) measures the reconstruction
loss on patches the model never trained on, `evals` times over the budget (the same masks each time). The final
weights are kept (no selection): checkpoints/<model>__mae-<dataset>__<px>__seed<s>.pt holds the encoder (timm
names; `init: mae:<dataset>` fine-tunes or probes it) and the whole MAE. artifacts/<cell_id>/ gets a
reconstruction figure of test images (original, masked input, reconstruction) and its data.
"""

from __future__ import annotations

import dataclasses
import json

import torch

from vit_impl import config_from_variant

from ..data import DeviceAugment, is_class_range, is_real, load_unlabeled
from ..measure.flops import forward_flops
from ..models import build_model
from ..results import CellContext, RowMaker, write_atomic
from ..spec import CellSpec, SpecError, boolean, fraction, mapping_of, positive_int
from .accuracy import Progress, checkpoint_path, make_optimizer, recipe_for, run_budget
from .common import Task, autocast, check_model_cell, reject

MAE_DEFAULTS = {"mask_ratio": 0.75, "decoder_depth": 2, "decoder_dim": 128, "decoder_heads": 4, "norm_pix_loss": True}
check_mae_options = mapping_of({"mask_ratio": fraction, "decoder_depth": positive_int, "decoder_dim": positive_int,
                                "decoder_heads": positive_int, "norm_pix_loss": boolean}, "mae")
HELD_OUT = 0.02
N_FIGURE = 8


def check(spec: CellSpec) -> CellSpec:
    spec = check_model_cell(spec)
    if not spec.model.startswith("vit:"):
        raise SpecError("task pretrain_mae needs a native ViT (vit:<variant>): its encoder is our ViT")
    if not is_real(spec.dataset) or is_class_range(spec.dataset):
        raise SpecError("task pretrain_mae needs a whole real dataset (no class range: that is chosen by labels)")
    if spec.budget is None:
        raise SpecError("task pretrain_mae needs a budget: {epochs: N} or {seconds: S} / {train_flops: F}")
    if spec.budget.patience is not None:
        raise SpecError("pretrain_mae keeps its final weights: a budget without patience")
    reject(spec, "compare_to", "init", "pool", "compile", "nproc")
    options = {**MAE_DEFAULTS, **(spec.mae or {})}
    cfg = config_from_variant(spec.model.split(":", 1)[1], img_size=spec.img_size)
    if int(cfg.num_patches * (1 - options["mask_ratio"])) < 1:
        raise SpecError(f"mask_ratio {options['mask_ratio']} leaves no visible patch of {cfg.num_patches}")
    if options["decoder_dim"] % options["decoder_heads"] or options["decoder_dim"] % 4:
        raise SpecError("mae: decoder_dim must be divisible by decoder_heads and by 4 (sin-cos position embedding)")
    return spec


def run(spec: CellSpec, ctx: CellContext) -> list[dict]:
    from vit_impl import MaskedAutoencoder

    device = spec.device
    torch.manual_seed(spec.seed)
    data = load_unlabeled(spec.dataset, spec.img_size).to(device)
    gen = torch.Generator(device=device).manual_seed(spec.seed)
    order = torch.randperm(len(data.train.x), device=device, generator=gen)
    n_held = min(1000, max(1, int(HELD_OUT * len(order))))
    held, train = order[:n_held], order[n_held:]
    if spec.train_size is not None:
        train = train[: spec.train_size]
    options = {**MAE_DEFAULTS, **(spec.mae or {})}
    mae = MaskedAutoencoder(spec.model.split(":", 1)[1], img_size=spec.img_size, in_chans=data.in_chans,
                            attn_backend=spec.attn_backend, **options).to(device)
    recipe = recipe_for(spec, "vit")
    batch = min(spec.batch_size, len(train))
    lr = recipe.lr * batch / 128
    optimizer = make_optimizer(mae, recipe, lr, device)
    augment = DeviceAugment(data, spec.img_size, pad=recipe.crop_pad, flip=recipe.flip)
    example = torch.zeros(1, data.in_chans, spec.img_size, spec.img_size, device=device)
    train_flops_per_image = 3 * forward_flops(mae, example)  # the encoder sees the visible tokens only
    progress = Progress(spec, len(train), batch, train_flops_per_image)
    held_x = augment.normalise(data.train.x[held])
    curve: list[dict] = []
    losses: list[torch.Tensor] = []

    def step(idx: torch.Tensor) -> None:
        x = augment.train(data.train.x[train[idx]], gen)
        with autocast(device, spec.dtype):
            loss, _, _ = mae(x, generator=gen)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.detach())

    def held_out_loss() -> bool:
        mae.eval()
        fixed = torch.Generator(device=device).manual_seed(12345)  # the same masks at every evaluation
        held_loss = 0.0
        with torch.no_grad(), autocast(device, spec.dtype):
            for chunk in held_x.split(500):
                held_loss += mae(chunk, generator=fixed)[0].float().item() * len(chunk) / len(held_x)
        mae.train()
        train_loss = torch.stack(losses).float().mean().item()
        losses.clear()
        if not torch.isfinite(torch.tensor(train_loss)):
            raise RuntimeError(f"non-finite MAE loss ({train_loss}) by step {progress.steps}")
        curve.append({"step": progress.steps, "epoch": progress.images_seen / len(train),
                      "images_seen": progress.images_seen, "seconds": progress.train_seconds,
                      "progress": progress.fraction, "lr": optimizer.param_groups[0]["lr"],
                      "train_loss": train_loss, "recon_loss": held_loss})
        return False

    mae.train()
    run_budget(progress, optimizer, lr, recipe.warmup_frac, len(train), gen, device, step, held_out_loss)

    path = checkpoint_path(ctx.run_dir, spec.model, f"mae:{spec.dataset}", spec.img_size, spec.seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": mae.encoder_state_dict(), "mae": mae.state_dict(), "mae_options": options,
                "spec": spec.to_dict()}, path)
    write_atomic(ctx.run_dir / "curves" / f"{spec.cell_id}.json",
                 json.dumps({"spec": spec.to_dict(), "mae": options, "curve": curve}, indent=1))
    artifact = _reconstruction_figure(mae, spec, data, ctx)

    info = build_model(spec.model, img_size=spec.img_size, in_chans=data.in_chans)[1]
    rows = RowMaker(spec, ctx, family="vit", impl="native", variant=info.variant, patch=info.patch,
                    params=sum(p.numel() for p in mae.parameters()), gflops=train_flops_per_image / 3e9,
                    attn_backend_used=spec.attn_backend, train_size_used=len(train), val_size=n_held,
                    batch_size_used=batch, protocol=spec.budget.protocol, steps=progress.steps,
                    epochs=round(progress.images_seen / len(train), 3), artifact=artifact,
                    recipe_used=json.dumps({"recipe": dataclasses.asdict(recipe), "mae": options}, sort_keys=True))
    epochs = progress.images_seen / len(train)
    return [
        rows.row("recon_loss", curve[-1]["recon_loss"], "mse", n_repeats=1),
        rows.row("train_loss", curve[-1]["train_loss"], "mse", n_repeats=1),
        rows.row("train_time", progress.train_seconds, "s", n_repeats=1),
        rows.row("images_seen", progress.images_seen, "images", n_repeats=1),
        rows.row("train_flops", progress.train_flops, "FLOP", n_repeats=1),
        rows.row("epoch_time", progress.train_seconds / max(1e-9, epochs), "s", n_repeats=1),
    ]


def _reconstruction_figure(mae, spec: CellSpec, data, ctx: CellContext) -> str:
    """Original, masked input and reconstruction of a few test images (shown, never used for any choice)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    test = load_unlabeled(spec.dataset, spec.img_size, split="test").train.x
    picks = torch.randperm(len(test), generator=torch.Generator().manual_seed(spec.seed))[:N_FIGURE]
    x = DeviceAugment(data, spec.img_size).normalise(test[picks])
    mae.eval()
    masked, recon = mae.reconstruct(x, generator=torch.Generator(device=x.device).manual_seed(spec.seed))
    out = ctx.run_dir / "artifacts" / spec.cell_id
    out.mkdir(parents=True, exist_ok=True)
    torch.save({"images": x.cpu(), "masked": masked.cpu(), "reconstruction": recon.cpu(),
                "mask_ratio": mae.mask_ratio}, out / "mae_reconstruction.pt")
    fig, axes = plt.subplots(3, N_FIGURE, figsize=(1.6 * N_FIGURE, 5.2))
    for col in range(N_FIGURE):
        for row, (title, images) in enumerate((("original", x), ("masked input", masked), ("reconstruction", recon))):
            axes[row, col].imshow(images[col].float().mean(0).cpu().numpy(), cmap="gray")
            axes[row, col].axis("off")
            if col == 0:
                axes[row, col].set_title(title, fontsize=9, loc="left")
    fig.suptitle(f"MAE reconstruction of test images: {spec.model} pretrained on unlabeled {spec.dataset} "
                 f"({mae.mask_ratio:.0%} of patches masked)")
    fig.savefig(out / "mae_reconstruction.png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return f"artifacts/{spec.cell_id}/mae_reconstruction.png"


TASKS = (Task("pretrain_mae", "accuracy", 0, check, run,
              "masked-autoencoder pretraining on unlabeled images; saves the encoder for init: mae:<dataset>"),)
