"""ResNet-9 (Page 2018, the DAWNBench CIFAR-10 net) at any width, for CPU budgets on 28-32 px inputs."""

from __future__ import annotations

import torch
from torch import nn


def _conv_bn(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class _Residual(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(_conv_bn(channels, channels), _conv_bn(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResNet9(nn.Module):
    """A small, fast ResNet for CPU budgets on 28-32 px inputs: prep conv, then three stages that double the
    width and halve the resolution (conv-BN-ReLU + max-pool), residual blocks after the first and the last,
    global max-pool, linear classifier. Widths w, 2w, 4w, 8w (w = 16: 0.41M parameters)."""

    def __init__(self, width: int = 16, in_chans: int = 3, num_classes: int = 10):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            _conv_bn(in_chans, w),  # (B, w, H, W)
            _conv_bn(w, 2 * w), nn.MaxPool2d(2), _Residual(2 * w),  # (B, 2w, H/2, W/2)
            _conv_bn(2 * w, 4 * w), nn.MaxPool2d(2),  # (B, 4w, H/4, W/4)
            _conv_bn(4 * w, 8 * w), nn.MaxPool2d(2), _Residual(8 * w),  # (B, 8w, H/8, W/8)
        )
        self.fc = nn.Linear(8 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).amax(dim=(2, 3)))
