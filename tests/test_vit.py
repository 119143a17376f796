"""The native ViT equals timm's: same state dict, same outputs and gradients; variants; bad input; maps."""

import pytest
import timm
import torch

import vit_impl
from vit_impl import attention_rollout, create_vit, parse_variant

PARITY_CASES = [
    ("Ti/16", "vit_tiny_patch16_224", 224),
    ("S/32", "vit_small_patch32_224", 224),
    ("B/16", "vit_base_patch16_224", 224),
    ("Ti/4", "vit_tiny_patch16_224", 32),  # another image and patch size
]


def _pair(variant, timm_name, img_size, backend):
    torch.manual_seed(0)
    patch = int(variant.split("/")[1])
    ref = timm.create_model(timm_name, pretrained=False, img_size=img_size, patch_size=patch, num_classes=10)
    ours = create_vit(variant, img_size=img_size, num_classes=10, attn_backend=backend)
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours


@pytest.mark.parametrize("backend", ["sdpa", "math"])
@pytest.mark.parametrize("variant,timm_name,img_size", PARITY_CASES)
def test_forward_matches_timm(variant, timm_name, img_size, backend):
    ref, ours = _pair(variant, timm_name, img_size, backend)
    ref.eval(), ours.eval()
    x = torch.randn(2, 3, img_size, img_size)
    with torch.no_grad():
        expected, got = ref(x), ours(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())
    torch.testing.assert_close(ours.forward_features(x), ref.forward_features(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", ["sdpa", "math"])
@pytest.mark.parametrize("variant,timm_name,img_size", [PARITY_CASES[0], PARITY_CASES[3]])
def test_training_step_gradients_match_timm(variant, timm_name, img_size, backend):
    ref, ours = _pair(variant, timm_name, img_size, backend)
    x = torch.randn(2, 3, img_size, img_size)
    y = torch.tensor([1, 7])
    for model in (ref, ours):
        model.train()
        torch.nn.functional.cross_entropy(model(x), y).backward()
    ref_grads = dict(ref.named_parameters())
    for name, param in ours.named_parameters():
        expected = ref_grads[name].grad
        error = (param.grad - expected).abs().max().item()
        assert error <= 1e-4 * expected.abs().max().item() + 1e-7, (name, error, expected.abs().max().item())


def test_param_count_b16():
    assert sum(p.numel() for p in create_vit("B/16").parameters()) == 86_567_656  # 86.6M, as timm


@pytest.mark.parametrize(
    "variant,expected",
    [("B/16", (768, 12, 12, 16)), ("L/32", (1024, 24, 16, 32)), ("S/4", (384, 12, 6, 4)),
     ("H/14", (1280, 32, 16, 14)), ("Ti/8", (192, 12, 3, 8)), ("Mu/4", (128, 6, 4, 4))],
)
def test_parse_variant(variant, expected):
    shape, patch = parse_variant(variant)
    assert (shape.embed_dim, shape.depth, shape.num_heads, patch) == expected


@pytest.mark.parametrize("bad", ["X/16", "B16", "B/", "b/16", "", "B/0", None])
def test_unknown_variant_is_a_clear_error(bad):
    with pytest.raises(ValueError, match="unknown ViT variant|patch size"):
        create_vit(bad)


def test_patch_must_divide_image():
    with pytest.raises(ValueError, match=r"does not divide image size 224.*allowed patch sizes"):
        create_vit("B/15")


def test_unknown_backend():
    with pytest.raises(ValueError, match="allowed: math, sdpa, triton"):
        create_vit("Ti/16", attn_backend="flash")


@pytest.mark.parametrize("shape", [(2, 1, 32, 32), (3, 32, 32), (2, 3, 30, 30)])
def test_wrong_input_shape(shape):
    model = create_vit("Mu/4", img_size=32)
    with pytest.raises(ValueError, match="expected input of shape|not divisible"):
        model(torch.randn(*shape))


def test_small_variants_are_small():
    mu = sum(p.numel() for p in create_vit("Mu/4", img_size=28, in_chans=1, num_classes=10).parameters())
    mi = sum(p.numel() for p in create_vit("Mi/4", img_size=28, in_chans=1, num_classes=10).parameters())
    assert 0.5e6 < mu < 1.2e6 and 2.5e6 < mi < 4e6


def test_attention_maps_and_rollout():
    model = create_vit("Mu/4", img_size=28, in_chans=1, num_classes=10).eval()
    x = torch.randn(3, 1, 28, 28)
    maps = model.attention_maps(x)
    assert len(maps) == model.cfg.depth
    for attn in maps:
        assert attn.shape == (3, 4, 50, 50)
        torch.testing.assert_close(attn.sum(-1), torch.ones(3, 4, 50))
    rollout = attention_rollout(maps)
    assert rollout.shape == (3, 7, 7)
    torch.testing.assert_close(rollout.sum(dim=(1, 2)), torch.ones(3))


def test_math_backend_output_equals_attention_maps_times_v():
    """The maps returned are the ones the math backend uses: the block's output is reproducible from them."""
    model = create_vit("Mu/4", img_size=28, in_chans=1, num_classes=10, attn_backend="math").eval()
    x = torch.randn(2, 1, 28, 28)
    tokens = model.blocks[0].norm1(model.embed(x))
    attn_mod = model.blocks[0].attn
    B, N, D = tokens.shape
    v = attn_mod.qkv(tokens).view(B, N, 3, 4, D // 4)[:, :, 2].transpose(1, 2)
    expected = attn_mod.proj((attn_mod.attention_map(tokens) @ v).transpose(1, 2).reshape(B, N, D))
    torch.testing.assert_close(attn_mod(tokens), expected)


def test_pos_embed_interpolation_for_higher_resolution():
    torch.manual_seed(0)
    low = create_vit("Ti/16", img_size=224, num_classes=5).eval()
    high = create_vit("Ti/16", img_size=384, num_classes=5).eval()
    high.load_pretrained(low.state_dict())
    assert high.pos_embed.shape == (1, 1 + 24 * 24, 192)
    torch.testing.assert_close(high.pos_embed[:, 0], low.pos_embed[:, 0])  # class token's kept
    # against timm's own resampling of the same embedding
    from timm.layers import resample_abs_pos_embed

    expected = resample_abs_pos_embed(low.pos_embed, new_size=(24, 24), num_prefix_tokens=1)
    torch.testing.assert_close(high.pos_embed, expected, rtol=1e-4, atol=1e-5)
    # a model run at another size interpolates on the fly
    assert low(torch.randn(1, 3, 384, 384)).shape == (1, 5)


def test_load_pretrained_replaces_head_for_new_classes():
    source = create_vit("Mu/4", img_size=28, in_chans=1, num_classes=5)
    target = create_vit("Mu/4", img_size=28, in_chans=1, num_classes=10)
    head_before = target.head.weight.clone()
    target.load_pretrained(source.state_dict())
    torch.testing.assert_close(target.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)
    torch.testing.assert_close(target.head.weight, head_before)


def test_public_api():
    cfg = vit_impl.ViTConfig(img_size=32, patch_size=4, embed_dim=64, depth=2, num_heads=2, num_classes=3)
    assert vit_impl.VisionTransformer(cfg)(torch.randn(1, 3, 32, 32)).shape == (1, 3)
