import pytest
import torch

from bench.models import UnknownModelError, build_model, check_spec

SPECS = [
    ("vit:Mu/4", 32, "vit", "native"),
    ("vit:Ti/8", 32, "vit", "native"),
    ("resnet18", 64, "cnn", "torchvision"),
    ("resnet34", 64, "cnn", "torchvision"),
    ("resnet50", 64, "cnn", "torchvision"),
    ("resnet101", 64, "cnn", "torchvision"),
    ("resnet152", 64, "cnn", "torchvision"),
    ("resnet18-small", 28, "cnn", "torchvision"),
    ("resnet20", 28, "cnn", "native"),
    ("resnet32", 32, "cnn", "native"),
    ("resnet56", 32, "cnn", "native"),
    ("resnet9", 28, "cnn", "native"),
    ("resnet9-w8", 32, "cnn", "native"),
    ("timm:vit_tiny_patch16_224", 32, "vit", "timm"),
    ("timm:resnet18", 64, "cnn", "timm"),
]


@pytest.mark.parametrize("spec,img,family,impl", SPECS)
@pytest.mark.parametrize("in_chans", [1, 3])
def test_every_spec_builds_and_runs(spec, img, family, impl, in_chans):
    model, info = build_model(spec, img_size=img, in_chans=in_chans, num_classes=7)
    assert (info.family, info.impl) == (family, impl)
    assert info.params == sum(p.numel() for p in model.parameters())
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(2, in_chans, img, img)).shape == (2, 7)


def test_param_counts():
    assert build_model("resnet50", img_size=224)[1].params == 25_557_032  # 25.6M
    assert build_model("vit:B/16", img_size=224)[1].params == 86_567_656  # 86.6M
    # He et al. 2016, table 6: ResNet-20 has 0.27M parameters
    assert 0.26e6 < build_model("resnet20", img_size=32, num_classes=10)[1].params < 0.28e6


def test_vit_metadata():
    info = build_model("vit:S/4", img_size=32, attn_backend="math")[1]
    assert (info.variant, info.patch, info.attn_backend) == ("S/4", 4, "math")
    assert build_model("timm:vit_small_patch16_224", img_size=32)[1].patch == 16


def test_small_stem_keeps_resolution():
    model, _ = build_model("resnet18-small", img_size=28, in_chans=1, num_classes=10)
    assert model.conv1.stride == (1, 1) and isinstance(model.maxpool, torch.nn.Identity)


@pytest.mark.parametrize("bad", ["vgg16", "vit:Q/16", "timm:not_a_model_xyz", "resnet18-big", 5])
def test_unknown_spec_lists_known_ones(bad):
    with pytest.raises((UnknownModelError, ValueError)) as err:
        check_spec(bad)
    if bad == "vgg16":
        assert "resnet20" in str(err.value) and "timm:<timm model name>" in str(err.value)


def test_resnet9_widths():
    model, info = build_model("resnet9-w24", img_size=28, in_chans=1, num_classes=10)
    assert info.variant == "resnet9-w24" and model.fc.in_features == 8 * 24
    assert build_model("resnet9", img_size=28, in_chans=1, num_classes=10)[1].params == 412_666
