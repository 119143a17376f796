"""A Vision Transformer in one file (Dosovitskiy et al. 2021), pre-LayerNorm, with timm's module names.

Shapes: B batch, C channels, H heads, N tokens (patches + class token), D embed dim, Dh = D / H head dim.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import ViTConfig, config_from_variant


class PatchEmbed(nn.Module):
    """Cuts the image into PxP patches and projects each to D: a conv with stride = patch size."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.patch_size = cfg.patch_size
        self.in_chans = cfg.in_chans
        self.proj = nn.Conv2d(cfg.in_chans, cfg.embed_dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"expected input of shape (B, {self.in_chans}, H, W), got {tuple(x.shape)}")
        if x.shape[2] % self.patch_size or x.shape[3] % self.patch_size:
            raise ValueError(
                f"image size {tuple(x.shape[2:])} is not divisible by the patch size {self.patch_size}"
            )
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, C, H, W) -> (B, N-1, D)


class Attention(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.num_heads = cfg.num_heads
        self.head_dim = cfg.head_dim
        self.scale = self.head_dim**-0.5
        self.backend = cfg.attn_backend
        self.attn_drop = cfg.attn_drop_rate
        self.qkv = nn.Linear(cfg.embed_dim, 3 * cfg.embed_dim, bias=cfg.qkv_bias)
        self.proj = nn.Linear(cfg.embed_dim, cfg.embed_dim)
        self.proj_drop = nn.Dropout(cfg.drop_rate)

    def _project(self, x: torch.Tensor) -> torch.Tensor:
        B, N, _ = x.shape
        return self.qkv(x).view(B, N, 3, self.num_heads, self.head_dim)  # (B, N, 3, H, Dh)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        qkv = self._project(x)
        if self.backend == "triton":
            from .kernels import flash_attention_qkvpacked

            if self.training and self.attn_drop > 0:
                raise ValueError("attn_backend='triton' has no attention dropout; set attn_drop_rate=0")
            x = flash_attention_qkvpacked(qkv, scale=self.scale)  # (B, N, D), read/written by strides
        else:
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, H, N, Dh)
            dropout_p = self.attn_drop if self.training else 0.0
            if self.backend == "sdpa":
                x = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, scale=self.scale)
            else:
                attn = self.attention_weights(q, k)
                x = F.dropout(attn, dropout_p) @ v
            x = x.transpose(1, 2).reshape(B, N, D)
        return self.proj_drop(self.proj(x))

    def attention_weights(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """Explicit softmax(q k^T * scale): (B, H, N, N), rows sum to 1."""
        return ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)

    def attention_map(self, x: torch.Tensor) -> torch.Tensor:
        q, k, _ = self._project(x).permute(2, 0, 3, 1, 4).unbind(0)
        return self.attention_weights(q, k)


class Mlp(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        hidden = int(cfg.embed_dim * cfg.mlp_ratio)
        self.fc1 = nn.Linear(cfg.embed_dim, hidden)
        self.act = nn.GELU()
        self.drop = nn.Dropout(cfg.drop_rate)
        self.fc2 = nn.Linear(hidden, cfg.embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class DropPath(nn.Module):
    """Stochastic depth: drops the whole residual branch per sample with probability p during training."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1.0 - self.p)
        return x * keep / (1.0 - self.p)


class Block(nn.Module):
    def __init__(self, cfg: ViTConfig, drop_path: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.attn = Attention(cfg)
        self.norm2 = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.mlp = Mlp(cfg)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def resample_pos_embed(pos_embed: torch.Tensor, new_grid: tuple[int, int]) -> torch.Tensor:
    """Bicubic interpolation of the patch position embeddings to a new grid; the class token's is kept.

    pos_embed: (1, 1 + h*w, D) with a square h = w grid -> (1, 1 + new_h*new_w, D).
    """
    cls_pos, patch_pos = pos_embed[:, :1], pos_embed[:, 1:]
    old = math.isqrt(patch_pos.shape[1])
    if (old, old) == tuple(new_grid):
        return pos_embed
    dim = patch_pos.shape[-1]
    grid = patch_pos.reshape(1, old, old, dim).permute(0, 3, 1, 2).float()  # (1, D, h, w)
    grid = F.interpolate(grid, size=new_grid, mode="bicubic", align_corners=False, antialias=True)
    patch_pos = grid.permute(0, 2, 3, 1).reshape(1, -1, dim).to(pos_embed.dtype)
    return torch.cat([cls_pos, patch_pos], dim=1)


class VisionTransformer(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.cfg = cfg
        self.num_classes = cfg.num_classes
        self.embed_dim = cfg.embed_dim
        self.patch_embed = PatchEmbed(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.seq_len, cfg.embed_dim))
        self.pos_drop = nn.Dropout(cfg.drop_rate)
        drop_paths = torch.linspace(0, cfg.drop_path_rate, cfg.depth).tolist()
        self.blocks = nn.Sequential(*[Block(cfg, p) for p in drop_paths])
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.head_drop = nn.Dropout(cfg.drop_rate)
        self.head = nn.Linear(cfg.embed_dim, cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """timm's default ('jax'-free) init: trunc-normal 0.02 for embeddings and linears, zero biases."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def set_attn_backend(self, backend: str) -> None:
        """Switch every block's attention backend (the weights stay)."""
        self.cfg = dataclasses.replace(self.cfg, attn_backend=backend)
        for block in self.blocks:
            block.attn.backend = backend

    def _pos_embed(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        pos_embed = resample_pos_embed(self.pos_embed, grid)  # no-op at the configured image size
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        return self.pos_drop(torch.cat([cls, x], dim=1) + pos_embed)  # (B, N, D)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        grid = (x.shape[-2] // self.cfg.patch_size, x.shape[-1] // self.cfg.patch_size)
        return self._pos_embed(self.patch_embed(x), grid)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, N, D) normalised tokens."""
        return self.norm(self.blocks(self.embed(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """(B, N, D) -> (B, num_classes), read from the class token."""
        x = self.head_drop(x[:, 0])
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    @torch.no_grad()
    def attention_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every layer's attention weights, each (B, H, N, N), computed explicitly whatever the backend."""
        maps = []
        x = self.embed(x)
        for block in self.blocks:
            maps.append(block.attn.attention_map(block.norm1(x)))
            x = block(x)
        return maps

    def load_pretrained(self, state_dict: dict[str, torch.Tensor], *, keep_head: bool = True) -> None:
        """Load a (timm-compatible) state dict, resampling pos_embed to this model's grid.

        With keep_head=False, or when the head's shape differs (another number of classes), the head stays
        freshly initialised, as for fine-tuning on a new label set.
        """
        state_dict = dict(state_dict)
        state_dict["pos_embed"] = resample_pos_embed(state_dict["pos_embed"], (self.cfg.grid_size,) * 2)
        head_shapes_match = all(
            k in state_dict and state_dict[k].shape == v.shape for k, v in self.head.state_dict(prefix="head.").items()
        )
        if not keep_head or not head_shapes_match:
            state_dict = {k: v for k, v in state_dict.items() if not k.startswith("head.")}
            missing, unexpected = self.load_state_dict(state_dict, strict=False)
            if unexpected or any(not k.startswith("head.") for k in missing):
                raise ValueError(f"state dict does not fit: missing {missing}, unexpected {unexpected}")
        else:
            self.load_state_dict(state_dict, strict=True)


@torch.no_grad()
def attention_rollout(maps: list[torch.Tensor], discard_ratio: float = 0.0) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema 2020): how much the class token attends to each patch.

    maps: per-layer (B, H, N, N) -> (B, g, g) with each map's class row normalised to sum to 1.
    Heads are averaged, the residual is modelled by adding the identity, rows renormalised, layers multiplied.
    """
    B, _, N, _ = maps[0].shape
    eye = torch.eye(N, device=maps[0].device)
    rollout = eye.expand(B, N, N)
    for attn in maps:
        a = attn.float().mean(dim=1)  # (B, N, N)
        if discard_ratio > 0:
            flat = a.view(B, -1)
            k = int(flat.shape[1] * discard_ratio)
            low = flat.topk(k, dim=-1, largest=False).indices
            flat.scatter_(1, low, 0.0)
        a = (a + eye) / 2
        a = a / a.sum(dim=-1, keepdim=True)
        rollout = a @ rollout
    cls_to_patches = rollout[:, 0, 1:]  # (B, N-1)
    grid = math.isqrt(N - 1)
    cls_to_patches = cls_to_patches / cls_to_patches.sum(dim=-1, keepdim=True)
    return cls_to_patches.reshape(B, grid, grid)


def create_vit(
    variant: str,
    *,
    img_size: int = 224,
    in_chans: int = 3,
    num_classes: int = 1000,
    attn_backend: str = "sdpa",
    **overrides,
) -> VisionTransformer:
    """create_vit('B/16') -> ViT-B/16 for 224 px RGB with 1000 classes; any ViTConfig field can be overridden."""
    cfg = config_from_variant(
        variant, img_size=img_size, in_chans=in_chans, num_classes=num_classes, attn_backend=attn_backend, **overrides
    )
    return VisionTransformer(cfg)
