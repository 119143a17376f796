"""Task `attention`: one attention backend at one (B, H, N, D) shape: forward and forward+backward time,
achieved TFLOP/s, peak memory of forward+backward, max error against a higher-precision computation.

Backends: triton (ours), math (explicit softmax in the input dtype), sdpa (PyTorch's dispatcher's pick),
sdpa_flash / sdpa_efficient / sdpa_cudnn (one SDPA kernel forced), flex (FlexAttention, compiled). One that
cannot run here is recorded as status `skipped` with the reason. The timed backward computes gradients with
torch.autograd.grad, so nothing accumulates into q.grad / k.grad / v.grad inside the timed region.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..measure.memory import MIB, PeakMemory
from ..measure.noise import SystemLoad, noise_columns
from ..measure.phases import phase
from ..measure.timing import time_steps
from ..paths import CellContext
from ..precision import TORCH_DTYPES
from ..results import RowMaker
from ..spec import ATTENTION_BACKENDS, CellSpec, SpecError
from .common import Task, reads

READS = reads("dtype", "attn_shape", attn_backend=ATTENTION_BACKENDS)  # no model: a kernel at a shape
SDPA_KERNELS = {
    "sdpa_flash": SDPBackend.FLASH_ATTENTION,
    "sdpa_efficient": SDPBackend.EFFICIENT_ATTENTION,
    "sdpa_cudnn": SDPBackend.CUDNN_ATTENTION,
}


class Unavailable(Exception):
    """This backend cannot run on this device / build: recorded as skipped, with the reason."""


def check(spec: CellSpec) -> CellSpec:
    if spec.attn_shape is None:
        raise SpecError("task attention needs attn_shape: [batch, heads, seq_len, head_dim]")
    return spec


@functools.cache
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def attention_fn(backend: str, device: str):
    """(q, k, v) -> out for a backend, or Unavailable."""
    if backend == "triton":
        from vit_impl.kernels import flash_attention
        from vit_impl.kernels.attention import interpreting

        if device != "cuda" and not interpreting():
            raise Unavailable("the Triton kernel needs a CUDA device (or TRITON_INTERPRET=1, very slow, on CPU)")
        return flash_attention
    if backend == "math":
        from vit_impl.kernels import reference_attention

        return functools.partial(reference_attention, upcast=False)
    if backend == "sdpa":
        return F.scaled_dot_product_attention
    if backend in SDPA_KERNELS:
        if device != "cuda":
            raise Unavailable(f"SDPA's {backend[5:]} kernel exists only on CUDA devices")

        def forced(q, k, v):
            with sdpa_kernel(SDPA_KERNELS[backend]):
                return F.scaled_dot_product_attention(q, k, v)

        return forced
    if backend == "flex":
        if device != "cuda":
            raise Unavailable("compiled FlexAttention is measured on CUDA devices only")
        return _compiled_flex()
    raise ValueError(f"unknown attention backend {backend!r}")


def run(spec: CellSpec, ctx: CellContext) -> list[dict]:
    from vit_impl.kernels import attention_flops

    device, dtype = spec.device, TORCH_DTYPES[spec.dtype]
    B, H, N, D = spec.attn_shape
    maker = RowMaker(spec, ctx, attn_backend_used=spec.attn_backend, family="attention", impl=spec.attn_backend,
                     variant=spec.column_value("attn_shape"))
    try:
        fn = attention_fn(spec.attn_backend, device)
        torch.manual_seed(spec.seed)
        q, k, v, grad = (torch.randn(B, H, N, D, device=device, dtype=dtype) for _ in range(4))
        q.requires_grad_(), k.requires_grad_(), v.requires_grad_()
        out = fn(q, k, v)  # first call: compilation / autotuning; also catches "no kernel for this input"
        grads = torch.autograd.grad(out, (q, k, v), grad)
    except Unavailable as why:
        return [maker.failure("skipped", str(why))]
    except RuntimeError as err:
        if "No available kernel" in str(err) or "not supported" in str(err).lower():
            return [maker.failure("skipped", str(err).splitlines()[0][:300])]
        raise
    max_error, grad_error = _errors_vs_reference(out, grads, q, k, v, grad)

    phase("train")

    def forward():
        with torch.no_grad():
            fn(q, k, v)

    def forward_backward():
        torch.autograd.grad(fn(q, k, v), (q, k, v), grad)

    with PeakMemory(device) as mem:
        forward_backward()
    result = [maker.row("peak_memory", mem.peak_bytes / MIB, n_repeats=1),
              maker.row("max_error", max_error, n_repeats=1),
              maker.row("max_grad_error", grad_error, n_repeats=1)]
    for time_metric, tflops_metric, step, with_backward in (("fwd_time", "fwd_tflops", forward, False),
                                                            ("fwd_bwd_time", "fwd_bwd_tflops", forward_backward, True)):
        with SystemLoad() as load:
            timing = time_steps(step, device=device, warmup=spec.warmup, repeats=spec.repeats, iters=spec.iters)
        t, t20, t80 = timing.spread()
        noise = noise_columns(load.report, t20, t80, timing.host_bound)
        flops = attention_flops(B, H, N, D, with_backward=with_backward)
        n = len(timing.seconds)
        result += [maker.row(time_metric, t * 1e3, p20=t20 * 1e3, p80=t80 * 1e3, n_repeats=n,
                             samples=[s * 1e3 for s in timing.seconds], **noise),
                   maker.row(tflops_metric, flops / t / 1e12, p20=flops / t80 / 1e12,
                             p80=flops / t20 / 1e12, n_repeats=n, **noise)]
    return result


def _errors_vs_reference(out, grads, q, k, v, grad) -> tuple[float, float]:
    """Max abs error of the output and of dq, dk, dv against an explicit-softmax computation in higher
    precision: fp32 for fp16/bf16 inputs, fp64 for fp32 inputs (so an fp32 kernel is not compared with itself)."""
    from vit_impl.kernels import reference_attention

    ref_dtype = torch.float64 if q.dtype == torch.float32 else torch.float32
    ref_inputs = [t.detach().to(ref_dtype).requires_grad_() for t in (q, k, v)]
    ref = reference_attention(*ref_inputs, upcast=False)
    ref_grads = torch.autograd.grad(ref, ref_inputs, grad.to(ref_dtype))
    out_error = (out.detach().to(ref_dtype) - ref.detach()).abs().max().item()
    grad_error = max((g.to(ref_dtype) - r).abs().max().item() for g, r in zip(grads, ref_grads))
    return out_error, grad_error


TASKS = (Task("attention", "throughput", 1, READS, check, run,
              "one attention kernel at one (B, H, N, D) shape: fwd and fwd+bwd time, TFLOP/s, memory, error"),)
