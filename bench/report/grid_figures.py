"""Figures and the per-cell back-test table of the model-size x data-size grid (bench/report/grid.py): accuracy
over data size with one line per model size and the fitted surface, the held-out corner predicted against what
was measured, and the crossover size n*(m) as both families' models grow."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from ..stats import crossover
from .frame import Runs
from .grid import MODEL_FACTOR, Surface, pairs, surfaces
from .style import Skip, save

EXTEND = 16  # the fitted lines run on (dashed) to this many times the largest measured size
MODEL_SCALES = (0.25, 0.5, 1, 2, 4, 8, 16)  # crossover curve: both families' largest models times these


def _family_panel(ax, surface: Surface) -> None:
    colours = plt.get_cmap("Blues" if surface.family == "vit" else "Oranges")
    models = sorted(surface.models)
    sizes = surface.sizes
    for i, m in enumerate([*models, MODEL_FACTOR * models[-1]]):
        colour = colours(0.4 + 0.6 * i / len(models))
        extrapolated = i == len(models)
        label = (f"{MODEL_FACTOR}x {surface.models[models[-1]]} (extrapolated)" if extrapolated else
                 f"{surface.models[m]} ({m / 1e6:.2f}M)")
        cells = sorted((n, errors) for (n, mm), errors in surface.points.items() if mm == m)
        if cells:
            means = [100 * (1 - np.mean(e)) for _, e in cells]
            ax.plot([n for n, _ in cells], means, "o", color=colour, label=label)
            for n, errors in cells:
                if len(errors) > 1:
                    ax.vlines(n, 100 * (1 - max(errors)), 100 * (1 - min(errors)), color=colour)
        if surface.fit is None:
            continue
        for xs, dash in ((np.geomspace(sizes[0], sizes[-1], 30), "--" if extrapolated else "-"),
                         (np.geomspace(sizes[-1], EXTEND * sizes[-1], 30), "--")):
            predicted = [surface.predict(x, m) for x in xs]
            ax.plot(xs, [p.estimate for p in predicted], dash, color=colour, linewidth=1,
                    label=label if extrapolated and xs[0] == sizes[0] else None)
            ax.fill_between(xs, [p.low for p in predicted], [p.high for p in predicted], color=colour, alpha=0.08)
    law = surface.fit.law.name if surface.fit is not None else f"no fit: {surface.why_not}"
    ax.set(xscale="log", xlabel="training images (log)", ylabel="test top-1 accuracy (%)",
           title=f"{surface.family.upper() if surface.family == 'cnn' else 'ViT'} ({surface.dtype}): {law}")
    ax.legend(fontsize=7, loc="lower right")


def _backtest_panel(ax, surface: Surface) -> None:
    test = surface.backtest
    for held in test.held_out:
        predicted = 100 * (1 - held.predicted.estimate)
        low, high = 100 * (1 - held.predicted.high), 100 * (1 - held.predicted.low)
        measured = 100 * (1 - held.measured)
        ax.errorbar([measured], [predicted], yerr=[[predicted - low], [high - predicted]], fmt="o", capsize=3,
                    color="tab:green" if held.inside else "tab:red")
        ax.annotate(f"{surface.models[held.coords[1]]} n={held.coords[0]:,.0f}", (measured, predicted), fontsize=6,
                    xytext=(4, -8), textcoords="offset points")
    lims = [min(ax.get_xlim()[0], ax.get_ylim()[0]), max(ax.get_xlim()[1], ax.get_ylim()[1])]
    ax.plot(lims, lims, ":", color="grey")
    ax.set(xlabel="measured accuracy (%)", ylabel="predicted without the corner (%)",
           title=f"{surface.family}: off by {test.mean_abs_error * 100:.1f} points, {test.inside}/"
                 f"{len(test.held_out)} inside")


def _crossover_panel(ax, vit: Surface, cnn: Surface) -> str:
    """n*(scale): the crossover size with both largest models scaled; returns what the panel could not show."""
    missing = []
    for scale in MODEL_SCALES:
        vit_m, cnn_m = scale * vit.largest_model, scale * cnn.largest_model
        found = crossover(vit.fit, cnn.fit, vit_m=vit_m, cnn_m=cnn_m)
        if found.status != "predicted":
            missing.append(f"{scale:g}x: {found.status}")
            continue
        n = found.n_star
        ax.errorbar([vit_m], [n.estimate], yerr=[[n.estimate - n.low], [n.high - n.estimate]], fmt="o", capsize=3,
                    color="tab:purple")
    if missing:
        ax.text(0.02, 0.02, "no crossover: " + "; ".join(missing), transform=ax.transAxes, fontsize=7, wrap=True)
    ax.axvline(vit.largest_model, color="grey", linestyle=":", label="largest measured ViT")
    ax.axhline(max(vit.sizes[-1], cnn.sizes[-1]), color="grey", linestyle="--", label="largest measured n")
    ax.set(xscale="log", yscale="log", xlabel="ViT parameters (CNN scaled alike)",
           ylabel="n* (training images, log)", title="where the ViT's surface meets the CNN's")
    ax.legend(fontsize=7)
    return "; ".join(missing)


def backtest_table(surface: Surface) -> str:
    lines = ["| family | model | n | predicted (%) | measured (%) | error (points) | inside |",
             "|---|---|---|---|---|---|---|"]
    for held in surface.backtest.held_out:
        p = held.predicted
        lines.append(f"| {surface.family} | `{surface.models[held.coords[1]]}` | {held.coords[0]:,.0f} | "
                     f"{100 * (1 - p.estimate):.1f} [{100 * (1 - p.high):.1f}, {100 * (1 - p.low):.1f}] | "
                     f"{100 * (1 - held.measured):.1f} | {-100 * held.error:+.1f} | {'yes' if held.inside else 'no'} |")
    return "\n".join(lines)


def model_data_grid(runs: Runs) -> str:
    if not surfaces(runs):
        raise Skip("no family measured at two or more model sizes under the converged protocol "
                   "(suites/data_efficiency.yaml)")
    parts = []
    for vit, cnn in pairs_all(runs):
        name = f"{vit.device}_{vit.dataset}".replace(":", "-")
        fig, axes = plt.subplots(1, 2, figsize=(12.8, 4.6), squeeze=False)
        for ax, surface in zip(axes[0], (vit, cnn)):
            _family_panel(ax, surface)
        fig.suptitle(f"Accuracy over data size and model size, {vit.dataset}, {vit.device}, converged protocol")
        parts.append(save(fig, runs.out, f"grid_{name}.png",
                          "Points: measured means (bars: seed range where 3 seeds); lines: the family's fitted 2-D law "
                          "at each model size, solid over the measured sizes, dashed beyond them and for a model "
                          f"{MODEL_FACTOR}x the largest (extrapolation), with bootstrap bands."))
        tested = [s for s in (vit, cnn) if s.backtest is not None]
        if tested:
            fig, axes = plt.subplots(1, len(tested), figsize=(5.4 * len(tested), 4.6), squeeze=False)
            for ax, surface in zip(axes[0], tested):
                _backtest_panel(ax, surface)
            parts.append(save(fig, runs.out, f"grid_backtest_{name}.png",
                              "The held-out corner (every cell of the largest size or the largest model), predicted "
                              "by the law fitted without it, against the measured means; green: inside its 95 % "
                              "prediction interval (the surface's uncertainty and one new cell's seed noise)."))
            parts += [backtest_table(s) for s in tested]
        if vit.fit is not None and cnn.fit is not None:
            fig, ax = plt.subplots(figsize=(6.4, 4.6))
            missing = _crossover_panel(ax, vit, cnn)
            parts.append(save(fig, runs.out, f"grid_crossover_{name}.png",
                              "The training-set size n* at which the ViT's fitted accuracy reaches the CNN's, with "
                              "both families' largest measured models scaled by the same factor (0.25x-16x), with "
                              "bootstrap intervals; right of the dotted line and above the dashed one: "
                              "extrapolation." + (f" Not drawn: {missing}." if missing else "")))
    return "\n\n".join(parts)


def pairs_all(runs: Runs) -> list[tuple[Surface, Surface]]:
    return [p for device in sorted({s.device for s in surfaces(runs)}) for p in pairs(device, runs)]
