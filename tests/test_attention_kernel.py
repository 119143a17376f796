"""Triton fused attention vs an fp32 reference, on odd ViT lengths (CPU: TRITON_INTERPRET=1, fp32 and fp16)."""

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import requires_cuda
from vit_impl import create_vit
from vit_impl.kernels import flash_attention, flash_attention_qkvpacked, reference_attention

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SHAPES = [(1, 1, 1, 64), (2, 3, 197, 64), (1, 2, 50, 32), (1, 2, 65, 80), (1, 1, 257, 128), (1, 2, 33, 96)]


def _forward_backward(fn, q, k, v, do):
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    out = fn(q, k, v)
    out.backward(do)
    return [out.detach(), q.grad, k.grad, v.grad]


def _check_against_fp32(shape, dtype, seed=0):
    torch.manual_seed(seed)
    q, k, v, do = (torch.randn(shape, device=DEVICE, dtype=dtype) for _ in range(4))
    exact = _forward_backward(reference_attention, *(t.double() for t in (q, k, v, do)))
    ours = _forward_backward(flash_attention, q, k, v, do)
    # PyTorch's own attention in the same precision: its error against fp64 sets the bound for ours.
    torch_low = _forward_backward(lambda *a: reference_attention(*a, upcast=False), q, k, v, do)
    names = ["out", "dq", "dk", "dv"]
    for name, got, low, ref in zip(names, ours, torch_low, exact):
        our_err = (got.double() - ref).abs().max().item()
        if dtype == torch.float32:
            assert our_err <= 1e-4, (name, our_err)
        else:
            torch_err = (low.double() - ref).abs().max().item()
            assert our_err <= 2 * torch_err + 1e-3, (name, our_err, torch_err)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_forward_and_gradients(shape, dtype):
    _check_against_fp32(shape, dtype)


@requires_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("shape", SHAPES + [(4, 12, 577, 64), (2, 16, 785, 80)], ids=lambda s: "x".join(map(str, s)))
def test_bf16_on_gpu(shape):
    # bf16 tl.dot is wrong in the CPU interpreter (a Triton bug), so bf16 is checked on the GPU only.
    _check_against_fp32(shape, torch.bfloat16)


def test_qkvpacked_matches_sdpa_and_writes_packed_gradient():
    torch.manual_seed(1)
    B, N, H, D = 2, 65, 3, 32
    qkv = torch.randn(B, N, 3, H, D, device=DEVICE, requires_grad=True)
    ours = flash_attention_qkvpacked(qkv)
    assert ours.shape == (B, N, H * D) and ours.is_contiguous()
    ours.sum().backward()
    ref_qkv = qkv.detach().clone().requires_grad_()
    q, k, v = ref_qkv.permute(2, 0, 3, 1, 4).unbind(0)
    expected = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, N, H * D)
    expected.sum().backward()
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(qkv.grad, ref_qkv.grad, atol=1e-5, rtol=1e-5)


def test_strided_inputs_and_custom_scale():
    torch.manual_seed(2)
    base = torch.randn(1, 50, 2, 64, device=DEVICE)  # (B, N, H, D): a transposed, non-contiguous view
    q = base.transpose(1, 2)
    k, v = torch.randn_like(q), torch.randn_like(q)
    torch.testing.assert_close(flash_attention(q, k, v, scale=0.3), reference_attention(q, k, v, scale=0.3),
                               atol=1e-5, rtol=1e-5)


def test_tiny_vit_triton_matches_sdpa():
    torch.manual_seed(3)
    model = create_vit("Mu/4", img_size=28, in_chans=1, num_classes=10, depth=2).to(DEVICE)
    x = torch.randn(3, 1, 28, 28, device=DEVICE)
    y = torch.tensor([0, 4, 9], device=DEVICE)
    results = {}
    for backend in ("sdpa", "triton"):
        model.zero_grad()
        model.set_attn_backend(backend)
        logits = model(x)
        F.cross_entropy(logits, y).backward()
        results[backend] = (logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()})
    torch.testing.assert_close(results["triton"][0], results["sdpa"][0], atol=1e-5, rtol=1e-5)
    for name, grad in results["sdpa"][1].items():
        torch.testing.assert_close(results["triton"][1][name], grad, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: [torch.randn(1, 2, 8, 64)] * 2 + [torch.randn(1, 2, 9, 64)], "same shape"),
        (lambda: [torch.randn(1, 2, 8, 64), torch.randn(1, 2, 8, 64).half(), torch.randn(1, 2, 8, 64)], "dtype"),
        (lambda: [torch.randn(1, 2, 8, 40)] * 3, "head dim 40"),
        (lambda: [torch.randn(1, 2, 8, 256)] * 3, "head dim 256"),
        (lambda: [torch.randn(2, 8, 64)] * 3, r"\(B, H, N, D\)"),
        (lambda: [torch.randn(1, 2, 8, 64).double()] * 3, "unsupported dtype"),
        (lambda: [torch.randn(1, 2, 8, 64, dtype=torch.float16).to(torch.int16)] * 3, "unsupported dtype"),
    ],
)
def test_bad_input_is_a_clear_error(make, match):
    with pytest.raises(ValueError, match=match):
        flash_attention(*make())


@requires_cuda
def test_device_mix_is_a_clear_error():
    q = torch.randn(1, 2, 8, 64, device="cuda")
    with pytest.raises(ValueError, match="one device"):
        flash_attention(q, q.cpu(), q)


def test_cpu_without_interpreter_names_the_cuda_requirement():
    import subprocess
    import sys

    code = (
        "import torch; from vit_impl import create_vit; m = create_vit('Mu/4', img_size=28, in_chans=1, "
        "attn_backend='triton'); m(torch.randn(1, 1, 28, 28))"
    )
    env = {k: v for k, v in __import__("os").environ.items() if k != "TRITON_INTERPRET"}
    env["CUDA_VISIBLE_DEVICES"] = ""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode != 0
    assert "needs a CUDA device" in proc.stderr
