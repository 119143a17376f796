"""The report's look and its plumbing: one palette per family, one marker per implementation, log axes with
plain numbers, figures saved with a caption, and Skip for a figure the results cannot give."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import seaborn as sns
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

sns.set_theme(style="whitegrid", context="notebook")
FAMILY_PALETTES = {"vit": "Blues_r", "cnn": "Oranges_r", "attention": "tab10"}
MARKERS = {"native": "o", "timm": "s", "torchvision": "^"}


class Skip(Exception):
    """A figure that cannot be drawn from these results; the message says why."""


def palette(labels_by_family: dict[str, list[str]]) -> dict[str, tuple]:
    """label -> colour: shades of one palette per family (ViTs blue, CNNs orange), darkest first."""
    colours = {}
    for family, labels in labels_by_family.items():
        shades = sns.color_palette(FAMILY_PALETTES.get(family, "tab10"), len(labels) + 2)
        colours.update(zip(sorted(labels), shades))
    return colours


def style_of(frame, hue: str = "label") -> dict:
    """seaborn keyword arguments: colour by model (shades of its family), marker by implementation."""
    families = frame.groupby("family")[hue].unique().to_dict() if "family" in frame else {}
    impls = sorted(frame["impl"].dropna().unique()) if "impl" in frame else []
    return {"hue": hue, "palette": palette({f: list(v) for f, v in families.items()}), "style": "impl",
            "markers": {i: MARKERS.get(i, "D") for i in impls}, "hue_order": sorted(frame[hue].unique()),
            "style_order": impls}


def short_number(value: float) -> str:
    """1500000 -> '1.5M', 20000 -> '20k', 0.05 -> '0.05'."""
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:g}{suffix}"
    return f"{value:g}"


def save(fig, out: Path, name: str, caption: str) -> str:
    """Plain numbers on log axes, the PNG written, markdown for it with a one-line caption."""
    for ax in fig.axes:
        for axis, scale in ((ax.xaxis, ax.get_xscale()), (ax.yaxis, ax.get_yscale())):
            if scale == "log":
                axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
                axis.set_major_formatter(FuncFormatter(lambda v, _: short_number(v)))
                axis.set_minor_formatter(NullFormatter())
    fig.savefig(out / name, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return f"![{name}]({name})\n\n_{caption}_"
