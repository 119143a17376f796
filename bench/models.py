"""Model registry: one table of model families, each a spec form -> builder, family, attention backends and
weight loader. Every other module (suite validation, tasks, fine-tuning) asks this table.

Specs:
  vit:<variant>        our ViT (vit_impl), e.g. vit:B/16, vit:S/4, vit:Mu/4
  timm-vit:<variant>   timm's VisionTransformer class at one of our variants (the reference beside vit:<variant>)
  timm:<name>          any timm model, e.g. timm:vit_base_patch16_224
  resnet18 ... 152     torchvision ResNets; '-small' (resnet18-small): 3x3 stride-1 stem, no max-pool, for 28-32 px
  resnet20/32/56       CIFAR-style ResNets (He et al. 2016, sec. 4.2), for 28-32 px inputs
  resnet9[-w<width>]   a small, fast ResNet-9 (Page's DAWNBench net) for CPU budgets at 28-32 px (width 16)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

import vit_impl

TORCHVISION_RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
CIFAR_RESNET_DEPTHS = {"resnet20": 20, "resnet32": 32, "resnet56": 56}


class UnknownModelError(ValueError):
    pass


@dataclass(frozen=True)
class ModelInfo:
    """What a built model is (the rows' effective columns)."""

    spec: str
    family: str  # vit | cnn
    impl: str  # native | torchvision | timm
    variant: str  # e.g. "B/16", "resnet50", the timm name
    patch: int | None  # ViT patch size, None for CNNs
    params: int
    attn_backend: str  # attention that runs: math | sdpa | triton for ours, sdpa for timm's ViTs, none for CNNs


@dataclass(frozen=True)
class Built:
    model: nn.Module
    family: str
    variant: str
    patch: int | None
    attn_backend: str


def _fit_by_name(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load every tensor whose name and shape fit; only the classifier may stay fresh (a new label set)."""
    own = model.state_dict()
    fitting = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    missing = [k for k in own if k not in fitting]
    classifier = [k for k in missing if k.split(".")[0] in ("fc", "head", "classifier")]
    if len(missing) != len(classifier) or not fitting:
        raise ValueError(f"checkpoint does not fit the model: missing or mis-shaped {missing[:8]}")
    model.load_state_dict(fitting, strict=False)


def _load_native_vit(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    model.load_pretrained(state, keep_head=False)  # resamples position embeddings; a fresh head


@dataclass(frozen=True)
class ModelFamily:
    form: str  # how a user writes it
    pattern: re.Pattern
    impl: str
    attn_backends: tuple[str, ...]  # the attn_backend axis values it accepts; () = not applicable ("none")
    check: Callable[[re.Match], None]  # raises UnknownModelError for a bad name inside the form
    build: Callable[..., Built]  # (match, img_size, in_chans, num_classes, attn_backend, drop_path_rate)
    load_weights: Callable[[nn.Module, dict], None] = _fit_by_name


# ------------------------------------------------------------------------------------------ builders


def _check_vit_variant(match: re.Match) -> None:
    try:
        vit_impl.parse_variant(match["name"])
    except ValueError as err:
        raise UnknownModelError(str(err)) from None


def _build_native_vit(match, img_size, in_chans, num_classes, backend, drop_path_rate) -> Built:
    model = vit_impl.create_vit(match["name"], img_size=img_size, in_chans=in_chans, num_classes=num_classes,
                                attn_backend=backend, drop_path_rate=drop_path_rate)
    return Built(model, "vit", match["name"], model.cfg.patch_size, backend)


def _build_timm_vit(match, img_size, in_chans, num_classes, backend, drop_path_rate) -> Built:
    from timm.models.vision_transformer import VisionTransformer as TimmViT

    cfg = vit_impl.config_from_variant(match["name"], img_size=img_size)
    model = TimmViT(img_size=img_size, patch_size=cfg.patch_size, in_chans=in_chans, num_classes=num_classes,
                    embed_dim=cfg.embed_dim, depth=cfg.depth, num_heads=cfg.num_heads, mlp_ratio=cfg.mlp_ratio,
                    drop_path_rate=drop_path_rate)
    return Built(model, "vit", match["name"], cfg.patch_size, "sdpa")


def _check_timm(match: re.Match) -> None:
    import timm

    if not timm.is_model(match["name"]):
        raise UnknownModelError(f"unknown timm model {match['name']!r} (see timm.list_models())")


def _build_timm(match, img_size, in_chans, num_classes, backend, drop_path_rate) -> Built:
    import timm
    from timm.models.vision_transformer import VisionTransformer as TimmViT

    name = match["name"]
    try:
        model = timm.create_model(name, pretrained=False, img_size=img_size, in_chans=in_chans, num_classes=num_classes)
    except TypeError:  # models without an img_size argument (CNNs)
        model = timm.create_model(name, pretrained=False, in_chans=in_chans, num_classes=num_classes)
    if isinstance(model, TimmViT):
        return Built(model, "vit", name, model.patch_embed.patch_size[0], "sdpa")
    return Built(model, "cnn", name, None, "none")


def _build_torchvision_resnet(match, img_size, in_chans, num_classes, backend, drop_path_rate) -> Built:
    import torchvision

    model = getattr(torchvision.models, match["name"])(weights=None, num_classes=num_classes)
    if match["small"]:
        model.conv1 = nn.Conv2d(in_chans, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    elif in_chans != 3:
        model.conv1 = nn.Conv2d(in_chans, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return Built(model, "cnn", match[0], None, "none")


def _build_cifar_resnet(match, img_size, in_chans, num_classes, backend, drop_path_rate) -> Built:
    model = CifarResNet(CIFAR_RESNET_DEPTHS[match[0]], in_chans=in_chans, num_classes=num_classes)
    return Built(model, "cnn", match[0], None, "none")


def _build_resnet9(match, img_size, in_chans, num_classes, backend, drop_path_rate) -> Built:
    width = int(match["width"] or 16)
    return Built(ResNet9(width, in_chans=in_chans, num_classes=num_classes), "cnn", match[0], None, "none")


def _no_check(match: re.Match) -> None:
    return None


FAMILIES: tuple[ModelFamily, ...] = (
    ModelFamily("vit:<variant>", re.compile(r"vit:(?P<name>.+)"), "native", vit_impl.ATTN_BACKENDS,
                _check_vit_variant, _build_native_vit, _load_native_vit),
    ModelFamily("timm-vit:<variant>", re.compile(r"timm-vit:(?P<name>.+)"), "timm", (), _check_vit_variant,
                _build_timm_vit),
    ModelFamily("timm:<timm model name>", re.compile(r"timm:(?P<name>.+)"), "timm", (), _check_timm, _build_timm),
    ModelFamily("resnet18..resnet152[-small]",
                re.compile(rf"(?P<name>{'|'.join(TORCHVISION_RESNETS)})(?P<small>-small)?"), "torchvision", (),
                _no_check, _build_torchvision_resnet),
    ModelFamily("resnet20 | resnet32 | resnet56", re.compile("|".join(CIFAR_RESNET_DEPTHS)), "native", (),
                _no_check, _build_cifar_resnet),
    ModelFamily("resnet9[-w<width>]", re.compile(r"resnet9(-w(?P<width>[1-9][0-9]*))?"), "native", (), _no_check,
                _build_resnet9),
)
SPEC_FORMS = tuple(f.form for f in FAMILIES)


def family_of(spec: str) -> tuple[ModelFamily, re.Match]:
    """The family whose form `spec` is written in, and the match; UnknownModelError otherwise."""
    if not isinstance(spec, str):
        raise UnknownModelError(f"model spec must be a string, got {spec!r}")
    for fam in FAMILIES:
        match = fam.pattern.fullmatch(spec)
        if match:
            fam.check(match)
            return fam, match
    raise UnknownModelError(f"unknown model spec {spec!r}; known: {', '.join(SPEC_FORMS)}")


def check_spec(spec: str) -> None:
    """Raise UnknownModelError unless `spec` names a model the registry can build (without building it)."""
    family_of(spec)


def attn_backends(spec: str) -> tuple[str, ...]:
    """The attention backends a model accepts; () where the choice does not apply."""
    return family_of(spec)[0].attn_backends


def build_model(spec: str, *, img_size: int, in_chans: int = 3, num_classes: int = 1000,
                attn_backend: str = "sdpa", drop_path_rate: float = 0.0) -> tuple[nn.Module, ModelInfo]:
    """Build the model named by `spec` for img_size x img_size inputs with in_chans channels; drop_path_rate
    (stochastic depth) applies to ViTs only."""
    fam, match = family_of(spec)
    built = fam.build(match, img_size, in_chans, num_classes, attn_backend, drop_path_rate)
    params = sum(p.numel() for p in built.model.parameters())
    return built.model, ModelInfo(spec, built.family, fam.impl, built.variant, built.patch, params,
                                  built.attn_backend)


def load_weights(spec: str, model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Fine-tuning: load a state dict into a model built from `spec` (classifier left fresh)."""
    family_of(spec)[0].load_weights(model, state)


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


# ---------------------------------------------------------------- ResNet-9 (Page 2018, the DAWNBench CIFAR-10 net)


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


def spec_slug(spec: str) -> str:
    """A file-name-safe form of a spec: 'vit:B/16' -> 'vit-B-16'."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", spec).strip("-")
