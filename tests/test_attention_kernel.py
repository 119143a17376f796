"""Triton fused attention vs an fp64 reference, on odd ViT lengths (CPU: TRITON_INTERPRET=1, fp32 and fp16).

bf16 `tl.dot` is wrong in the CPU interpreter (a Triton bug), so bf16 is checked on a GPU only."""

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from tests.conftest import requires_cuda
from vit_impl import create_vit
from vit_impl.kernels import attention_flops, flash_attention, flash_attention_qkvpacked, reference_attention

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# Odd lengths (ragged last tiles), one length that is a multiple of every tile (no ragged tile), head dims that
# are not powers of two (80, 96: masked head-dim columns).
SHAPES = [(1, 1, 1, 64), (2, 3, 197, 64), (1, 2, 50, 32), (1, 2, 65, 80), (1, 1, 257, 128), (1, 2, 33, 96),
          (1, 2, 128, 64)]
GPU_SHAPES = [(4, 12, 197, 64), (2, 12, 577, 64)]


def _forward_backward(fn, q, k, v, do):
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    out = fn(q, k, v)
    out.backward(do)
    return [out.detach(), q.grad, k.grad, v.grad]


def _check_against_fp64(q, k, v, do, scale=None):
    """Our output and gradients against fp64; in fp16/bf16 within twice PyTorch's own error in that dtype."""
    exact = _forward_backward(lambda *a: reference_attention(*a, scale=scale), *(t.double() for t in (q, k, v, do)))
    ours = _forward_backward(lambda *a: flash_attention(*a, scale=scale), q, k, v, do)
    torch_low = _forward_backward(lambda *a: reference_attention(*a, scale=scale, upcast=False), q, k, v, do)
    for name, got, low, ref in zip(["out", "dq", "dk", "dv"], ours, torch_low, exact):
        our_err = (got.double() - ref).abs().max().item()
        if q.dtype == torch.float32:
            assert our_err <= 1e-4, (name, our_err)
        else:
            torch_err = (low.double() - ref).abs().max().item()
            assert our_err <= 2 * torch_err + 1e-3, (name, our_err, torch_err)


def _random(shape, dtype, seed=0):
    torch.manual_seed(seed)
    return [torch.randn(shape, device=DEVICE, dtype=dtype) for _ in range(4)]


def _python(code: str, **env) -> subprocess.CompletedProcess:
    """Runs code in a fresh interpreter without TRITON_INTERPRET (and without a GPU)."""
    env = {**{k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}, "CUDA_VISIBLE_DEVICES": "", **env}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_forward_and_gradients(shape, dtype):
    _check_against_fp64(*_random(shape, dtype))


@requires_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("shape", GPU_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_half_precision_on_gpu(shape, dtype):
    _check_against_fp64(*_random(shape, dtype))


# The dK/dV kernel's own padded key rows overflow here too (numpy warns in the interpreter); they are never stored.
@pytest.mark.filterwarnings("ignore:overflow encountered in cast", "ignore:invalid value encountered in matmul")
def test_very_negative_logits_leave_padded_keys_out_of_dq():
    """All logits ~ -32 (log-sum-exp ~ -38 in base 2): a padded key read as k = 0 would get probability
    2**38, inf in fp16, and dQ += inf * 0 = NaN. The ragged key tile masks padded keys to -inf instead."""
    torch.manual_seed(4)
    shape = (1, 2, 197, 64)
    q = (-2 - 0.1 * torch.randn(shape)).half().to(DEVICE)
    k = (2 + 0.1 * torch.randn(shape)).half().to(DEVICE)
    v, do = (torch.randn(shape, device=DEVICE, dtype=torch.float16) for _ in range(2))
    _check_against_fp64(q, k, v, do)


@pytest.mark.parametrize("layout", ["transposed", "expanded", "sliced"])
def test_non_contiguous_output_gradient(layout):
    torch.manual_seed(5)
    B, N, H, D = 2, 33, 2, 32
    qkv = torch.randn(B, N, 3, H, D, device=DEVICE, requires_grad=True)
    do = {
        "transposed": torch.randn(B, H * D, N, device=DEVICE).transpose(1, 2),  # last-dim stride N
        "expanded": torch.randn(1, 1, H * D, device=DEVICE).expand(B, N, H * D),  # strides (0, 0, 1)
        "sliced": torch.randn(B, N, 2 * H * D, device=DEVICE)[..., ::2],  # last-dim stride 2
    }[layout]
    flash_attention_qkvpacked(qkv).backward(do)
    ref_qkv = qkv.detach().clone().requires_grad_()
    q, k, v = ref_qkv.permute(2, 0, 3, 1, 4).unbind(0)
    reference_attention(q, k, v).transpose(1, 2).reshape(B, N, H * D).backward(do)
    torch.testing.assert_close(qkv.grad, ref_qkv.grad, atol=1e-5, rtol=1e-5)


def test_batch_offsets_past_2_31_elements():
    """q, k, v of sample 2 start 2**32 - 2*P elements into their storage (P = one sample): a 32-bit
    b * stride_b wraps to -2*P and reads sample 2 from the zeros in front of the view. The storage is 8 GiB of
    address space, but only the pages the view touches are ever allocated. (Outputs and gradients are compact, so
    this checks the loads; the stores take their offsets from the same 64-bit helper.)"""
    B, N, H, D = 3, 20, 1, 16
    P = N * 3 * H * D
    stride_b = 2**31 - P  # a 32-bit stride, so Triton passes it as i32
    try:
        storage = torch.empty(2 * P + 2 * stride_b + P, dtype=torch.float16, device=DEVICE)
    except RuntimeError as err:  # no 8 GiB of address space (or GPU memory)
        pytest.skip(f"cannot reserve the storage: {err}")
    storage[: 2 * P].zero_()
    qkv = storage.as_strided((B, N, 3, H, D), (stride_b, 3 * H * D, H * D, D, 1), storage_offset=2 * P)
    torch.manual_seed(6)
    compact = torch.randn(B, N, 3, H, D, device=DEVICE, dtype=torch.float16)
    qkv.copy_(compact)
    do = torch.randn(B, N, H * D, device=DEVICE, dtype=torch.float16)
    results = []
    for x in (qkv, compact):
        x.requires_grad_()
        out = flash_attention_qkvpacked(x)
        out.backward(do)
        results.append((out, x.grad))
    torch.testing.assert_close(results[0], results[1], atol=0, rtol=0)
    q, k, v = compact.detach().float().permute(2, 0, 3, 1, 4).unbind(0)
    expected = reference_attention(q, k, v).transpose(1, 2).reshape(B, N, H * D)
    torch.testing.assert_close(results[1][0].float(), expected, atol=2e-3, rtol=2e-3)


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


def _tiny_vit(depth=2):
    torch.manual_seed(3)
    return create_vit("Mu/4", img_size=28, in_chans=1, num_classes=10, depth=depth).to(DEVICE)


def _logits_and_grads(model, x, y, forward=None):
    model.zero_grad()
    logits = (model if forward is None else forward)(x)
    F.cross_entropy(logits, y).backward()
    return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def _assert_same_step(got, expected):
    torch.testing.assert_close(got[0], expected[0], atol=1e-5, rtol=1e-5)
    for name, grad in expected[1].items():
        torch.testing.assert_close(got[1][name], grad, atol=1e-5, rtol=1e-4, msg=name)


def test_tiny_vit_triton_matches_sdpa():
    model = _tiny_vit()
    x = torch.randn(3, 1, 28, 28, device=DEVICE)
    y = torch.tensor([0, 4, 9], device=DEVICE)
    results = {}
    for backend in ("sdpa", "triton"):
        model.set_attn_backend(backend)
        results[backend] = _logits_and_grads(model, x, y)
    _assert_same_step(results["triton"], results["sdpa"])


def test_torch_compile_traces_attention_as_one_op_without_graph_breaks():
    """Dynamo sees each block's attention as one vitbench op (no graph break, no SDPA stand-in), and the
    compiled model (aot_eager: forward and backward graphs through the registered autograd) matches eager."""
    torch.manual_seed(3)
    model = create_vit("Mu/4", img_size=28, in_chans=1, num_classes=10, attn_backend="triton").to(DEVICE)
    x = torch.randn(3, 1, 28, 28, device=DEVICE)
    y = torch.tensor([0, 4, 9], device=DEVICE)

    explanation = torch._dynamo.explain(model)(x)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1
    targets = [node.target for node in explanation.graphs[0].graph.nodes if node.op == "call_function"]
    assert targets.count(torch.ops.vitbench.flash_attn_qkvpacked_fwd.default) == len(model.blocks)

    eager = _logits_and_grads(model, x, y)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    _assert_same_step(_logits_and_grads(model, x, y, forward=compiled), eager)


def test_flop_counter_counts_the_kernels():
    B, H, N, D = 2, 3, 50, 32
    qkv = torch.randn(B, N, 3, H, D, device=DEVICE, requires_grad=True)
    for fn, inputs in [(flash_attention, qkv.detach().permute(2, 0, 3, 1, 4).unbind(0)),
                       (flash_attention_qkvpacked, (qkv,))]:
        inputs = [t.detach().requires_grad_() for t in inputs]
        with FlopCounterMode(display=False) as counter:
            fn(*inputs).sum().backward()
        assert counter.get_total_flops() == attention_flops(B, H, N, D, with_backward=True), fn.__name__

    model, x = _tiny_vit(), torch.randn(3, 1, 28, 28, device=DEVICE)
    totals = {}
    for backend in ("math", "triton"):  # the math backend's two matmuls are the kernel's forward FLOPs
        model.set_attn_backend(backend)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
        totals[backend] = counter.get_total_flops()
    assert totals["triton"] == totals["math"] > 0


@requires_cuda
@pytest.mark.gpu
def test_inductor_compiled_vit_training_step_matches_eager_on_gpu():
    model = _tiny_vit()
    model.set_attn_backend("triton")
    x = torch.randn(8, 1, 28, 28, device=DEVICE)
    y = torch.arange(8, device=DEVICE)
    eager = _logits_and_grads(model, x, y)
    compiled = _logits_and_grads(model, x, y, forward=torch.compile(model, fullgraph=True))
    torch.testing.assert_close(compiled[0], eager[0], atol=1e-4, rtol=1e-4)
    for name, grad in eager[1].items():
        torch.testing.assert_close(compiled[1][name], grad, atol=1e-4, rtol=1e-3, msg=name)


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
    proc = _python("import torch; from vit_impl import create_vit; m = create_vit('Mu/4', img_size=28, "
                   "in_chans=1, attn_backend='triton'); m(torch.randn(1, 1, 28, 28))")
    assert proc.returncode != 0
    assert "needs a CUDA device" in proc.stderr


@pytest.mark.parametrize("fixed", ["0", "1"])
def test_fixed_config_switch(fixed):
    """The switch leaves each kernel one configuration, the first; without it, all of them are autotuned."""
    proc = _python("from vit_impl.kernels import attention as A\n"
                   "kernels = [(A._fwd, A.FWD_TILES), (A._bwd_dkdv, A.DKDV_TILES), (A._bwd_dq, A.DQ_TILES)]\n"
                   "for kernel, tiles in kernels:\n"
                   "    assert kernel.configs == A.tile_configs(tiles)[:1 if A.FIXED_CONFIG else None]\n"
                   "print(A.FIXED_CONFIG)", VITBENCH_TRITON_FIXED_CONFIG=fixed)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(fixed == "1")


_TRACE_GPU_PATH = """
import json, torch, triton
from torch._functorch.aot_autograd import aot_function
from torch._higher_order_ops.triton_kernel_wrap import kernel_side_table
from torch._subclasses.fake_tensor import FakeTensorMode
from triton.backends.compiler import GPUTarget

class TargetOnly:  # stands in for the CUDA driver: tracing needs the target (for TTIR), not a device
    def get_current_target(self):
        return GPUTarget("cuda", 90, 32)

triton.runtime.driver.set_active(TargetOnly())
from vit_impl.kernels.attention import _flash_attn_fwd, _flash_attn_qkvpacked_fwd

graphs = []
def capture(gm, _):
    graphs.append([(kernel_side_table.get_kernel(n.kwargs["kernel_idx"]).fn.__name__,
                    sorted(n.kwargs["tensors_to_clone"])) for n in gm.graph.nodes if n.op == "call_function"
                   and n.target is torch.ops.higher_order.triton_kernel_wrapper_functional])
    return gm
with FakeTensorMode():  # shapes only: nothing runs
    qkv = torch.randn(2, 50, 3, 2, 32, requires_grad=True)
    aot_function(lambda x: _flash_attn_qkvpacked_fwd(x, 0.2)[0], capture, capture)(qkv).sum().backward()
    q, k, v = (torch.randn(2, 2, 50, 32, requires_grad=True) for _ in range(3))
    aot_function(lambda *a: _flash_attn_fwd(*a, 0.2)[0], capture, capture)(q, k, v).sum().backward()
print(json.dumps(graphs))
"""


def test_gpu_ops_trace_into_the_triton_kernels():
    """Without the interpreter the ops are triton_ops: AOTAutograd (torch.compile's tracer) sees the kernels
    themselves, forward and backward, each writing only its outputs (no input is assumed mutated)."""
    proc = _python(_TRACE_GPU_PATH)
    assert proc.returncode == 0, proc.stderr[-3000:]
    forward = [["_fwd_kernel", ["LSE", "O"]]]
    backward = [["_bwd_delta_kernel", ["DELTA"]], ["_bwd_dkdv_kernel", ["DK", "DV"]], ["_bwd_dq_kernel", ["DQ"]]]
    assert json.loads(proc.stdout) == [forward, backward, forward, backward]
