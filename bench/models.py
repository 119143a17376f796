"""Model registry: a spec string -> a model and its metadata.

Specs:
  vit:<variant>        our ViT (vit_impl), e.g. vit:B/16, vit:S/4, vit:Mu/4
  resnet18 ... 152     torchvision ResNets; add '-small' (resnet18-small) for 28-32 px inputs:
                       3x3 stride-1 stem, no max-pool
  resnet20/32/56       CIFAR-style ResNets (He et al. 2016, sec. 4.2), for 28-32 px inputs
  timm:<name>          any timm model, e.g. timm:vit_base_patch16_224 (timm's fused-attention ViT)
  timm-vit:<variant>   timm's VisionTransformer class at one of our variants (timm-vit:Ti/4 at 28 px), the
                       reference implementation beside vit:<variant> where timm has no such named model
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

import vit_impl

TORCHVISION_RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
CIFAR_RESNET_DEPTHS = {"resnet20": 20, "resnet32": 32, "resnet56": 56}
SPEC_FORMS = (
    "vit:<variant> (variants: " + ", ".join(f"{n}/<patch>" for n in vit_impl.VARIANTS) + ")",
    *TORCHVISION_RESNETS,
    *(f"{name}-small" for name in TORCHVISION_RESNETS),
    *CIFAR_RESNET_DEPTHS,
    "timm:<timm model name>",
    "timm-vit:<variant>",
)


@dataclass(frozen=True)
class ModelInfo:
    spec: str
    family: str  # vit | cnn
    impl: str  # native | torchvision | timm
    variant: str  # e.g. "B/16", "resnet50", the timm name
    patch: int | None  # ViT patch size, None for CNNs
    params: int
    attn_backend: str  # the ViT's attention backend; "none" for CNNs


class UnknownModelError(ValueError):
    pass


def check_spec(spec: str) -> None:
    """Raise UnknownModelError unless `spec` names a model the registry can build (without building it)."""
    if not isinstance(spec, str):
        raise UnknownModelError(f"model spec must be a string, got {spec!r}")
    if spec.startswith(("vit:", "timm-vit:")):
        vit_impl.parse_variant(spec.split(":", 1)[1])
        return
    if spec.startswith("timm:"):
        import timm

        if not timm.is_model(spec[5:]):
            raise UnknownModelError(f"unknown timm model {spec[5:]!r} (see timm.list_models())")
        return
    if spec in TORCHVISION_RESNETS or spec.removesuffix("-small") in TORCHVISION_RESNETS:
        return
    if spec in CIFAR_RESNET_DEPTHS:
        return
    raise UnknownModelError(f"unknown model spec {spec!r}; known: {', '.join(SPEC_FORMS)}")


def build_model(
    spec: str, *, img_size: int, in_chans: int = 3, num_classes: int = 1000, attn_backend: str = "sdpa", **vit_overrides
) -> tuple[nn.Module, ModelInfo]:
    """Build the model named by `spec` for img_size x img_size inputs with in_chans channels."""
    check_spec(spec)
    patch = None
    backend = "none"
    if spec.startswith("vit:"):
        model = vit_impl.create_vit(
            spec[4:], img_size=img_size, in_chans=in_chans, num_classes=num_classes, attn_backend=attn_backend,
            **vit_overrides,
        )
        family, impl, variant, patch, backend = "vit", "native", spec[4:], model.cfg.patch_size, attn_backend
    elif spec.startswith("timm-vit:"):
        model = _build_timm_vit(spec[9:], img_size, in_chans, num_classes)
        family, impl, variant, patch, backend = "vit", "timm", spec[9:], model.patch_embed.patch_size[0], "sdpa"
    elif spec.startswith("timm:"):
        model, patch = _build_timm(spec[5:], img_size, in_chans, num_classes)
        family, impl, variant = ("vit", "timm", spec[5:]) if patch else ("cnn", "timm", spec[5:])
        backend = "sdpa" if patch else "none"
    elif spec in CIFAR_RESNET_DEPTHS:
        model = CifarResNet(CIFAR_RESNET_DEPTHS[spec], in_chans=in_chans, num_classes=num_classes)
        family, impl, variant = "cnn", "native", spec
    else:
        model = _build_torchvision_resnet(spec, in_chans, num_classes)
        family, impl, variant = "cnn", "torchvision", spec
    params = sum(p.numel() for p in model.parameters())
    return model, ModelInfo(spec, family, impl, variant, patch, params, backend)


def _build_timm(name: str, img_size: int, in_chans: int, num_classes: int) -> tuple[nn.Module, int | None]:
    import timm
    from timm.models.vision_transformer import VisionTransformer as TimmViT

    try:
        model = timm.create_model(name, pretrained=False, img_size=img_size, in_chans=in_chans, num_classes=num_classes)
    except TypeError:  # models without an img_size argument (CNNs)
        model = timm.create_model(name, pretrained=False, in_chans=in_chans, num_classes=num_classes)
    patch = model.patch_embed.patch_size[0] if isinstance(model, TimmViT) else None
    return model, patch


def _build_timm_vit(variant: str, img_size: int, in_chans: int, num_classes: int) -> nn.Module:
    from timm.models.vision_transformer import VisionTransformer as TimmViT

    cfg = vit_impl.config_from_variant(variant, img_size=img_size)
    return TimmViT(img_size=img_size, patch_size=cfg.patch_size, in_chans=in_chans, num_classes=num_classes,
                   embed_dim=cfg.embed_dim, depth=cfg.depth, num_heads=cfg.num_heads, mlp_ratio=cfg.mlp_ratio)


def _build_torchvision_resnet(spec: str, in_chans: int, num_classes: int) -> nn.Module:
    import torchvision

    name = spec.removesuffix("-small")
    model = getattr(torchvision.models, name)(weights=None, num_classes=num_classes)
    if spec.endswith("-small"):
        model.conv1 = nn.Conv2d(in_chans, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    elif in_chans != 3:
        model.conv1 = nn.Conv2d(in_chans, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return model


# ------------------------------------------------------------------ CIFAR-style ResNet (He et al. 2016, 4.2)


class _BasicBlock(nn.Module):
    """3x3 conv - BN - ReLU - 3x3 conv - BN, plus an identity shortcut that subsamples and zero-pads channels
    when the shape changes (option A of the paper: no extra parameters)."""

    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.stride = stride
        self.pad_channels = planes - in_planes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x[:, :, :: self.stride, :: self.stride] if self.stride > 1 else x
        if self.pad_channels:
            half = self.pad_channels // 2
            shortcut = F.pad(shortcut, (0, 0, 0, 0, half, self.pad_channels - half))
        return F.relu(out + shortcut)


class CifarResNet(nn.Module):
    """ResNet-(6n+2): 16-32-64 channels, n blocks per stage, global average pool, linear classifier."""

    def __init__(self, depth: int, in_chans: int = 3, num_classes: int = 10):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56, 110), got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_chans, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        layers, in_planes = [], 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(n):
                layers.append(_BasicBlock(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(F.relu(self.bn1(self.conv1(x))))  # (B, 64, H/4, W/4)
        return self.fc(x.mean(dim=(2, 3)))


def spec_slug(spec: str) -> str:
    """A file-name-safe form of a spec: 'vit:B/16' -> 'vit-B-16'."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", spec).strip("-")
