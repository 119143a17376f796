"""Corruptions and occlusions for a robustness evaluation: seeded, deterministic and batched.

Images are uint8 tensors (N, C, H, W) on the CPU, grayscale (Fashion-MNIST, 1 x 28 x 28) or colour (CIFAR,
3 x 32 x 32). `corrupt` applies one of the 15 corruptions of CORRUPTIONS at a severity 0..5 (0 is the identity);
`patch_drop` blacks out square cells of a grid, aligned with a ViT's patches or offset from them; `patch_shuffle`
permutes the cells of a grid. Every function returns a new tensor of the input's shape and dtype and leaves its input
alone. The randomness (noise, angles, directions, positions, orders) is drawn per image from a torch.Generator
seeded from the caller's seed and the corruption's name and severity, so a call repeats exactly and two conditions
draw independently. The table in docs/robustness.md is `corruption_table()`.
"""

import math
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as tf
from torchvision.transforms.v2 import functional as tvf

GROUPS = ("noise", "blur", "digital", "geometric", "lines")
SEVERITIES = 5  # severities 1..5; severity 0 is the identity
STRIPE_WIDTH = 2  # pixels: the width of one inverted stripe (the `stripe` corruption)


@dataclass(frozen=True)
class Corruption:
    name: str
    group: str  # one of GROUPS
    params: tuple[float, ...]  # the parameter at severities 1..5
    param: str  # what the parameter is, for the docs table
    apply: Callable[[torch.Tensor, float, torch.Generator], torch.Tensor]  # (N,C,H,W) in [0,1], param, gen -> same


def _generator(seed: int, name: str, level: int) -> torch.Generator:
    """A generator seeded from (seed, name, level) by a stable hash (crc32, not Python's salted hash()). 32 bits
    suffice: the CPU generator (mt19937) keeps only the low 32 bits of its seed."""
    return torch.Generator().manual_seed(zlib.crc32(f"{seed}/{name}/{level}".encode()))


def _rand(x: torch.Tensor, gen: torch.Generator, *shape: int) -> torch.Tensor:
    """Uniform [0,1) floats of `shape` (the first dimension is the batch's)."""
    return torch.rand(shape, generator=gen, dtype=x.dtype)


def _signs(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A random sign per image: (N,) of +-1."""
    return torch.where(_rand(x, gen, len(x)) < 0.5, -1.0, 1.0).to(x.dtype)


# ------------------------------------------------------------------------------------------ noise and blur


def _gaussian_noise(x, std, gen):
    return x + std * torch.randn(x.shape, generator=gen, dtype=x.dtype)


def _shot_noise(x, lam, gen):
    return torch.poisson(x * lam, generator=gen) / lam


def _impulse_noise(x, share, gen):
    n, _, h, w = x.shape
    hit = _rand(x, gen, n, 1, h, w) < share  # (N,1,H,W): the same pixels in every channel
    salt = (_rand(x, gen, n, 1, h, w) < 0.5).to(x.dtype)
    return torch.where(hit, salt, x)


def _gaussian_blur(x, sigma, gen):
    k = 2 * math.ceil(3 * sigma) + 1
    return tvf.gaussian_blur(x, kernel_size=[k, k], sigma=[sigma, sigma])


def _motion_blur(x, length, gen):
    """Average along a centred line of `length` pixels at a random angle per image (grouped conv2d)."""
    n, c, h, w = x.shape
    k = int(length) | 1  # odd kernel side
    angle = _rand(x, gen, n) * math.pi  # (N,)
    r = torch.arange(k, dtype=x.dtype) - k // 2
    dy, dx = r[:, None].expand(k, k), r[None, :].expand(k, k)  # (K,K): offsets from the centre
    cos, sin = angle.cos()[:, None, None], angle.sin()[:, None, None]
    along = (dx * cos + dy * sin).abs()  # (N,K,K): distance along the line from the centre
    across = (dy * cos - dx * sin).abs()  # (N,K,K): distance from the line
    weight = (1 - across).clamp(min=0) * (along <= (length - 1) / 2)  # an antialiased segment
    weight = weight / weight.sum(dim=(1, 2), keepdim=True)
    weight = weight.repeat_interleave(c, dim=0)[:, None]  # (N*C,1,K,K): one kernel per image and channel
    padded = tf.pad(x.reshape(1, n * c, h, w), [k // 2] * 4, mode="replicate")
    return tf.conv2d(padded, weight, groups=n * c).reshape(n, c, h, w)


# ------------------------------------------------------------------------------------------ digital


def _contrast(x, factor, gen):
    mean = x.mean(dim=(1, 2, 3), keepdim=True)  # (N,1,1,1): each image's mean
    return (x - mean) * factor + mean


def _brightness(x, shift, gen):
    return x + shift


def _pixelate(x, factor, gen):
    h, w = x.shape[-2:]
    small = tf.interpolate(x, size=(max(1, round(h * factor)), max(1, round(w * factor))), mode="area")
    return tf.interpolate(small, size=(h, w), mode="nearest-exact")  # blocks centred on the pixels


def _jpeg(x, quality, gen):
    as_bytes = (x * 255).round().to(torch.uint8)  # exact: corrupt() hands over uint8 / 255
    with warnings.catch_warnings():  # torchvision 0.29 deprecates its codecs for TorchCodec, not a dependency here
        warnings.filterwarnings("ignore", "The image decoding and encoding", DeprecationWarning)
        return tvf.jpeg(as_bytes, int(quality)).to(x.dtype) / 255


# ------------------------------------------------------------------------------------------ geometric


def _warp(x: torch.Tensor, matrix: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Sample each output pixel p (in pixels from the image centre) at input matrix @ p + shift, zero fill.
    matrix (N,2,2), shift (N,2) in (x, y) order; one batched affine_grid + grid_sample."""
    h, w = x.shape[-2:]
    half = torch.tensor([w / 2, h / 2], dtype=x.dtype)  # pixels per normalised unit (align_corners=False)
    theta = torch.cat([matrix * half[None, None, :] / half[None, :, None], (shift / half)[:, :, None]], dim=2)
    grid = tf.affine_grid(theta, list(x.shape), align_corners=False)  # (N,H,W,2)
    return tf.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _rotate(x, degrees, gen):
    angle = _signs(x, gen) * math.radians(degrees)  # (N,)
    cos, sin = angle.cos(), angle.sin()
    matrix = torch.stack([torch.stack([cos, -sin], dim=1), torch.stack([sin, cos], dim=1)], dim=1)  # (N,2,2)
    return _warp(x, matrix, torch.zeros(len(x), 2, dtype=x.dtype))


def _shear(x, degrees, gen):
    matrix = torch.eye(2, dtype=x.dtype).repeat(len(x), 1, 1)  # (N,2,2)
    matrix[:, 0, 1] = _signs(x, gen) * math.tan(math.radians(degrees))  # horizontal shear, random sign
    return _warp(x, matrix, torch.zeros(len(x), 2, dtype=x.dtype))


def _scale(x, factor, gen):
    matrix = torch.eye(2, dtype=x.dtype).repeat(len(x), 1, 1) / factor  # shrink about the centre
    return _warp(x, matrix, torch.zeros(len(x), 2, dtype=x.dtype))


def _translate(x, share, gen):
    h, w = x.shape[-2:]
    direction = _rand(x, gen, len(x)) * 2 * math.pi  # (N,)
    shift = torch.stack([direction.cos() * w, direction.sin() * h], dim=1) * share  # (N,2) pixels
    return _warp(x, torch.eye(2, dtype=x.dtype).repeat(len(x), 1, 1), shift)


# ------------------------------------------------------------------------------------------ lines


def _stripe(x, count, gen):
    """Invert `count` vertical stripes of STRIPE_WIDTH pixels, at distinct random slots per image."""
    n, _, _, w = x.shape
    slots = w // STRIPE_WIDTH
    chosen = _rand(x, gen, n, slots).argsort(dim=1) < count  # (N,slots): `count` distinct slots per image
    columns = chosen.repeat_interleave(STRIPE_WIDTH, dim=1)  # (N,slots*STRIPE_WIDTH)
    columns = tf.pad(columns, (0, w - columns.shape[1]))  # (N,W)
    return torch.where(columns[:, None, None, :], 1 - x, x)


def _line(x, count, gen):
    """Draw `count` white straight lines of width 1 per image, each from one border to the opposite one."""
    n, _, h, w = x.shape
    u = _rand(x, gen, n, int(count), 2)  # (N,L,2): where each line meets its two borders, as a share of the side
    across = _rand(x, gen, n, int(count)) < 0.5  # (N,L): left to right, else top to bottom
    zero = torch.zeros_like(across, dtype=x.dtype)
    x0, x1 = torch.where(across, zero, u[..., 0] * w), torch.where(across, zero + w, u[..., 1] * w)  # (N,L)
    y0, y1 = torch.where(across, u[..., 0] * h, zero), torch.where(across, u[..., 1] * h, zero + h)
    x0, y0, dx, dy = (v[..., None, None] for v in (x0, y0, x1 - x0, y1 - y0))  # (N,L,1,1)
    py = torch.arange(h, dtype=x.dtype)[:, None] + 0.5 - y0  # (N,L,H,1): pixel centres relative to the start
    px = torch.arange(w, dtype=x.dtype)[None, :] + 0.5 - x0  # (N,L,1,W)
    t = ((px * dx + py * dy) / (dx**2 + dy**2)).clamp(0, 1)  # (N,L,H,W): the nearest point of the segment
    on = (torch.hypot(px - t * dx, py - t * dy) <= 0.5).any(dim=1, keepdim=True)  # (N,1,H,W)
    return torch.where(on, 1.0, x)


# ------------------------------------------------------------------------------------------ registry

CORRUPTIONS: dict[str, Corruption] = {c.name: c for c in (
    Corruption("gaussian_noise", "noise", (0.08, 0.12, 0.17, 0.23, 0.3), "noise std (fraction of 255)",
               _gaussian_noise),
    Corruption("shot_noise", "noise", (60, 30, 15, 8, 4), "Poisson photon count at full intensity",
               _shot_noise),
    Corruption("impulse_noise", "noise", (0.03, 0.06, 0.1, 0.15, 0.22), "share of pixels set black or white",
               _impulse_noise),
    Corruption("gaussian_blur", "blur", (0.5, 0.75, 1, 1.25, 1.5), "sigma (pixels)", _gaussian_blur),
    Corruption("motion_blur", "blur", (3, 4, 5, 7, 9), "line length (pixels), random angle per image", _motion_blur),
    Corruption("contrast", "digital", (0.5, 0.4, 0.3, 0.22, 0.15), "contrast kept about the image mean", _contrast),
    Corruption("brightness", "digital", (0.1, 0.2, 0.3, 0.4, 0.5), "added brightness (fraction of 255)",
               _brightness),
    Corruption("pixelate", "digital", (0.75, 0.6, 0.45, 0.36, 0.32), "side kept (downscale factor)", _pixelate),
    Corruption("jpeg", "digital", (30, 20, 15, 10, 5), "JPEG quality", _jpeg),
    Corruption("rotate", "geometric", (10, 20, 30, 40, 50), "angle (degrees), random sign per image", _rotate),
    Corruption("shear", "geometric", (8, 16, 24, 32, 40), "horizontal shear angle (degrees), random sign per image",
               _shear),
    Corruption("scale", "geometric", (0.9, 0.8, 0.7, 0.6, 0.5), "size kept (shrink about the centre)", _scale),
    Corruption("translate", "geometric", (0.05, 0.1, 0.15, 0.2, 0.25), "shift (fraction of the side), random direction "
               "per image", _translate),
    Corruption("stripe", "lines", (1, 2, 3, 4, 5), f"vertical stripes of {STRIPE_WIDTH} pixels, inverted", _stripe),
    Corruption("line", "lines", (1, 2, 3, 4, 5), "white lines of width 1 from border to border", _line),
)}


def corrupt(x: torch.Tensor, name: str, severity: int, seed: int) -> torch.Tensor:
    """Corruption `name` at `severity` (0: an equal copy): uint8 (N,C,H,W) -> a new uint8 (N,C,H,W)."""
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; allowed: {', '.join(CORRUPTIONS)}")
    if severity not in range(SEVERITIES + 1):
        raise ValueError(f"severity {severity!r} is not one of 0..{SEVERITIES}")
    _check_images(x)
    if severity == 0:
        return x.clone()
    corruption = CORRUPTIONS[name]
    out = corruption.apply(x.float() / 255, corruption.params[severity - 1], _generator(seed, name, severity))
    return (out.clamp(0, 1) * 255).round().to(torch.uint8)


def _check_images(x: torch.Tensor) -> None:
    if x.dtype != torch.uint8 or x.dim() != 4:
        raise ValueError(f"images must be uint8 (N, C, H, W), got {x.dtype} of shape {tuple(x.shape)}")


# ------------------------------------------------------------------------------------------ occlusions


def _bounds(side: int, cell: int, offset: int) -> list[int]:
    """The grid lines along one side: 0, offset, offset + cell, ..., side (edge cells clipped)."""
    return sorted({0, side, *range(offset, side, cell)})


def patch_drop(x: torch.Tensor, share: float, cell: int, offset: int, seed: int) -> tuple[torch.Tensor, float]:
    """Black out about `share` of each image in square cells of side `cell` on a grid whose lines start at `offset`
    (0: a ViT's patches of side `cell`; cell // 2: the offset grid, edge cells clipped). Each image drops its cells
    in a random order, as many as bring the dropped share closest to `share`; the order depends on (seed, cell,
    offset) only, so a larger share drops a superset. Returns the images and the mean dropped share."""
    _check_images(x)
    if not 0 <= share < 1:
        raise ValueError(f"patch_drop share {share!r} is not in [0, 1)")
    if cell < 1 or not 0 <= offset < cell:
        raise ValueError(f"patch_drop needs cell >= 1 and 0 <= offset < cell, got cell {cell}, offset {offset}")
    if share == 0:
        return x.clone(), 0.0
    n, _, h, w = x.shape
    rows, cols = _bounds(h, cell, offset), _bounds(w, cell, offset)
    row_of = torch.bucketize(torch.arange(h), torch.tensor(rows[1:]), right=True)  # (H,): cell row of each pixel
    col_of = torch.bucketize(torch.arange(w), torch.tensor(cols[1:]), right=True)  # (W,)
    cell_of = row_of[:, None] * (len(cols) - 1) + col_of[None, :]  # (H,W): cell index of each pixel
    area = torch.bincount(cell_of.flatten()).double() / (h * w)  # (K,): each cell's share of the image
    order = torch.rand(n, len(area), generator=_generator(seed, f"patch_drop/{cell}", offset)).argsort(dim=1)
    dropped = torch.cat([torch.zeros(n, 1, dtype=area.dtype), area[order].cumsum(dim=1)], dim=1)  # (N,K+1)
    count = (dropped - share).abs().argmin(dim=1)  # (N,): how many cells, first on a tie
    rank = order.argsort(dim=1)  # (N,K): when each cell drops
    mask = (rank < count[:, None])[:, cell_of]  # (N,H,W)
    achieved = dropped.gather(1, count[:, None]).mean().item()
    return x.masked_fill(mask[:, None], 0), achieved


def patch_shuffle(x: torch.Tensor, grid: int, seed: int) -> torch.Tensor:
    """Cut each image into grid x grid equal cells and permute them at random per image (grid 1: a copy)."""
    _check_images(x)
    n, c, h, w = x.shape
    if grid < 1 or h % grid or w % grid:
        raise ValueError(f"patch_shuffle grid {grid!r} must be >= 1 and divide the image's {h} x {w} pixels")
    ch, cw = h // grid, w // grid
    cells = x.reshape(n, c, grid, ch, grid, cw).permute(0, 2, 4, 1, 3, 5).reshape(n, grid * grid, c, ch, cw)
    order = torch.rand(n, grid * grid, generator=_generator(seed, "patch_shuffle", grid)).argsort(dim=1)
    cells = cells[torch.arange(n)[:, None], order]  # (N,G*G,C,ch,cw)
    return cells.reshape(n, grid, grid, c, ch, cw).permute(0, 3, 1, 4, 2, 5).reshape(n, c, h, w)


def corruption_table() -> str:
    """The markdown table of CORRUPTIONS that docs/robustness.md holds."""
    lines = ["| corruption | group | parameter | " + " | ".join(map(str, range(1, SEVERITIES + 1))) + " |",
             "|---|---|---|" + "---:|" * SEVERITIES]
    for c in CORRUPTIONS.values():
        lines.append(f"| `{c.name}` | {c.group} | {c.param} | " + " | ".join(f"{p:g}" for p in c.params) + " |")
    return "\n".join(lines) + "\n"
