"""Task `rollout`: attention rollout (Abnar & Zuidema 2020) of a native ViT trained by a pretrain cell of this
run (same model, dataset, image size and seed), on six test images. Writes the figure and its data into
artifacts/<cell_id>/, so the report only copies files and never loads a model."""

from __future__ import annotations

import torch

from ..data import DeviceAugment, load_test, load_train
from ..models import build_model
from ..results import CellContext, RowMaker
from ..spec import CellSpec, SpecError
from .accuracy import checkpoint_path
from .common import Task, check_model_cell, reject

N_IMAGES = 6


def check(spec: CellSpec) -> CellSpec:
    spec = check_model_cell(spec)
    if not spec.model.startswith("vit:"):
        raise SpecError("task rollout needs a native ViT (vit:<variant>): it reads every layer's attention")
    if spec.dataset == "synthetic":
        raise SpecError("task rollout shows a trained model on real test images; give the pretrain cell's dataset")
    reject(spec, "budget", "recipe", "init", "compare_to", "train_size", "mae", "pool", "nproc")
    return spec


def run(spec: CellSpec, ctx: CellContext) -> list[dict]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vit_impl import attention_rollout

    path = checkpoint_path(ctx.run_dir, spec.model, spec.dataset, spec.img_size, spec.seed)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint {path}: task rollout needs the pretrain cell of {spec.model} on "
                                f"{spec.dataset} ({spec.img_size} px, seed {spec.seed}) in this run")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    data = load_train(spec.dataset, spec.img_size)
    model, info = build_model(spec.model, img_size=spec.img_size, in_chans=data.in_chans,
                              num_classes=data.num_classes)
    model.load_state_dict(checkpoint["model"])
    model.eval()
    test = load_test(spec.dataset, spec.img_size)
    picks = torch.randperm(len(test.y), generator=torch.Generator().manual_seed(spec.seed))[:N_IMAGES]
    images, labels = test.x[picks], test.y[picks]
    x = DeviceAugment(data, spec.img_size).normalise(images)
    with torch.no_grad():
        rollout = attention_rollout(model.attention_maps(x))  # (6, g, g)
        predictions = model(x).argmax(-1)

    out = ctx.run_dir / "artifacts" / spec.cell_id
    out.mkdir(parents=True, exist_ok=True)
    torch.save({"images": images, "labels": labels, "predictions": predictions, "rollout": rollout,
                "classes": list(data.classes)}, out / "attention_rollout.pt")
    fig, axes = plt.subplots(2, N_IMAGES, figsize=(13, 4.8))
    for i in range(N_IMAGES):
        image = images[i].float().mean(0).numpy()
        heat = torch.nn.functional.interpolate(rollout[i][None, None], size=image.shape, mode="bilinear")[0, 0]
        axes[0, i].imshow(image, cmap="gray")
        axes[0, i].set_title(f"true: {data.classes[labels[i]]}\npred: {data.classes[predictions[i]]}", fontsize=8)
        axes[1, i].imshow(image, cmap="gray")
        axes[1, i].imshow(heat.numpy(), cmap="inferno", alpha=0.6)
    for ax in axes.flat:
        ax.axis("off")
    accuracy = checkpoint.get("accuracy")
    fig.suptitle(f"Attention rollout of {spec.model} trained on {spec.dataset} (test accuracy "
                 f"{accuracy * 100:.1f}%; bright = where the class token attends)")
    fig.savefig(out / "attention_rollout.png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    rows = RowMaker(spec, ctx, family=info.family, impl=info.impl, variant=info.variant, patch=info.patch,
                    params=info.params, attn_backend_used=info.attn_backend,
                    artifact=f"artifacts/{spec.cell_id}/attention_rollout.png")
    return [rows.row("checkpoint_accuracy", accuracy, "fraction", n_repeats=1)]


TASKS = (Task("rollout", "accuracy", 2, check, run,
              "attention rollout figure of a pretrain cell's ViT (artifacts/<cell_id>/)"),)
