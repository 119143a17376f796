"""Masked autoencoder (He et al. 2022, "Masked Autoencoders Are Scalable Vision Learners") on our ViT.

Pre-training: cut the image into L patches, hide a random `mask_ratio` of them (75 % by default), run the
encoder -- a plain `VisionTransformer` -- on the class token and the visible patches only (that is where the
compute saving comes from: the encoder sees 1 + L/4 tokens instead of 1 + L), then a light decoder fills the
hidden positions with a shared learned `mask_token`, adds its own position embeddings and predicts the pixels of
every patch. The loss is the mean squared error on the masked patches only.

After pre-training, `encoder_state_dict()` loads into `create_vit(variant, ..., num_classes=K)` with
`load_pretrained(state, keep_head=False)` for fine-tuning: every weight but the new head comes from the MAE.

Choices (MAE's unless said otherwise):
- Position embeddings are fixed 2-D sin-cos tables, for the decoder (a buffer) and for the encoder (its
  `pos_embed` is overwritten with the table and frozen during pre-training; it is saved with the encoder and
  becomes an ordinary learned embedding again when fine-tuning).
- norm_pix_loss=True (MAE's best setting): the target of each patch is its pixels normalised by the patch's
  own mean and variance, (x - mean) / sqrt(var + 1e-6), which teaches local contrast and edges rather than
  absolute brightness. On Fashion-MNIST the flat background patches have target 0 whatever the setting.
- The decoder is `decoder_depth` of our ViT `Block`s of width `decoder_dim` with `decoder_heads` heads, built
  from the encoder's config (same mlp_ratio, norm eps and attention backend; no dropout or drop path). The
  defaults (2 x 128, 4 heads) suit 28 px Fashion-MNIST with "Mu/4" or "Mi/4"; MAE's ImageNet decoder is
  8 x 512 with 16 heads.
- Linear layers of the decoder start like the ViT's (trunc-normal 0.02, zero bias), the mask token N(0, 0.02).

Shapes: B batch, C channels, P patch size, L = (img_size / P)^2 patches, K = int(L * (1 - mask_ratio))
visible patches, D encoder width, Dd decoder width. Masks are (B, L) with 1 = masked (hidden), 0 = visible.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from .model import Block, VisionTransformer, create_vit


def sincos_pos_embed(dim: int, grid_size: int) -> torch.Tensor:
    """Fixed 2-D sin-cos position embeddings (1, 1 + grid^2, dim), a zero row first for the class token.

    Half the channels encode the row, half the column, each as [sin(pos * w), cos(pos * w)] with the
    transformer's frequencies w = 10000^(-i / (dim / 4)); patches are in row-major order, as PatchEmbed's.
    """
    if dim % 4:
        raise ValueError(f"sin-cos position embeddings need a width divisible by 4, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))  # (dim/4,)
    rows, cols = torch.meshgrid(torch.arange(grid_size), torch.arange(grid_size), indexing="ij")
    parts = []
    for pos in (rows, cols):
        angles = pos.flatten().double()[:, None] * omega[None]  # (L, dim/4)
        parts += [angles.sin(), angles.cos()]
    table = torch.cat([torch.zeros(1, dim, dtype=torch.float64), torch.cat(parts, dim=1)])  # (1 + L, dim)
    return table.float().unsqueeze(0)


class MaskedAutoencoder(nn.Module):
    """MAE pre-training model for a ViT variant ("Mu/4", "B/16", ...); `encoder` is our VisionTransformer
    without a head. mask_ratio is the default for forward(); the decoder_* arguments size the decoder."""

    def __init__(
        self,
        variant: str,
        *,
        img_size: int,
        in_chans: int,
        mask_ratio: float = 0.75,
        decoder_depth: int = 2,
        decoder_dim: int = 128,
        decoder_heads: int = 4,
        norm_pix_loss: bool = True,
        attn_backend: str = "sdpa",
    ):
        super().__init__()
        self.encoder: VisionTransformer = create_vit(
            variant, img_size=img_size, in_chans=in_chans, num_classes=0, attn_backend=attn_backend
        )
        cfg = self.encoder.cfg
        self.patch_size = cfg.patch_size
        self.mask_ratio = self._check_ratio(mask_ratio)
        self.norm_pix_loss = norm_pix_loss
        with torch.no_grad():
            self.encoder.pos_embed.copy_(sincos_pos_embed(cfg.embed_dim, cfg.grid_size))
        self.encoder.pos_embed.requires_grad_(False)

        dec_cfg = dataclasses.replace(  # validates the decoder's width / heads; backend, mlp_ratio, eps as encoder's
            cfg,
            embed_dim=decoder_dim,
            depth=decoder_depth,
            num_heads=decoder_heads,
            num_classes=0,
            drop_rate=0.0,
            attn_drop_rate=0.0,
            drop_path_rate=0.0,
        )
        self.decoder_embed = nn.Linear(cfg.embed_dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.register_buffer("decoder_pos_embed", sincos_pos_embed(decoder_dim, cfg.grid_size), persistent=False)
        self.decoder_blocks = nn.Sequential(*[Block(dec_cfg, 0.0) for _ in range(decoder_depth)])
        self.decoder_norm = nn.LayerNorm(decoder_dim, eps=cfg.norm_eps)
        self.decoder_pred = nn.Linear(decoder_dim, cfg.patch_size**2 * in_chans)

        nn.init.normal_(self.mask_token, std=0.02)
        for module in (self.decoder_embed, *self.decoder_blocks.modules(), self.decoder_pred):
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    @staticmethod
    def _check_ratio(mask_ratio: float) -> float:
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
        return mask_ratio

    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, L, P*P*C); patches row-major as PatchEmbed's, pixels (row, col, channel) inside."""
        B, C, H, W = imgs.shape
        p = self.patch_size
        x = imgs.reshape(B, C, H // p, p, W // p, p)
        return x.permute(0, 2, 4, 3, 5, 1).reshape(B, (H // p) * (W // p), p * p * C)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, P*P*C) -> (B, C, H, W), the inverse of patchify for this model's (square) image size."""
        B = x.shape[0]
        g, p, C = self.encoder.cfg.grid_size, self.patch_size, self.encoder.cfg.in_chans
        x = x.reshape(B, g, g, p, p, C).permute(0, 5, 1, 3, 2, 4)  # (B, C, g, p, g, p)
        return x.reshape(B, C, g * p, g * p)

    @staticmethod
    def random_masking(
        x: torch.Tensor, mask_ratio: float, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Keep a random K = int(L * (1 - mask_ratio)) of the L tokens of each sample, a different set per sample.

        x: (B, L, D) -> x_visible (B, K, D) in shuffled order, mask (B, L) in the original order (1 = masked),
        ids_restore (B, L): x_full.gather(1, ids_restore) puts a shuffled sequence back in the original order.
        K uses MAE's formula verbatim, so floating point can round it down (L=10, ratio 0.9 gives 0).
        """
        B, L, D = x.shape
        keep = int(L * (1 - mask_ratio))
        device = generator.device if generator is not None else x.device
        noise = torch.rand(B, L, generator=generator, device=device).to(x.device)  # (B, L) in [0, 1)
        ids_shuffle = noise.argsort(dim=1)  # ascending: the first K are kept
        ids_restore = ids_shuffle.argsort(dim=1)
        x_visible = x.gather(1, ids_shuffle[:, :keep, None].expand(-1, -1, D))
        mask = torch.ones(B, L, device=x.device)
        mask[:, :keep] = 0
        return x_visible, mask.gather(1, ids_restore), ids_restore

    def forward_encoder(
        self, imgs: torch.Tensor, mask_ratio: float, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, C, H, W) -> latent (B, 1 + K, D) (class token first, then the visible patches), mask, ids_restore."""
        x = self.encoder.embed(imgs)  # (B, 1 + L, D), position embeddings added
        visible, mask, ids_restore = self.random_masking(x[:, 1:], mask_ratio, generator)
        x = torch.cat([x[:, :1], visible], dim=1)  # (B, 1 + K, D)
        return self.encoder.norm(self.encoder.blocks(x)), mask, ids_restore

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """latent (B, 1 + K, D), ids_restore (B, L) -> predicted pixels of every patch (B, L, P*P*C)."""
        x = self.decoder_embed(latent)  # (B, 1 + K, Dd)
        B, L = ids_restore.shape
        patches = torch.cat([x[:, 1:], self.mask_token.expand(B, L + 1 - x.shape[1], -1)], dim=1)  # (B, L, Dd)
        patches = patches.gather(1, ids_restore[..., None].expand(-1, -1, x.shape[2]))  # original order
        x = torch.cat([x[:, :1], patches], dim=1) + self.decoder_pos_embed  # (B, 1 + L, Dd)
        x = self.decoder_norm(self.decoder_blocks(x))
        return self.decoder_pred(x[:, 1:])  # drop the class token

    @staticmethod
    def patch_stats(patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L, P*P*C) -> each patch's mean and sqrt(var + 1e-6), both (B, L, 1); unbiased var, as MAE."""
        return patches.mean(dim=-1, keepdim=True), (patches.var(dim=-1, keepdim=True) + 1e-6) ** 0.5

    def target(self, imgs: torch.Tensor) -> torch.Tensor:
        """The regression target (B, L, P*P*C): pixels, per-patch normalised when norm_pix_loss."""
        target = self.patchify(imgs)
        if self.norm_pix_loss:
            mean, std = self.patch_stats(target)
            target = (target - mean) / std
        return target

    def forward_loss(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean over the masked patches of each patch's mean squared error; 0 when nothing is masked."""
        per_patch = (pred - self.target(imgs)).pow(2).mean(dim=-1)  # (B, L)
        return (per_patch * mask).sum() / mask.sum().clamp(min=1)

    def forward(
        self, imgs: torch.Tensor, mask_ratio: float | None = None, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """imgs (B, C, H, W) -> loss (scalar), pred (B, L, P*P*C), mask (B, L); mask_ratio defaults to the model's."""
        ratio = self.mask_ratio if mask_ratio is None else self._check_ratio(mask_ratio)
        latent, mask, ids_restore = self.forward_encoder(imgs, ratio, generator)
        pred = self.forward_decoder(latent, ids_restore)
        return self.forward_loss(imgs, pred, mask), pred, mask

    @torch.no_grad()
    def reconstruct(
        self, imgs: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """For figures: (masked_imgs, recon_imgs), both (B, C, H, W) in the input's pixel space.

        masked_imgs: the input with the masked patches set to 0. recon_imgs: the input's visible patches with
        the predicted masked patches pasted in (MAE's "reconstruction + visible" panel). With norm_pix_loss the
        prediction is in normalised units; as in MAE's figures it is mapped back with the true patch's own
        mean and variance (which the model never saw), so only the shape of the patch is the model's.
        Uses the model's mask_ratio; call .eval() first if the model has dropout.
        """
        _, pred, mask = self(imgs, generator=generator)
        patches = self.patchify(imgs)  # (B, L, P*P*C)
        if self.norm_pix_loss:
            mean, std = self.patch_stats(patches)
            pred = pred * std + mean
        mask = mask[..., None]  # (B, L, 1)
        return self.unpatchify(patches * (1 - mask)), self.unpatchify(patches * (1 - mask) + pred * mask)

    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        """The encoder's weights (timm names, no head): load with create_vit(...).load_pretrained(state,
        keep_head=False) -- every key but head.* is loaded."""
        return self.encoder.state_dict()
