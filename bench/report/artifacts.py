"""Figures of what a trained model does, drawn from the data its cell saved (artifacts/<cell_id>/*.pt): the
attention rollout of a ViT on a few test images, and MAE reconstructions. The tasks save tensors only; the
report draws, so that a figure can change without training anything again."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import torch

from .frame import Runs, ok_metric
from .style import Skip, save


def _rollout(data: dict, row: pd.Series):
    images, rollout = data["images"], data["rollout"]  # (k, C, H, W) uint8, (k, g, g)
    classes, labels, predictions = data["classes"], data["labels"], data["predictions"]
    fig, axes = plt.subplots(2, len(images), figsize=(13, 4.8), squeeze=False)
    for i, image in enumerate(images):
        gray = image.float().mean(0)
        heat = torch.nn.functional.interpolate(rollout[i][None, None].float(), size=gray.shape, mode="bilinear")[0, 0]
        axes[0, i].imshow(gray.numpy(), cmap="gray")
        axes[0, i].set_title(f"true: {classes[labels[i]]}\npred: {classes[predictions[i]]}", fontsize=8)
        axes[1, i].imshow(gray.numpy(), cmap="gray")
        axes[1, i].imshow(heat.numpy(), cmap="inferno", alpha=0.6)
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle(f"Attention rollout of {row['model']} trained on {row['dataset']} (test accuracy "
                 f"{row['value'] * 100:.1f}%; bright = where the class token attends)")
    return fig


def _reconstruction(data: dict, row: pd.Series):
    panels = (("original", data["images"]), ("masked input", data["masked"]), ("reconstruction",
                                                                               data["reconstruction"]))
    count = len(data["images"])
    fig, axes = plt.subplots(3, count, figsize=(1.6 * count, 5.2), squeeze=False)
    for r, (title, images) in enumerate(panels):
        for c in range(count):
            axes[r, c].imshow(images[c].float().mean(0).numpy(), cmap="gray")
            axes[r, c].axis("off")
        axes[r, 0].set_title(title, fontsize=9, loc="left")
    fig.suptitle(f"MAE reconstruction of test images: {row['model']} pretrained on unlabeled {row['dataset']} "
                 f"({data['mask_ratio']:.0%} of patches masked)")
    return fig


DRAWERS = {"checkpoint_accuracy": ("attention rollout", _rollout), "recon_loss": ("MAE reconstruction",
                                                                                  _reconstruction)}


def artifacts(runs: Runs, metric: str) -> str:
    """One figure per cell that saved artifact data with `metric` (rollout: checkpoint_accuracy; MAE: recon_loss)."""
    what, draw = DRAWERS[metric]
    cells = ok_metric(runs.rows, metric).dropna(subset=["artifact"]).drop_duplicates(["run_dir", "cell_id"])
    if cells.empty:
        raise Skip(f"no {what} in these runs")
    parts = []
    for _, row in cells.iterrows():
        source = (Path(row["run_dir"]) / row["artifact"]).with_suffix(".pt")  # runs before 2026-12-03 named the PNG
        data = torch.load(source, map_location="cpu", weights_only=True)
        name = f"{what.replace(' ', '_')}_{Path(row['run_dir']).name}_{row['cell_id']}.png"  # a cell per run dir
        parts.append(save(draw(data, row), runs.out, name, f"{what.capitalize()} of {row['model']} on "
                                                           f"{row['dataset']} (cell {row['cell_id']})."))
    return "\n\n".join(parts)
