"""The masked autoencoder: masking, encoder on visible tokens only, loss on masked patches only, patch layout,
a few steps that learn, and the encoder loading into create_vit for fine-tuning."""

import math

import pytest
import torch
import torch.nn.functional as F

from vit_impl import MaskedAutoencoder, create_vit
from vit_impl.mae import sincos_pos_embed

from tests.conftest import requires_cuda


def _mae(variant="Mu/4", img_size=28, in_chans=1, seed=0, **kwargs) -> MaskedAutoencoder:
    torch.manual_seed(seed)
    return MaskedAutoencoder(variant, img_size=img_size, in_chans=in_chans, **kwargs)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _perturb(model: torch.nn.Module) -> None:
    """Move every trainable weight off its initial value, so that loading tests cannot pass by coincidence."""
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))


@pytest.mark.parametrize("L,ratio", [(49, 0.75), (49, 0.5), (16, 0.75), (196, 0.9), (49, 0.0)])
def test_random_masking_keeps_exactly_the_requested_count(L, ratio):
    B, D = 8, 3
    x = torch.arange(L, dtype=torch.float32)[None, :, None].expand(B, L, D)  # token l holds the value l
    visible, mask, ids_restore = MaskedAutoencoder.random_masking(x, ratio, _gen(0))
    keep = int(L * (1 - ratio))  # 49 * 0.25 = 12.25 -> 12
    assert visible.shape == (B, keep, D)
    assert mask.shape == ids_restore.shape == (B, L)
    assert mask.sum(dim=1).tolist() == [L - keep] * B
    for b in range(B):  # the visible tokens are exactly the unmasked ones
        assert sorted(visible[b, :, 0].long().tolist()) == torch.nonzero(mask[b] == 0).flatten().tolist()
    if keep < L:
        # a different set per image (L=16 keeps 4: 1820 sets, so an occasional repeat among 8 is chance)
        assert len({tuple(row.tolist()) for row in mask}) >= B - 1


def test_ids_restore_puts_the_shuffled_sequence_back():
    x = torch.randn(4, 49, 5)
    everything, mask, ids_restore = MaskedAutoencoder.random_masking(x, 0.0, _gen(1))
    assert not torch.equal(everything, x)  # shuffled ...
    torch.testing.assert_close(everything.gather(1, ids_restore[..., None].expand(-1, -1, 5)), x, rtol=0, atol=0)
    assert mask.sum() == 0
    visible, _, ids_restore = MaskedAutoencoder.random_masking(x, 0.75, _gen(1))
    ids_shuffle = ids_restore.argsort(dim=1)
    torch.testing.assert_close(visible, x.gather(1, ids_shuffle[:, :12, None].expand(-1, -1, 5)), rtol=0, atol=0)


def test_generator_makes_masks_reproducible():
    x = torch.randn(2, 49, 4)
    first = MaskedAutoencoder.random_masking(x, 0.75, _gen(3))[1]
    assert torch.equal(first, MaskedAutoencoder.random_masking(x, 0.75, _gen(3))[1])
    assert not torch.equal(first, MaskedAutoencoder.random_masking(x, 0.75, _gen(4))[1])


def test_encoder_runs_on_the_class_token_and_visible_patches_only():
    mae = _mae()
    seen = {}
    mae.encoder.blocks[0].register_forward_pre_hook(lambda m, args: seen.update(encoder=args[0].shape))
    mae.decoder_blocks[0].register_forward_pre_hook(lambda m, args: seen.update(decoder=args[0].shape))
    latent, mask, _ = mae.forward_encoder(torch.randn(3, 1, 28, 28), 0.75)
    assert latent.shape == seen["encoder"] == (3, 1 + 12, 128)  # 49 patches, int(49 * 0.25) = 12 visible
    loss, pred, mask = mae(torch.randn(3, 1, 28, 28))
    assert seen["encoder"] == (3, 13, 128)
    assert seen["decoder"] == (3, 1 + 49, 128)  # the decoder sees every position
    assert pred.shape == (3, 49, 16) and mask.shape == (3, 49) and loss.ndim == 0


def test_decoder_puts_encoded_patches_back_in_place_and_mask_tokens_elsewhere():
    mae = _mae()
    _perturb(mae)
    seen = {}
    mae.decoder_blocks[0].register_forward_pre_hook(lambda m, args: seen.update(x=args[0]))
    imgs = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        latent, mask, ids_restore = mae.forward_encoder(imgs, 0.75, _gen(7))
        mae.forward_decoder(latent, ids_restore)
        tokens = seen["x"] - mae.decoder_pos_embed  # (B, 1 + L, Dd)
        embedded = mae.decoder_embed(latent)  # (B, 1 + K, Dd)
    torch.testing.assert_close(tokens[:, 0], embedded[:, 0])
    for b in range(2):
        visible_positions = ids_restore[b].argsort()[:12]  # original index of the k-th visible token
        for k, position in enumerate(visible_positions.tolist()):
            assert mask[b, position] == 0
            torch.testing.assert_close(tokens[b, 1 + position], embedded[b, 1 + k])
        for position in torch.nonzero(mask[b]).flatten().tolist():
            torch.testing.assert_close(tokens[b, 1 + position], mae.mask_token[0, 0])


def test_patchify_round_trip_and_layout_matches_patch_embed():
    mae = _mae("Mu/4", img_size=12, in_chans=3)
    imgs = torch.randn(2, 3, 12, 12)
    patches = mae.patchify(imgs)
    assert patches.shape == (2, 9, 4 * 4 * 3)
    torch.testing.assert_close(mae.unpatchify(patches), imgs, rtol=0, atol=0)
    # patch 5 is row 1, column 2; its pixels in (row, col, channel) order
    torch.testing.assert_close(patches[:, 5], imgs[:, :, 4:8, 8:12].permute(0, 2, 3, 1).reshape(2, -1))
    # the encoder's patch l is the target's patch l: PatchEmbed's conv equals a linear map of patchify
    proj = mae.encoder.patch_embed.proj
    weight = proj.weight.permute(0, 2, 3, 1).reshape(proj.out_channels, -1)  # (D, P*P*C)
    torch.testing.assert_close(mae.encoder.patch_embed(imgs), patches @ weight.T + proj.bias, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("norm_pix_loss", [True, False])
def test_loss_ignores_visible_patches(norm_pix_loss):
    mae = _mae(norm_pix_loss=norm_pix_loss)
    imgs = torch.rand(2, 1, 28, 28)
    _, _, mask = mae(imgs, generator=_gen(0))
    pred = torch.where(mask[..., None].bool(), mae.target(imgs), torch.full((2, 49, 16), 1e3))
    assert mae.forward_loss(imgs, pred, mask).item() == 0.0
    assert mae.forward_loss(imgs, pred, 1 - mask).item() > 1e5  # the garbage counts where it is masked


def test_loss_known_values():
    mae = _mae("Mu/2", img_size=4, in_chans=1, norm_pix_loss=False)  # 4 patches of 2x2 pixels
    imgs = torch.arange(16, dtype=torch.float32).reshape(1, 1, 4, 4)
    target = mae.patchify(imgs)
    mask = torch.tensor([[1.0, 0.0, 1.0, 0.0]])
    pred = target + torch.tensor([1.0, 100.0, 3.0, 100.0])[None, :, None]
    assert mae.forward_loss(imgs, pred, mask).item() == pytest.approx((1 + 9) / 2)
    assert mae.forward_loss(imgs, pred, torch.zeros(1, 4)).item() == 0.0  # nothing masked: 0, not nan

    mae.norm_pix_loss = True
    imgs = torch.tensor([[0.0, 1.0, 5.0, 5.0], [2.0, 3.0, 5.0, 5.0], [7.0] * 4, [7.0] * 4]).reshape(1, 1, 4, 4)
    # patch 0 holds 0,1,2,3: mean 1.5, unbiased var 5/3, so predicting 0 costs mean((x - 1.5)^2) / var = 3/4;
    # patch 1 is flat (target 0): predicting 0 costs nothing; patches 2, 3 are visible
    mask = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    expected = (1.25 / (5 / 3 + 1e-6) + 0.0) / 2
    assert mae.forward_loss(imgs, torch.zeros(1, 4, 4), mask).item() == pytest.approx(expected, rel=1e-6)


def _two_template_images(n: int, size: int = 28, seed: int = 0) -> torch.Tensor:
    """n images, each one of two smooth random patterns at a random contrast plus a little noise: to predict a
    masked patch the model has to tell the pattern from the visible ones."""
    g = _gen(seed)
    templates = F.interpolate(torch.rand(2, 1, 7, 7, generator=g), size=size, mode="bilinear")
    which = torch.randint(2, (n,), generator=g)
    contrast = 0.5 + torch.rand(n, 1, 1, 1, generator=g)
    return contrast * templates[which] + 0.02 * torch.randn(n, 1, size, size, generator=g)


@pytest.mark.slow
def test_a_few_steps_lower_the_loss():
    mae = _mae()
    imgs = _two_template_images(64)
    opt = torch.optim.AdamW([p for p in mae.parameters() if p.requires_grad], lr=2e-3)

    def held_out_mask_loss() -> float:
        with torch.no_grad():
            return mae(imgs, generator=_gen(123))[0].item()

    before = held_out_mask_loss()
    for _ in range(50):
        loss = mae(imgs)[0]
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = held_out_mask_loss()
    # predicting 0 (the mean of a normalised patch) costs 15/16 per patch; learning must beat that clearly
    assert before > 0.9 and after < 0.85, (before, after)


def test_encoder_loads_into_create_vit_and_gives_the_same_features():
    mae = _mae()
    _perturb(mae)
    state = mae.encoder_state_dict()
    finetune = create_vit("Mu/4", img_size=28, in_chans=1, num_classes=10)
    missing, unexpected = finetune.load_state_dict(state, strict=False)
    assert sorted(missing) == ["head.bias", "head.weight"] and unexpected == []
    finetune = create_vit("Mu/4", img_size=28, in_chans=1, num_classes=10)
    finetune.load_pretrained(state, keep_head=False)
    assert finetune.pos_embed.requires_grad  # frozen only during pre-training

    imgs = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        latent, mask, ids_restore = mae.forward_encoder(imgs, 0.0, _gen(0))
        features = finetune.forward_features(imgs)
    assert mask.sum() == 0
    patches = latent[:, 1:].gather(1, ids_restore[..., None].expand(-1, -1, latent.shape[2]))  # un-shuffled
    torch.testing.assert_close(torch.cat([latent[:, :1], patches], dim=1), features, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", ["sdpa", pytest.param("triton", marks=requires_cuda)])
def test_attention_backends_agree_with_math(backend):
    device = "cuda" if backend == "triton" else "cpu"
    imgs = torch.randn(4, 1, 28, 28, device=device)
    results = []
    for name in ("math", backend):
        mae = _mae(attn_backend=name).to(device)
        loss, pred, mask = mae(imgs, generator=torch.Generator(device).manual_seed(0))
        loss.backward()
        results.append((loss, pred, mask, mae.decoder_embed.weight.grad, mae.encoder.patch_embed.proj.weight.grad))
    for reference, got in zip(*results):
        torch.testing.assert_close(got, reference, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("norm_pix_loss", [True, False])
def test_reconstruct_pastes_predictions_into_the_masked_patches(norm_pix_loss):
    mae = _mae(norm_pix_loss=norm_pix_loss)
    imgs = torch.rand(2, 1, 28, 28)
    masked_imgs, recon = mae.reconstruct(imgs, generator=_gen(5))
    _, pred, mask = mae(imgs, generator=_gen(5))
    assert masked_imgs.shape == recon.shape == imgs.shape
    visible = mae.unpatchify(1 - mask[..., None].expand(-1, -1, 16)).bool()  # (B, C, H, W) pixel mask
    torch.testing.assert_close(masked_imgs[visible], imgs[visible], rtol=0, atol=0)
    torch.testing.assert_close(recon[visible], imgs[visible], rtol=0, atol=0)
    assert (masked_imgs[~visible] == 0).all()
    patches = mae.patchify(imgs)
    if norm_pix_loss:  # back to pixels with the true patch's mean and std
        pred = pred * (patches.var(-1, keepdim=True) + 1e-6).sqrt() + patches.mean(-1, keepdim=True)
    torch.testing.assert_close(recon[~visible], mae.unpatchify(pred)[~visible])


def test_position_embeddings_are_fixed_sin_cos():
    table = sincos_pos_embed(8, grid_size=3)
    assert table.shape == (1, 10, 8)
    assert (table[0, 0] == 0).all()  # class token
    # patch 1 is row 0, column 1; channels: sin(row w), cos(row w), sin(col w), cos(col w), w = (1, 1/100)
    expected = [0, 0, 1, 1, math.sin(1), math.sin(0.01), math.cos(1), math.cos(0.01)]
    torch.testing.assert_close(table[0, 2], torch.tensor(expected))
    mae = _mae()
    assert not mae.encoder.pos_embed.requires_grad
    torch.testing.assert_close(mae.encoder.pos_embed, sincos_pos_embed(128, 7), rtol=0, atol=0)
    assert "decoder_pos_embed" not in dict(mae.named_parameters())


@pytest.mark.parametrize("ratio", [1.0, -0.1])
def test_rejects_impossible_mask_ratios(ratio):
    with pytest.raises(ValueError, match="mask_ratio"):
        _mae(mask_ratio=ratio)
    with pytest.raises(ValueError, match="mask_ratio"):
        _mae()(torch.randn(1, 1, 28, 28), mask_ratio=ratio)
