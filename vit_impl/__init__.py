"""vit_impl: a native Vision Transformer with selectable attention backends (math, sdpa, triton)."""

from .config import ATTN_BACKENDS, VARIANTS, ViTConfig, canonical_variant, config_from_variant, parse_variant
from .mae import MaskedAutoencoder
from .model import VisionTransformer, attention_rollout, create_vit, resample_pos_embed

__all__ = [
    "ATTN_BACKENDS",
    "MaskedAutoencoder",
    "VARIANTS",
    "ViTConfig",
    "VisionTransformer",
    "attention_rollout",
    "canonical_variant",
    "config_from_variant",
    "create_vit",
    "parse_variant",
    "resample_pos_embed",
]
