"""Micro-benchmarks (pytest-benchmark): `pytest --benchmark-only --benchmark-group-by=group`.

Forward pass and training step of the native ViT (math, sdpa; triton on a GPU) next to timm's ViT at the same
variant and next to ResNets, and the attention backends alone. CPU-sized shapes on a CPU, ImageNet-sized on a
GPU (with CUDA synchronisation inside the timed call). A plain `pytest` runs each once, untimed.
Save and compare with pytest-benchmark's own --benchmark-save=NAME / pytest-benchmark compare.
"""

import functools

import pytest
import torch
import torch.nn.functional as F

from bench.measure.flops import forward_flops
from bench.models import build_model
from vit_impl.kernels import flash_attention, reference_attention

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
# (spec, attention backend) at a CPU shape (28 px, 1 channel) or a GPU shape (224 px, 3 channels)
IMG, CHANS, BATCH = (224, 3, 64) if CUDA else (28, 1, 16)
VIT = "vit:B/16" if CUDA else "vit:Ti/4"
TIMM_VIT = "timm:vit_base_patch16_224" if CUDA else "timm-vit:Ti/4"
RESNETS = ["resnet50"] if CUDA else ["resnet20", "resnet18-small"]
MODELS = [(VIT, "math"), (VIT, "sdpa"), (TIMM_VIT, "sdpa"), *((r, "sdpa") for r in RESNETS)]
if CUDA:
    MODELS.append((VIT, "triton"))
ATTN_SHAPES = [(32, 12, 197, 64), (16, 12, 577, 64)] if CUDA else [(8, 3, 50, 64), (4, 3, 197, 64)]


def sync():
    if CUDA:
        torch.cuda.synchronize()


@functools.cache
def model_and_info(spec, backend):
    torch.manual_seed(0)
    model, info = build_model(spec, img_size=IMG, in_chans=CHANS, num_classes=10, attn_backend=backend)
    model = model.to(DEVICE)
    example = torch.randn(1, CHANS, IMG, IMG, device=DEVICE)
    gflops = forward_flops(model.eval(), example) / 1e9 if backend != "triton" else None
    return model, {"params": info.params, "gflops_per_image": gflops, "family": info.family, "impl": info.impl,
                   "attn_backend": backend, "batch": BATCH, "img_size": IMG, "device": DEVICE}


def _autocast():
    return torch.autocast("cuda", dtype=torch.bfloat16) if CUDA else torch.autocast("cpu", enabled=False)


@pytest.mark.parametrize("spec,backend", MODELS, ids=lambda v: str(v))
def test_forward(benchmark, spec, backend):
    model, info = model_and_info(spec, backend)
    model.eval()
    x = torch.randn(BATCH, CHANS, IMG, IMG, device=DEVICE)
    benchmark.group = f"forward bs{BATCH} {IMG}px"
    benchmark.extra_info.update(info)

    def forward():
        with torch.inference_mode(), _autocast():
            out = model(x)
        sync()
        return out

    assert benchmark(forward).shape == (BATCH, 10)


@pytest.mark.parametrize("spec,backend", MODELS, ids=lambda v: str(v))
def test_train_step(benchmark, spec, backend):
    model, info = model_and_info(spec, backend)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(BATCH, CHANS, IMG, IMG, device=DEVICE)
    y = torch.randint(0, 10, (BATCH,), device=DEVICE)
    benchmark.group = f"train step bs{BATCH} {IMG}px"
    benchmark.extra_info.update(info)

    def step():
        with _autocast():
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync()
        return loss

    assert torch.isfinite(benchmark(step))


ATTENTION = {
    "math": functools.partial(reference_attention, upcast=False),
    "sdpa": F.scaled_dot_product_attention,
}
if CUDA:
    ATTENTION["triton"] = flash_attention


@pytest.mark.parametrize("shape", ATTN_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("backend", list(ATTENTION))
def test_attention_forward(benchmark, backend, shape):
    dtype = torch.bfloat16 if CUDA else torch.float32
    q, k, v = (torch.randn(shape, device=DEVICE, dtype=dtype) for _ in range(3))
    fn = ATTENTION[backend]
    B, H, N, D = shape
    benchmark.group = f"attention forward {'x'.join(map(str, shape))}"
    benchmark.extra_info.update({"gflops": 4 * B * H * N * N * D / 1e9, "dtype": str(dtype), "device": DEVICE})

    def forward():
        out = fn(q, k, v)
        sync()
        return out

    out = benchmark(forward)
    torch.testing.assert_close(out.float(), reference_attention(q, k, v).float(), atol=2e-2, rtol=2e-2)
