"""On-device augmentation of uint8 batches: random crop, horizontal flip, resize and normalisation."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .readers import TrainData


class DeviceAugment:
    """uint8 (B, C, H, W) batches -> normalised float (B, C, S, S) on the data's device: random crop with
    zero padding (pad 0: none), horizontal flip where label-preserving, resize to the model's size S."""

    def __init__(self, data: TrainData, img_size: int, pad: int | None = None, flip: bool = True):
        height = data.train.x.shape[-1]
        self.pad = max(1, height // 8) if pad is None else pad
        self.hflip = data.hflip and flip
        self.img_size = img_size
        device = data.train.x.device
        self.mean = torch.tensor(data.mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(data.std, device=device).view(1, -1, 1, 1)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        x = (x.to(self.mean.device).float() / 255 - self.mean) / self.std
        if x.shape[-1] != self.img_size:
            x = F.interpolate(x, size=(self.img_size, self.img_size), mode="bilinear", align_corners=False,
                              antialias=True)
        return x

    def train(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        if self.pad == 0 and not self.hflip:
            return self.normalise(x)
        B, _, H, W = x.shape
        p = self.pad
        padded = F.pad(x, (p, p, p, p))  # (B, C, H+2p, W+2p)
        dy = torch.randint(0, 2 * p + 1, (B,), device=x.device, generator=gen)
        dx = torch.randint(0, 2 * p + 1, (B,), device=x.device, generator=gen)
        rows = (dy[:, None] + torch.arange(H, device=x.device))[:, :, None]  # (B, H, 1)
        cols = (dx[:, None] + torch.arange(W, device=x.device))[:, None, :]  # (B, 1, W)
        if self.hflip:
            flip = torch.rand(B, device=x.device, generator=gen) < 0.5
            cols = torch.where(flip[:, None, None], cols.flip(-1), cols)
        batch = torch.arange(B, device=x.device)[:, None, None]
        crops = padded.permute(0, 2, 3, 1)[batch, rows, cols]  # (B, H, W, C)
        return self.normalise(crops.permute(0, 3, 1, 2))
