"""Fused attention in Triton, FlashAttention-2 style (Dao 2023), non-causal, for any sequence length.

Layers, as in Liger-Kernel: Triton kernels -> launchers -> torch.autograd.Function -> module-facing functions,
with `reference_attention` (plain PyTorch) beside them for tests.

Every tensor is seen as (B, H, N, D) through its strides (last-dim stride 1), so the ViT hands the kernel the
qkv projection's output (B, N, 3, H, D) as three views and gets its output as (B, N, H, D) = (B, N, H*D)
with no permute/contiguous copy. The last query/key tile is masked: ViT lengths (197, 50, 65, 577, ...) are not
tile multiples. The forward saves the log-sum-exp (base 2) per row; the backward recomputes P from it and
computes dK, dV in one kernel (a program per key tile) and dQ in another (a program per query tile): no
atomics, so gradients are deterministic.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
LOG2E = 1.4426950408889634


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def supported_head_dim(d: int) -> bool:
    return d % 16 == 0 and 16 <= d <= 128


# ----------------------------------------------------------------------------------------------- kernels


@triton.jit
def _load_tile(base, offs_rows, offs_d, stride_row, n_rows, HEAD_DIM: tl.constexpr, MASK_ROWS: tl.constexpr):
    """A (rows, BLOCK_D) tile; padded rows and head-dim columns read as 0."""
    ptrs = base + offs_rows[:, None] * stride_row + offs_d[None, :]
    mask = offs_d[None, :] < HEAD_DIM
    if MASK_ROWS:
        mask = mask & (offs_rows[:, None] < n_rows)
    return tl.load(ptrs, mask=mask, other=0.0)


@triton.jit
def _fwd_inner(acc, m_i, l_i, q, k_base, v_base, stride_kn, stride_vn, start_n, end_n, N, qk_scale,
               HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
               MASK_N: tl.constexpr, PRECISION: tl.constexpr):
    offs_d = tl.arange(0, BLOCK_D)
    for s in range(start_n, end_n, BLOCK_N):
        offs_n = s + tl.arange(0, BLOCK_N)
        k = _load_tile(k_base, offs_n, offs_d, stride_kn, N, HEAD_DIM, MASK_N)  # (BLOCK_N, BLOCK_D)
        v = _load_tile(v_base, offs_n, offs_d, stride_vn, N, HEAD_DIM, MASK_N)
        qk = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale  # (BLOCK_M, BLOCK_N), log2 units
        if MASK_N:
            qk = tl.where(offs_n[None, :] < N, qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        p = tl.math.exp2(qk - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new
    return acc, m_i, l_i


@triton.jit
def _fwd_kernel(Q, K, V, O, LSE, qk_scale,
                stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn,
                stride_vb, stride_vh, stride_vn, stride_ob, stride_oh, stride_on,
                H, N, N_BUCKET,
                HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                PRECISION: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    q = _load_tile(Q + b * stride_qb + h * stride_qh, offs_m, offs_d, stride_qn, N, HEAD_DIM, True)
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    n_full = (N // BLOCK_N) * BLOCK_N
    # Full key tiles without masks, then the ragged last tile with them.
    acc, m_i, l_i = _fwd_inner(acc, m_i, l_i, q, k_base, v_base, stride_kn, stride_vn, 0, n_full, N, qk_scale,
                               HEAD_DIM, BLOCK_N, BLOCK_D, False, PRECISION)
    if n_full < N:
        acc, m_i, l_i = _fwd_inner(acc, m_i, l_i, q, k_base, v_base, stride_kn, stride_vn, n_full, N, N,
                                   qk_scale, HEAD_DIM, BLOCK_N, BLOCK_D, True, PRECISION)
    acc = acc / l_i[:, None]
    row_ok = offs_m < N
    tl.store(LSE + pid_bh * N + offs_m, m_i + tl.math.log2(l_i), mask=row_ok)
    o_ptrs = O + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_on + offs_d[None, :]
    tl.store(o_ptrs, acc.to(O.dtype.element_ty), mask=row_ok[:, None] & (offs_d[None, :] < HEAD_DIM))


@triton.jit
def _bwd_delta_kernel(O, DO, DELTA, stride_ob, stride_oh, stride_on, stride_dob, stride_doh, stride_don, H, N,
                      HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr):
    """delta_i = sum_d dO_id * O_id, one fp32 per row: the softmax-backward correction term."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    o = _load_tile(O + b * stride_ob + h * stride_oh, offs_m, offs_d, stride_on, N, HEAD_DIM, True)
    do = _load_tile(DO + b * stride_dob + h * stride_doh, offs_m, offs_d, stride_don, N, HEAD_DIM, True)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), axis=1)
    tl.store(DELTA + pid_bh * N + offs_m, delta, mask=offs_m < N)


@triton.jit
def _bwd_dkdv_kernel(Q, K, V, DO, DK, DV, LSE, DELTA, sm_scale, qk_scale,
                     stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn,
                     stride_vb, stride_vh, stride_vn, stride_dob, stride_doh, stride_don,
                     stride_dkb, stride_dkh, stride_dkn, stride_dvb, stride_dvh, stride_dvn,
                     H, N, N_BUCKET,
                     HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     PRECISION: tl.constexpr):
    """One program per key tile: loops over every query tile. Padded query rows read as q = dO = 0 and so
    add nothing to dK, dV; no mask needed inside the loop."""
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    k = _load_tile(K + b * stride_kb + h * stride_kh, offs_n, offs_d, stride_kn, N, HEAD_DIM, True)
    v = _load_tile(V + b * stride_vb + h * stride_vh, offs_n, offs_d, stride_vn, N, HEAD_DIM, True)
    q_base = Q + b * stride_qb + h * stride_qh
    do_base = DO + b * stride_dob + h * stride_doh
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    for start_m in range(0, N, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        q = _load_tile(q_base, offs_m, offs_d, stride_qn, N, HEAD_DIM, True)  # (BLOCK_M, BLOCK_D)
        do = _load_tile(do_base, offs_m, offs_d, stride_don, N, HEAD_DIM, True)
        row_ok = offs_m < N
        lse = tl.load(LSE + pid_bh * N + offs_m, mask=row_ok, other=0.0)
        delta = tl.load(DELTA + pid_bh * N + offs_m, mask=row_ok, other=0.0)
        qk_t = tl.dot(k, tl.trans(q), input_precision=PRECISION) * qk_scale  # (BLOCK_N, BLOCK_M)
        p_t = tl.math.exp2(qk_t - lse[None, :])
        dv += tl.dot(p_t.to(do.dtype), do, input_precision=PRECISION)
        dp_t = tl.dot(v, tl.trans(do), input_precision=PRECISION)
        ds_t = p_t * (dp_t - delta[None, :])
        dk += tl.dot(ds_t.to(q.dtype), q, input_precision=PRECISION)
    dk = dk * sm_scale
    mask = (offs_n[:, None] < N) & (offs_d[None, :] < HEAD_DIM)
    dk_ptrs = DK + b * stride_dkb + h * stride_dkh + offs_n[:, None] * stride_dkn + offs_d[None, :]
    dv_ptrs = DV + b * stride_dvb + h * stride_dvh + offs_n[:, None] * stride_dvn + offs_d[None, :]
    tl.store(dk_ptrs, dk.to(DK.dtype.element_ty), mask=mask)
    tl.store(dv_ptrs, dv.to(DV.dtype.element_ty), mask=mask)


@triton.jit
def _bwd_dq_kernel(Q, K, V, DO, DQ, LSE, DELTA, sm_scale, qk_scale,
                   stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn,
                   stride_vb, stride_vh, stride_vn, stride_dob, stride_doh, stride_don,
                   stride_dqb, stride_dqh, stride_dqn,
                   H, N, N_BUCKET,
                   HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   PRECISION: tl.constexpr):
    """One program per query tile: loops over every key tile. Padded key rows read as k = v = 0 and so add
    nothing to dQ (dS * k = 0); no mask needed inside the loop."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    q = _load_tile(Q + b * stride_qb + h * stride_qh, offs_m, offs_d, stride_qn, N, HEAD_DIM, True)
    do = _load_tile(DO + b * stride_dob + h * stride_doh, offs_m, offs_d, stride_don, N, HEAD_DIM, True)
    row_ok = offs_m < N
    lse = tl.load(LSE + pid_bh * N + offs_m, mask=row_ok, other=0.0)
    delta = tl.load(DELTA + pid_bh * N + offs_m, mask=row_ok, other=0.0)
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for start_n in range(0, N, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k = _load_tile(k_base, offs_n, offs_d, stride_kn, N, HEAD_DIM, True)  # (BLOCK_N, BLOCK_D)
        v = _load_tile(v_base, offs_n, offs_d, stride_vn, N, HEAD_DIM, True)
        qk = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale  # (BLOCK_M, BLOCK_N)
        p = tl.math.exp2(qk - lse[:, None])
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)
    dq = dq * sm_scale
    dq_ptrs = DQ + b * stride_dqb + h * stride_dqh + offs_m[:, None] * stride_dqn + offs_d[None, :]
    tl.store(dq_ptrs, dq.to(DQ.dtype.element_ty), mask=row_ok[:, None] & (offs_d[None, :] < HEAD_DIM))


# ------------------------------------------------------------------------------------- autotuning setup


def _tile_configs() -> list[triton.Config]:
    """Tile sizes tried on a GPU; one fixed config under the CPU interpreter (which cannot benchmark)."""
    if interpreting():
        return [triton.Config({"BLOCK_M": 64, "BLOCK_N": 64})]
    return [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
        for bm, bn, w, s in [
            (128, 64, 8, 3), (128, 64, 4, 3), (128, 32, 4, 3), (64, 64, 4, 3),
            (64, 64, 4, 2), (64, 32, 4, 2), (128, 128, 8, 2), (32, 32, 2, 2),
        ]
    ]


def _tuned(kernel):
    """Autotune on (head dim, bucket of N); Triton adds the tensors' dtypes to the key itself."""
    configs = _tile_configs()
    if len(configs) == 1:
        return kernel  # interpreter: launched with the single config's meta-parameters
    return triton.autotune(configs=configs, key=["HEAD_DIM", "N_BUCKET"])(kernel)


_fwd = _tuned(_fwd_kernel)
_bwd_dkdv = _tuned(_bwd_dkdv_kernel)
_bwd_dq = _tuned(_bwd_dq_kernel)


def _fixed_meta() -> dict:
    configs = _tile_configs()
    return dict(configs[0].kwargs) if len(configs) == 1 else {}


# ------------------------------------------------------------------------------------------ launchers


def _n_bucket(n: int) -> int:
    """Autotuning key: lengths within a power of two share a tuned config (197 and 257 do not re-tune)."""
    return triton.next_power_of_2(n)


def _strides(t: torch.Tensor) -> tuple[int, int, int]:
    return t.stride(0), t.stride(1), t.stride(2)  # (B, H, N) strides of a (B, H, N, D) view


def _precision(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"  # tf32 is ignored for fp16/bf16 operands


def _check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    if not (q.ndim == k.ndim == v.ndim == 4):
        raise ValueError(f"flash_attention expects (B, H, N, D) tensors, got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    if not (q.shape == k.shape == v.shape):
        raise ValueError(f"q, k, v must have the same shape (self-attention), got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if q.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"unsupported dtype {q.dtype}; allowed: float16, bfloat16, float32")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    if not supported_head_dim(q.shape[-1]):
        raise ValueError(f"unsupported head dim {q.shape[-1]}; allowed: multiples of 16 from 16 to 128 "
                         "(32, 64, 80, 96, 128 for the ViT variants)")
    if q.shape[2] == 0 or q.shape[0] * q.shape[1] == 0:
        raise ValueError(f"empty attention input {tuple(q.shape)}")
    if q.device.type != "cuda" and not interpreting():
        raise RuntimeError(f"the triton attention backend needs a CUDA device (got a {q.device.type} tensor); "
                           "use attn_backend='sdpa' or 'math' on this device, or set TRITON_INTERPRET=1 "
                           "before importing vit_impl to run the kernel (slowly) on the CPU")


def _last_dim_contiguous(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def flash_attention_forward(q, k, v, o, scale: float) -> torch.Tensor:
    """Writes softmax(q k^T * scale) v into o; returns the base-2 log-sum-exp, (B*H, N) fp32."""
    B, H, N, D = q.shape
    lse = torch.empty((B * H, N), device=q.device, dtype=torch.float32)
    grid = lambda meta: (triton.cdiv(N, meta["BLOCK_M"]), B * H)  # noqa: E731
    _fwd[grid](q, k, v, o, lse, scale * LOG2E, *_strides(q), *_strides(k), *_strides(v), *_strides(o),
               H, N, _n_bucket(N), HEAD_DIM=D, BLOCK_D=max(16, triton.next_power_of_2(D)),
               PRECISION=_precision(q.dtype), **_fixed_meta())
    return lse


def flash_attention_backward(q, k, v, o, lse, do, dq, dk, dv, scale: float) -> None:
    """Writes dQ, dK, dV (any (B, H, N, D) strided views) for upstream gradient do."""
    B, H, N, D = q.shape
    block_d = max(16, triton.next_power_of_2(D))
    delta = torch.empty_like(lse)
    _bwd_delta_kernel[(triton.cdiv(N, 64), B * H)](o, do, delta, *_strides(o), *_strides(do), H, N,
                                                    HEAD_DIM=D, BLOCK_D=block_d, BLOCK_M=64)
    common = dict(HEAD_DIM=D, BLOCK_D=block_d, PRECISION=_precision(q.dtype), **_fixed_meta())
    qkv_do_strides = (*_strides(q), *_strides(k), *_strides(v), *_strides(do))
    _bwd_dkdv[lambda meta: (triton.cdiv(N, meta["BLOCK_N"]), B * H)](
        q, k, v, do, dk, dv, lse, delta, scale, scale * LOG2E, *qkv_do_strides, *_strides(dk), *_strides(dv),
        H, N, _n_bucket(N), **common)
    _bwd_dq[lambda meta: (triton.cdiv(N, meta["BLOCK_M"]), B * H)](
        q, k, v, do, dq, lse, delta, scale, scale * LOG2E, *qkv_do_strides, *_strides(dq),
        H, N, _n_bucket(N), **common)


# ------------------------------------------------------------------------------------ autograd functions


class FlashAttention(torch.autograd.Function):
    """q, k, v: (B, H, N, D) -> (B, H, N, D)."""

    @staticmethod
    def forward(ctx, q, k, v, scale):
        q, k, v = (_last_dim_contiguous(t) for t in (q, k, v))
        o = torch.empty(q.shape, device=q.device, dtype=q.dtype)
        lse = flash_attention_forward(q, k, v, o, scale)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.scale = scale
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse = ctx.saved_tensors
        dq, dk, dv = (torch.empty(t.shape, device=t.device, dtype=t.dtype) for t in (q, k, v))
        flash_attention_backward(q, k, v, o, lse, _last_dim_contiguous(do), dq, dk, dv, ctx.scale)
        return dq, dk, dv, None


class FlashAttentionQKVPacked(torch.autograd.Function):
    """qkv: (B, N, 3, H, D), the qkv projection's output as is -> (B, N, H*D), ready for the out projection.

    q, k, v and their gradients are strided views of one (B, N, 3, H, D) buffer: no permute copies."""

    @staticmethod
    def forward(ctx, qkv, scale):
        qkv = _last_dim_contiguous(qkv)
        B, N, _, H, D = qkv.shape
        o = torch.empty((B, N, H, D), device=qkv.device, dtype=qkv.dtype)
        q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))  # (B, H, N, D) views
        lse = flash_attention_forward(q, k, v, o.transpose(1, 2), scale)
        ctx.save_for_backward(qkv, o, lse)
        ctx.scale = scale
        return o.view(B, N, H * D)

    @staticmethod
    def backward(ctx, do):
        qkv, o, lse = ctx.saved_tensors
        B, N, _, H, D = qkv.shape
        do = _last_dim_contiguous(do).view(B, N, H, D).transpose(1, 2)
        dqkv = torch.empty_like(qkv)
        views = [t[:, :, i].transpose(1, 2) for t in (qkv, dqkv) for i in range(3)]
        flash_attention_backward(*views[:3], o.transpose(1, 2), lse, do, *views[3:], ctx.scale)
        return dqkv, None


# ------------------------------------------------------------------------------------------ public API


def flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """Like F.scaled_dot_product_attention(q, k, v, scale=scale) for (B, H, N, D) inputs, non-causal."""
    _check_inputs(q, k, v)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    return FlashAttention.apply(q, k, v, scale)


def flash_attention_qkvpacked(qkv: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """Fused attention on the qkv projection's output (B, N, 3, H, D) -> (B, N, H*D)."""
    if qkv.ndim != 5 or qkv.shape[2] != 3:
        raise ValueError(f"flash_attention_qkvpacked expects (B, N, 3, H, D), got {tuple(qkv.shape)}")
    q, k, v = qkv.unbind(2)
    _check_inputs(q, k, v)
    scale = qkv.shape[-1] ** -0.5 if scale is None else float(scale)
    return FlashAttentionQKVPacked.apply(qkv, scale)


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None,
                        upcast: bool = True) -> torch.Tensor:
    """softmax(q k^T * scale) v in plain PyTorch; upcast=True computes in fp32 (the tests' ground truth)."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    dtype = q.dtype
    if upcast:
        q, k, v = q.float(), k.float(), v.float()
    attn = torch.softmax((q @ k.transpose(-2, -1)) * scale, dim=-1)
    return (attn @ v).to(dtype)


def attention_flops(batch: int, heads: int, seq_len: int, head_dim: int, with_backward: bool = False) -> float:
    """Matmul FLOPs of attention: forward 2 matmuls of 2*N*N*D; backward 5 such (2.5x), so fwd+bwd is 3.5x."""
    forward = 4.0 * batch * heads * seq_len * seq_len * head_dim
    return forward * (3.5 if with_backward else 1.0)


__all__ = [
    "attention_flops",
    "flash_attention",
    "flash_attention_qkvpacked",
    "reference_attention",
]
