"""Corruptions and occlusions (bench/corruptions.py): severity 0 is the identity, bad names and severities are refused
naming what is allowed, a seed repeats a call exactly, the input is never touched, strength grows with severity,
patch_drop drops whole cells of its grid and reports the share it dropped, patch_shuffle permutes cells, and the
table in docs/robustness.md is the one the code generates."""

import re
from pathlib import Path

import pytest
import torch

from bench.corruptions import (CORRUPTIONS, GROUPS, SEVERITIES, STRIPE_WIDTH, _generator, corrupt, corruption_table,
                               patch_drop, patch_shuffle)

DOC = Path(__file__).resolve().parent.parent / "docs" / "robustness.md"
UNSEEDED = {"gaussian_blur", "contrast", "brightness", "pixelate", "jpeg", "scale"}  # no randomness to draw
KINDS = {"gray": (1, 28), "colour": (3, 32)}  # Fashion-MNIST, CIFAR


def shapes(n: int, channels: int, side: int, seed: int = 0) -> torch.Tensor:
    """Structured uint8 images (N,C,side,side): a rectangle with a horizontal gradient and a bright disc, tinted per
    channel, at random places on a black background."""
    gen = torch.Generator().manual_seed(seed)

    def draw(*shape):  # uniform [0,1) of (N, *shape), broadcast against the pixel grid
        return torch.rand(n, *shape, generator=gen)[..., None, None]

    yy, xx = torch.meshgrid(torch.arange(side) + 0.5, torch.arange(side) + 0.5, indexing="ij")  # (side,side)
    centre, half = (0.3 + 0.4 * draw(2)) * side, (0.15 + 0.15 * draw(2)) * side  # (N,2,1,1)
    rect = ((yy - centre[:, 0]).abs() < half[:, 0]) & ((xx - centre[:, 1]).abs() < half[:, 1])  # (N,side,side)
    disc_centre, radius = (0.25 + 0.5 * draw(2)) * side, (0.1 + 0.1 * draw()) * side
    disc = (yy - disc_centre[:, 0]) ** 2 + (xx - disc_centre[:, 1]) ** 2 < radius**2
    gray = torch.where(disc, 1.0, torch.where(rect, 0.3 + 0.6 * xx / side, 0.0))  # (N,side,side)
    tint = 0.5 + 0.5 * draw(channels) if channels > 1 else torch.ones(n, 1, 1, 1)  # (N,C,1,1)
    return (gray[:, None] * tint * 255).round().to(torch.uint8)


@pytest.fixture(scope="module", params=list(KINDS))
def images(request) -> torch.Tensor:
    channels, side = KINDS[request.param]
    return shapes(24, channels, side)


def mean_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().mean().item()


# ------------------------------------------------------------------------------------------ the registry


def test_the_registry_is_grouped_and_each_corruption_has_five_documented_severities():
    groups = [c.group for c in CORRUPTIONS.values()]
    assert sorted(groups, key=GROUPS.index) == groups and set(groups) == set(GROUPS)  # in GROUPS' order, all used
    for name, c in CORRUPTIONS.items():
        assert c.name == name and len(c.params) == SEVERITIES and c.param, name


def test_severity_zero_is_an_equal_copy(images):
    for name in CORRUPTIONS:
        out = corrupt(images, name, 0, seed=1)
        assert torch.equal(out, images) and out.data_ptr() != images.data_ptr(), name


def test_unknown_names_and_severities_are_refused_naming_what_is_allowed(images):
    with pytest.raises(ValueError, match="unknown corruption 'fog'") as err:
        corrupt(images, "fog", 1, seed=0)
    assert all(name in str(err.value) for name in CORRUPTIONS)
    for severity in (-1, 6, 1.5):
        with pytest.raises(ValueError, match=re.escape(f"severity {severity!r} is not one of 0..5")):
            corrupt(images, "jpeg", severity, seed=0)
    with pytest.raises(ValueError, match="uint8"):
        corrupt(images.float(), "jpeg", 1, seed=0)


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_a_corruption_repeats_under_its_seed_and_leaves_the_input_alone(images, name):
    before = images.clone()
    out = corrupt(images, name, 3, seed=7)
    assert torch.equal(images, before)
    assert out.dtype == torch.uint8 and out.shape == images.shape
    assert not torch.equal(out, images)  # it does something
    assert torch.equal(corrupt(images, name, 3, seed=7), out)
    assert torch.equal(corrupt(images, name, 3, seed=8), out) == (name in UNSEEDED)


def test_each_severity_and_corruption_draws_its_own_randomness(images):
    hits = [corrupt(images, "impulse_noise", s, seed=0) != images for s in (1, 2)]
    assert (hits[0] & ~hits[1]).any()  # one stream would make severity 1's pixels a subset of severity 2's
    draws = {torch.rand(4, generator=_generator(seed, name, level)) for seed, name, level in
             [(0, "line", 1), (1, "line", 1), (0, "stripe", 1), (0, "line", 2)]}
    assert len({tuple(d.tolist()) for d in draws}) == 4
    same = images[:1].expand(8, -1, -1, -1)  # one image eight times: each copy gets its own draw
    for name in ("gaussian_noise", "motion_blur", "rotate", "translate", "stripe", "line"):
        out = corrupt(same, name, 3, seed=0)
        assert len({tuple(img.flatten().tolist()) for img in out}) > 1, name


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_strength_grows_with_severity(images, name):
    diffs = [mean_abs_diff(corrupt(images, name, s, seed=3), images) for s in range(1, SEVERITIES + 1)]
    assert all(a <= b for a, b in zip(diffs, diffs[1:])), f"{name}: {diffs}"
    assert diffs[0] > 0, name


def test_stripes_invert_whole_columns_and_lines_are_white(images):
    for severity in (1, 5):
        out = corrupt(images, "stripe", severity, seed=0)
        inverted = (out == 255 - images).all(dim=(1, 2))  # (N,W): columns inverted top to bottom
        untouched = (out == images).all(dim=(1, 2))
        assert (inverted | untouched).all() and (inverted.sum(dim=1) == severity * STRIPE_WIDTH).all()
    out = corrupt(images, "line", 2, seed=0)
    changed = out != images
    assert changed.any() and (out[changed] == 255).all()


@pytest.mark.filterwarnings("ignore:The image decoding and encoding:DeprecationWarning")  # torchvision 0.29
def test_jpeg_is_torchvisions_jpeg_at_the_severitys_quality(images):
    from torchvision.transforms.v2.functional import jpeg

    assert torch.equal(corrupt(images, "jpeg", 2, seed=0), jpeg(images, int(CORRUPTIONS["jpeg"].params[1])))


# ------------------------------------------------------------------------------------------ occlusions


def test_patch_drop_with_share_zero_is_an_equal_copy(images):
    out, share = patch_drop(images, 0.0, 4, 0, seed=0)
    assert torch.equal(out, images) and out.data_ptr() != images.data_ptr() and share == 0.0


def test_patch_drop_on_the_aligned_grid_drops_whole_cells():
    x = torch.randint(1, 256, (16, 1, 28, 28), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    before = x.clone()
    out, achieved = patch_drop(x, 0.3, 7, 0, seed=2)
    assert torch.equal(x, before)
    cells = out.reshape(16, 4, 7, 4, 7).permute(0, 1, 3, 2, 4).reshape(16, 16, 49)  # (N, cell, pixel)
    originals = x.reshape(16, 4, 7, 4, 7).permute(0, 1, 3, 2, 4).reshape(16, 16, 49)
    dropped = (cells == 0).all(dim=2)
    assert (dropped | (cells == originals).all(dim=2)).all()  # every cell dropped whole or untouched
    assert (dropped.sum(dim=1) == 5).all()  # 5/16 = 0.3125 is the share closest to 0.3
    assert achieved == pytest.approx(5 / 16)
    copies, _ = patch_drop(x[:1].expand(8, -1, -1, -1), 0.3, 7, 0, seed=2)  # one image eight times: eight draws
    assert len({tuple(img.flatten().tolist()) for img in copies}) > 1
    again, _ = patch_drop(x, 0.3, 7, 0, seed=2)
    assert torch.equal(again, out) and not torch.equal(patch_drop(x, 0.3, 7, 0, seed=3)[0], out)


def test_patch_drop_on_the_offset_grid_comes_within_one_cell_and_grows_by_superset(images):
    side = images.shape[-1]
    x = images.clamp(min=1)
    for cell in (4, 7, 8):
        if side % cell:
            continue
        smaller = None
        for share in (0.1, 0.25, 0.5, 0.9):
            out, achieved = patch_drop(x, share, cell, cell // 2, seed=5)
            per_image = (out == 0).all(dim=1).float().mean(dim=(1, 2))  # (N,)
            assert achieved == pytest.approx(per_image.mean().item())
            assert (per_image - share).abs().max() <= cell**2 / side**2
            if smaller is not None:
                assert not (smaller & (out != 0)).any()  # what a smaller share drops stays dropped
            smaller = out == 0


def test_patch_drop_refuses_a_share_outside_zero_to_one(images):
    for share in (-0.1, 1.0):
        with pytest.raises(ValueError, match=r"share .* is not in \[0, 1\)"):
            patch_drop(images, share, 4, 0, seed=0)
    with pytest.raises(ValueError, match="offset"):
        patch_drop(images, 0.5, 4, 4, seed=0)


def test_patch_shuffle_permutes_whole_cells(images):
    n, c, h, w = images.shape
    assert torch.equal(patch_shuffle(images, 1, seed=0), images)
    before = images.clone()
    out = patch_shuffle(images, 4, seed=0)
    assert torch.equal(images, before) and not torch.equal(out, images)

    def cells(x):  # (N, 16 cells, C*h*w), sorted by content
        flat = x.reshape(n, c, 4, h // 4, 4, w // 4).permute(0, 2, 4, 1, 3, 5).reshape(n, 16, -1)
        return torch.stack([torch.stack(sorted(img, key=lambda t: t.tolist())) for img in flat])

    assert torch.equal(cells(out), cells(images))
    same = patch_shuffle(images[:1].expand(8, -1, -1, -1), 4, seed=0)  # one image eight times: eight orders
    assert len({tuple(img.flatten().tolist()) for img in same}) > 1
    assert torch.equal(patch_shuffle(images, 4, seed=0), out) and not torch.equal(patch_shuffle(images, 4, 1), out)
    with pytest.raises(ValueError, match="grid 5 must be >= 1 and divide"):
        patch_shuffle(images, 5, seed=0)


# ------------------------------------------------------------------------------------------ the docs


def test_the_docs_table_is_the_generated_one():
    text = DOC.read_text()
    found = re.search(r"<!-- corruption-table:begin[^>]*-->\n(.*?)<!-- corruption-table:end -->", text, flags=re.S)
    assert found, f"{DOC.name}: no corruption-table markers"
    assert found.group(1) == corruption_table(), "docs/robustness.md: regenerate the table (corruption_table())"
