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
from torch import nn

import cnn_impl
import vit_impl

TORCHVISION_RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
CIFAR_RESNET_DEPTHS = {"resnet20": 20, "resnet32": 32, "resnet56": 56}
RESNET9_WIDTH = 16  # resnet9 is resnet9-w16, written without its width


class UnknownModelError(ValueError):
    pass


@dataclass(frozen=True)
class ModelInfo:
    """What a built model is (the rows' effective columns) and how it runs."""

    spec: str
    family: str  # vit | cnn
    impl: str  # native | torchvision | timm
    variant: str  # e.g. "B/16", "resnet50", the timm name
    patch: int | None  # ViT patch size, None for CNNs
    params: int
    attn_backend: str  # attention that runs: math | sdpa | triton for ours, sdpa for timm's ViTs, none for CNNs

    @property
    def channels_last(self) -> bool:
        """CNNs run in the channels_last layout: faster convolutions on tensor cores and on oneDNN CPUs."""
        return self.family == "cnn"

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format


def _fit_by_name(model: nn.Module, state: dict[str, torch.Tensor], classifier: tuple[str, ...]) -> None:
    """Load every tensor whose name and shape fit; only the classifier may stay fresh (a new label set)."""
    own = model.state_dict()
    fitting = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    missing = [k for k in own if k not in fitting]
    fresh = [k for k in missing if k.split(".")[0] in classifier]
    if len(missing) != len(fresh) or not fitting:
        raise ValueError(f"checkpoint does not fit the model: missing or mis-shaped {missing[:8]}")
    model.load_state_dict(fitting, strict=False)


@dataclass(frozen=True)
class ModelFamily:
    """A row of the model table: how a spec is written, how it is built, and what it is."""

    form: str  # how a user writes it
    pattern: re.Pattern
    impl: str
    family: str | None  # vit | cnn; None: decided by the built model's class (timm:<name>)
    attn_backends: tuple[str, ...]  # the attn_backend axis values it accepts; () = not applicable ("none")
    spelling: Callable[[re.Match], str]  # the spec's one spelling; UnknownModelError for a bad name inside the form
    build: Callable[..., nn.Module]  # (match, img_size, in_chans, num_classes, attn_backend, drop_path_rate)
    vit_variant: bool = False  # the name is one of our ViT variants (vit_impl), e.g. "Ti/4"
    native_vit: bool = False  # our ViT: attention maps, the MAE encoder, timm-compatible weight names
    timm_weights: bool = False  # timm publishes pretrained weights under the name (init: timm)
    classifier: tuple[str, ...] = ("fc", "head", "classifier")  # modules left fresh when fine-tuning

    def load_weights(self, model: nn.Module, state: dict[str, torch.Tensor]) -> None:
        if self.native_vit:
            model.load_pretrained(state, keep_head=False)  # resamples position embeddings; a fresh head
        else:
            _fit_by_name(model, state, self.classifier)


# ------------------------------------------------------------------------------------------ builders


def _vit_spelling(match: re.Match) -> str:
    try:
        variant = vit_impl.canonical_variant(match["variant"])
    except ValueError as err:
        raise UnknownModelError(str(err)) from None
    return match[0][:match.start("variant")] + variant


def _build_native_vit(match, img_size, in_chans, num_classes, backend, drop_path_rate) -> nn.Module:
    return vit_impl.create_vit(match["variant"], img_size=img_size, in_chans=in_chans, num_classes=num_classes,
                               attn_backend=backend, drop_path_rate=drop_path_rate)


def _build_timm_vit(match, img_size, in_chans, num_classes, backend, drop_path_rate) -> nn.Module:
    from timm.models.vision_transformer import VisionTransformer as TimmViT

    cfg = vit_impl.config_from_variant(match["variant"], img_size=img_size)
    return TimmViT(img_size=img_size, patch_size=cfg.patch_size, in_chans=in_chans, num_classes=num_classes,
                   embed_dim=cfg.embed_dim, depth=cfg.depth, num_heads=cfg.num_heads, mlp_ratio=cfg.mlp_ratio,
                   drop_path_rate=drop_path_rate)


def _timm_spelling(match: re.Match) -> str:
    import timm

    if not timm.is_model(match["variant"]):
        raise UnknownModelError(f"unknown timm model {match['variant']!r} (see timm.list_models())")
    name, tag = timm.models.split_model_name_tag(match["variant"])
    return f"timm:{name}" + (f".{tag}" if tag else "")


def _build_timm(match, img_size, in_chans, num_classes, backend, drop_path_rate) -> nn.Module:
    import timm

    try:
        return timm.create_model(match["variant"], pretrained=False, img_size=img_size, in_chans=in_chans,
                                 num_classes=num_classes)
    except TypeError:  # models without an img_size argument (CNNs)
        return timm.create_model(match["variant"], pretrained=False, in_chans=in_chans, num_classes=num_classes)


def _build_torchvision_resnet(match, img_size, in_chans, num_classes, backend, drop_path_rate) -> nn.Module:
    import torchvision

    model = getattr(torchvision.models, match["base"])(weights=None, num_classes=num_classes)
    if match["small"]:
        model.conv1 = nn.Conv2d(in_chans, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    elif in_chans != 3:
        model.conv1 = nn.Conv2d(in_chans, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return model


def _build_cifar_resnet(match, img_size, in_chans, num_classes, backend, drop_path_rate) -> nn.Module:
    return cnn_impl.CifarResNet(CIFAR_RESNET_DEPTHS[match[0]], in_chans=in_chans, num_classes=num_classes)


def _build_resnet9(match, img_size, in_chans, num_classes, backend, drop_path_rate) -> nn.Module:
    return cnn_impl.ResNet9(int(match["width"] or RESNET9_WIDTH), in_chans=in_chans, num_classes=num_classes)


def _as_written(match: re.Match) -> str:
    return match[0]


def _resnet9_spelling(match: re.Match) -> str:
    return "resnet9" if match["width"] in (None, str(RESNET9_WIDTH)) else match[0]


FAMILIES: tuple[ModelFamily, ...] = (
    ModelFamily("vit:<variant>", re.compile(r"vit:(?P<variant>.+)"), "native", "vit", vit_impl.ATTN_BACKENDS,
                _vit_spelling, _build_native_vit, vit_variant=True, native_vit=True),
    ModelFamily("timm-vit:<variant>", re.compile(r"timm-vit:(?P<variant>.+)"), "timm", "vit", (), _vit_spelling,
                _build_timm_vit, vit_variant=True),
    ModelFamily("timm:<timm model name>", re.compile(r"timm:(?P<variant>.+)"), "timm", None, (), _timm_spelling,
                _build_timm, timm_weights=True),
    ModelFamily("resnet18..resnet152[-small]",
                re.compile(rf"(?P<base>{'|'.join(TORCHVISION_RESNETS)})(?P<small>-small)?"), "torchvision", "cnn", (),
                _as_written, _build_torchvision_resnet),
    ModelFamily("resnet20 | resnet32 | resnet56", re.compile("|".join(CIFAR_RESNET_DEPTHS)), "native", "cnn", (),
                _as_written, _build_cifar_resnet),
    ModelFamily("resnet9[-w<width>]", re.compile(r"resnet9(-w(?P<width>[1-9][0-9]*))?"), "native", "cnn", (),
                _resnet9_spelling, _build_resnet9),
)
SPEC_FORMS = tuple(f.form for f in FAMILIES)


def family_of(spec: str) -> tuple[ModelFamily, re.Match]:
    """The family whose form `spec` is written in, and the match; UnknownModelError otherwise."""
    if not isinstance(spec, str):
        raise UnknownModelError(f"model spec must be a string, got {spec!r}")
    for fam in FAMILIES:
        match = fam.pattern.fullmatch(spec)
        if match:
            fam.spelling(match)  # a bad name inside the form fails here
            return fam, match
    raise UnknownModelError(f"unknown model spec {spec!r}; known: {', '.join(SPEC_FORMS)}")


def model_family(spec: str) -> ModelFamily:
    return family_of(spec)[0]


def check_spec(spec: str) -> str:
    """`spec` if it names a model the registry can build (without building it), written in its one spelling (a
    second spelling of one model would be a second cell of it); UnknownModelError otherwise."""
    fam, match = family_of(spec)
    spelling = fam.spelling(match)
    if spec != spelling:
        raise UnknownModelError(f"model {spec!r} is written {spelling!r} (one model, one name in every row)")
    return spec


def _check_compare_to(value: dict) -> dict:
    if "model" in value:
        check_spec(value["model"])
    return value


AXIS_CHECKS = {"model": check_spec, "compare_to": _check_compare_to}  # applied by the suite layer to these axes


def vit_variant(spec: str) -> str | None:
    """The ViT variant a model spec names ("Ti/4" for vit:Ti/4 and timm-vit:Ti/4), None for other models."""
    fam, match = family_of(spec)
    return match["variant"] if fam.vit_variant else None


def attn_backends(spec: str) -> tuple[str, ...]:
    """The attention backends a model accepts; () where the choice does not apply."""
    return model_family(spec).attn_backends


def build_model(spec: str, *, img_size: int, in_chans: int = 3, num_classes: int = 1000,
                attn_backend: str = "sdpa", drop_path_rate: float = 0.0) -> tuple[nn.Module, ModelInfo]:
    """Build the model named by `spec` for img_size x img_size inputs with in_chans channels; drop_path_rate
    (stochastic depth) applies to ViTs only."""
    from timm.models.vision_transformer import VisionTransformer as TimmViT

    fam, match = family_of(spec)
    model = fam.build(match, img_size, in_chans, num_classes, attn_backend, drop_path_rate)
    is_vit = isinstance(model, (vit_impl.VisionTransformer, TimmViT))
    family = fam.family or ("vit" if is_vit else "cnn")
    patch = model.patch_embed.patch_size if is_vit else None
    used = attn_backend if fam.attn_backends else ("sdpa" if family == "vit" else "none")
    info = ModelInfo(spec, family, fam.impl, match.groupdict().get("variant") or match[0],
                     patch[0] if isinstance(patch, tuple) else patch, sum(p.numel() for p in model.parameters()), used)
    return model, info


def load_weights(spec: str, model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Fine-tuning: load a state dict into a model built from `spec` (classifier left fresh)."""
    model_family(spec).load_weights(model, state)
