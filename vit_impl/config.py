"""ViT configuration and named variants ("B/16", "S/4", "Mu/4" ...), decoded from a table as in big_vision."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

ATTN_BACKENDS = ("math", "sdpa", "triton")


@dataclass(frozen=True)
class VariantShape:
    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float = 4.0


# Width / depth / heads of the named variants (Dosovitskiy et al. 2021, Touvron et al. 2021).
VARIANTS: dict[str, VariantShape] = {
    "Ti": VariantShape(192, 12, 3),
    "S": VariantShape(384, 12, 6),
    "B": VariantShape(768, 12, 12),
    "L": VariantShape(1024, 24, 16),
    "H": VariantShape(1280, 32, 16),
    # Small-image variants for 28-32 px inputs (Fashion-MNIST, CIFAR) that train in minutes on a CPU.
    # A width series at depth 6, MLP ratio 2 and 32-dim heads, for model-scale studies on a CPU: Na ("nano"):
    # ~0.2M parameters; Mu ("micro"): ~0.8M; Sm ("small-micro", between Mu and Mi): ~1.8M; Mi ("mini"): ~3.2M.
    # Use with patch 4 (or 2, 7) at 28/32 px.
    "Na": VariantShape(64, 6, 2, mlp_ratio=2.0),
    "Mu": VariantShape(128, 6, 4, mlp_ratio=2.0),
    "Sm": VariantShape(192, 6, 6, mlp_ratio=2.0),
    "Mi": VariantShape(256, 6, 8, mlp_ratio=2.0),
}

_VARIANT_RE = re.compile(r"^(?P<name>[A-Za-z]+)/(?P<patch>\d+)$")


@dataclass(frozen=True)
class ViTConfig:
    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    num_classes: int = 1000
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    drop_rate: float = 0.0  # dropout after attention projection, MLP and before the head
    attn_drop_rate: float = 0.0  # dropout on attention weights (math and sdpa backends only)
    drop_path_rate: float = 0.0  # stochastic depth, linearly increasing over the blocks
    norm_eps: float = 1e-6
    attn_backend: str = "sdpa"

    def __post_init__(self) -> None:
        for name in ("img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"ViTConfig.{name} must be a positive integer, got {value!r}")
        if self.num_classes < 0:
            raise ValueError(f"ViTConfig.num_classes must be >= 0 (0 = no head), got {self.num_classes}")
        if self.img_size % self.patch_size:
            raise ValueError(
                f"patch size {self.patch_size} does not divide image size {self.img_size}; "
                f"allowed patch sizes for {self.img_size} px: {divisors(self.img_size)}"
            )
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.attn_backend not in ATTN_BACKENDS:
            raise ValueError(f"unknown attn_backend {self.attn_backend!r}; allowed: {', '.join(ATTN_BACKENDS)}")
        for name in ("drop_rate", "attn_drop_rate", "drop_path_rate"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"ViTConfig.{name} must be in [0, 1), got {getattr(self, name)}")

    @property
    def grid_size(self) -> int:
        return self.img_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size**2

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def seq_len(self) -> int:
        return self.num_patches + 1  # + class token


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def parse_variant(variant: str) -> tuple[VariantShape, int]:
    """'B/16' -> (VariantShape(768, 12, 12), 16)."""
    match = _VARIANT_RE.match(variant.strip()) if isinstance(variant, str) else None
    if match is None or match["name"] not in VARIANTS:
        raise ValueError(
            f"unknown ViT variant {variant!r}; expected '<name>/<patch>' with name in "
            f"{', '.join(VARIANTS)} and a patch size dividing the image size, e.g. 'B/16', 'S/4', 'Mu/4'"
        )
    patch = int(match["patch"])
    if patch <= 0:
        raise ValueError(f"patch size in {variant!r} must be positive")
    return VARIANTS[match["name"]], patch


def canonical_variant(variant: str) -> str:
    """How a variant is written: 'Mu/4' for ' Mu/04' (ValueError for an unknown one)."""
    _, patch = parse_variant(variant)
    return f"{variant.strip().split('/')[0]}/{patch}"


def config_from_variant(variant: str, **overrides) -> ViTConfig:
    """A ViTConfig for a named variant; keyword overrides replace any field (img_size, num_classes, ...)."""
    shape, patch = parse_variant(variant)
    fields = {f.name for f in dataclasses.fields(ViTConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown ViTConfig field(s) {unknown}; allowed: {sorted(fields)}")
    values = dict(dataclasses.asdict(shape), patch_size=patch)
    values.update(overrides)
    return ViTConfig(**values)
