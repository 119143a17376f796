"""Fused attention in Triton, FlashAttention-2 style (Dao 2023), non-causal, for any sequence length.

Layers: Triton kernels -> launchers -> torch.library ops with their autograd and FLOP formulas -> module-facing
functions, with `reference_attention` (plain PyTorch) beside them for tests.

Every tensor is seen as (B, H, N, D) through its strides (last-dim stride 1), so the ViT hands the kernel the
qkv projection's output (B, N, 3, H, D) as three views and gets its output as (B, N, H, D) = (B, N, H*D)
with no permute/contiguous copy. Full query/key tiles load without masks; only the ragged last tile is masked
(ViT lengths 197, 50, 65, 577, ... are not tile multiples). The forward saves the log-sum-exp (base 2) per row;
the backward recomputes P from it and computes dK, dV in one kernel (a program per key tile, small query tiles)
and dQ in another (a program per query tile, small key tiles): no atomics, so gradients are deterministic.
Batch and head offsets are 64-bit (B*N*3*H*D passes 2**31 elements at ViT-B/8 batch ~1,190) and the grid is
1-D (no 65,535 limit on B*H).

The kernels run inside `torch.library.triton_op`s ("vitbench::flash_attn_fwd", "vitbench::flash_attn_bwd" and
their qkv-packed twins) launched through `wrap_triton`: torch.compile sees one op per attention (no graph
break) and traces into its kernels, autograd uses the registered backward op, and FlopCounterMode counts
4*B*H*N^2*D per forward and 2.5 times that per backward. Under the CPU interpreter, which torch.compile cannot
trace, the same bodies are registered as opaque custom ops that launch the kernels without wrap_triton.

Autotuning: each kernel tries its configurations (the tables below, kept by tools/kernel_compile_table.py:
they compile for sm_80 and sm_90 within shared memory and without register spills) once per head dim, dtype
and power-of-two bucket of N. Environment, read at import:
  VITBENCH_TRITON_FIXED_CONFIG=1  each kernel's first configuration, no autotuning (bounded start-up)
  TRITON_INTERPRET=1              the kernels on the CPU (slowly), with their first configuration
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch._subclasses.fake_tensor import is_fake
from torch.library import triton_op
from torch.utils.flop_counter import register_flop_formula

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
LOG2E = 1.4426950408889634
BWD_FLOPS_FACTOR = 2.5  # the backward's 5 matmuls of 2*N*N*D against the forward's 2


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def supported_head_dim(d: int) -> bool:
    return d % 16 == 0 and 16 <= d <= 128


_INTERPRETED = interpreting()  # triton.jit decides at import whether the kernels below are interpreted
FIXED_CONFIG = _INTERPRETED or os.environ.get("VITBENCH_TRITON_FIXED_CONFIG", "0") == "1"

# ----------------------------------------------------------------------------------------------- kernels


@triton.jit
def _program_ids(N, BLOCK: tl.constexpr):
    """1-D grid of cdiv(N, BLOCK) tiles per (batch, head), the tiles of one head adjacent -> (tile, b*H + h)."""
    n_tiles = tl.cdiv(N, BLOCK)
    pid = tl.program_id(0)
    return pid % n_tiles, pid // n_tiles


@triton.jit
def _head_offset(pid_bh, H, stride_b, stride_h):
    """Element offset of head (b, h) = divmod(pid_bh, H), in 64 bits: b * stride_b can pass 2**31."""
    return (pid_bh // H).to(tl.int64) * stride_b + (pid_bh % H).to(tl.int64) * stride_h


@triton.jit
def _load_tile(base, offs_rows, offs_d, stride_row, n_rows,
               HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, MASK_ROWS: tl.constexpr):
    """A (rows, BLOCK_D) tile; padded rows and head-dim columns read as 0. Full tiles load unmasked."""
    ptrs = base + offs_rows[:, None] * stride_row + offs_d[None, :]
    if MASK_ROWS or HEAD_DIM < BLOCK_D:
        tile = tl.load(ptrs, mask=(offs_rows[:, None] < n_rows) & (offs_d[None, :] < HEAD_DIM), other=0.0)
    else:
        tile = tl.load(ptrs)
    return tile


@triton.jit
def _load_rows(ptr, offs, n, other, MASK: tl.constexpr):
    """A per-row fp32 vector (log-sum-exp or delta); padded rows read as `other`."""
    if MASK:
        x = tl.load(ptr + offs, mask=offs < n, other=other)
    else:
        x = tl.load(ptr + offs)
    return x


@triton.jit
def _store_tile(base, offs_rows, offs_d, stride_row, n_rows, tile, HEAD_DIM: tl.constexpr):
    ptrs = base + offs_rows[:, None] * stride_row + offs_d[None, :]
    tl.store(ptrs, tile.to(base.dtype.element_ty), mask=(offs_rows[:, None] < n_rows) & (offs_d[None, :] < HEAD_DIM))


@triton.jit
def _key_value_tile(q, k_base, v_base, start_n, stride_kn, stride_vn, N, qk_scale, HEAD_DIM: tl.constexpr,
                    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, MASK_N: tl.constexpr, PRECISION: tl.constexpr):
    """Keys and values from start_n: k, v (BLOCK_N, BLOCK_D), and the scores q k^T * qk_scale (BLOCK_M, BLOCK_N)
    in log2 units, with padded keys at -inf so that they get probability 0 whatever the row's log-sum-exp."""
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    k = _load_tile(k_base, offs_n, offs_d, stride_kn, N, HEAD_DIM, BLOCK_D, MASK_N)
    v = _load_tile(v_base, offs_n, offs_d, stride_vn, N, HEAD_DIM, BLOCK_D, MASK_N)
    qk = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
    if MASK_N:
        qk = tl.where(offs_n[None, :] < N, qk, float("-inf"))
    return k, v, qk


@triton.jit
def _fwd_inner(acc, m_i, l_i, q, k_base, v_base, stride_kn, stride_vn, start_n, end_n, N, qk_scale,
               HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
               MASK_N: tl.constexpr, PRECISION: tl.constexpr):
    """Online softmax over key tiles [start_n, end_n): acc (BLOCK_M, BLOCK_D), row max m_i and sum l_i."""
    for start in range(start_n, end_n, BLOCK_N):
        _, v, qk = _key_value_tile(q, k_base, v_base, start, stride_kn, stride_vn, N, qk_scale, HEAD_DIM, BLOCK_D,
                                   BLOCK_N, MASK_N, PRECISION)
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
    """One program per query tile: O = softmax(Q K^T * scale) V, LSE = log2 of the softmax denominators."""
    pid_m, pid_bh = _program_ids(N, BLOCK_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    q = _load_tile(Q + _head_offset(pid_bh, H, stride_qb, stride_qh), offs_m, offs_d, stride_qn, N, HEAD_DIM,
                   BLOCK_D, True)  # (BLOCK_M, BLOCK_D)
    k_base = K + _head_offset(pid_bh, H, stride_kb, stride_kh)
    v_base = V + _head_offset(pid_bh, H, stride_vb, stride_vh)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    n_full = (N // BLOCK_N) * BLOCK_N
    # Full key tiles without masks, then the ragged last tile with them.
    acc, m_i, l_i = _fwd_inner(acc, m_i, l_i, q, k_base, v_base, stride_kn, stride_vn, 0, n_full, N, qk_scale,
                               HEAD_DIM, BLOCK_D, BLOCK_N, False, PRECISION)
    if n_full < N:
        acc, m_i, l_i = _fwd_inner(acc, m_i, l_i, q, k_base, v_base, stride_kn, stride_vn, n_full, N, N,
                                   qk_scale, HEAD_DIM, BLOCK_D, BLOCK_N, True, PRECISION)
    tl.store(LSE + pid_bh * N + offs_m, m_i + tl.math.log2(l_i), mask=offs_m < N)
    _store_tile(O + _head_offset(pid_bh, H, stride_ob, stride_oh), offs_m, offs_d, stride_on, N,
                acc / l_i[:, None], HEAD_DIM)


@triton.jit
def _bwd_delta_kernel(O, DO, DELTA, stride_ob, stride_oh, stride_on, stride_dob, stride_doh, stride_don, H, N,
                      HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr):
    """delta_i = sum_d dO_id * O_id, one fp32 per row: the softmax-backward correction term."""
    pid_m, pid_bh = _program_ids(N, BLOCK_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    o = _load_tile(O + _head_offset(pid_bh, H, stride_ob, stride_oh), offs_m, offs_d, stride_on, N, HEAD_DIM,
                   BLOCK_D, True)
    do = _load_tile(DO + _head_offset(pid_bh, H, stride_dob, stride_doh), offs_m, offs_d, stride_don, N,
                    HEAD_DIM, BLOCK_D, True)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), axis=1)
    tl.store(DELTA + pid_bh * N + offs_m, delta, mask=offs_m < N)


@triton.jit
def _dkdv_inner(dk, dv, k, v, q_base, do_base, lse_base, delta_base, stride_qn, stride_don, start_m, end_m, N,
                qk_scale, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
                MASK_M: tl.constexpr, PRECISION: tl.constexpr):
    """Adds query tiles [start_m, end_m) to dK, dV (BLOCK_N, BLOCK_D) of the keys k, v (BLOCK_N, BLOCK_D).
    Padded query rows read q = dO = 0 and log-sum-exp +inf, so P^T = 0 there and they add nothing."""
    offs_d = tl.arange(0, BLOCK_D)
    for start in range(start_m, end_m, BLOCK_M):
        offs_m = start + tl.arange(0, BLOCK_M)
        q = _load_tile(q_base, offs_m, offs_d, stride_qn, N, HEAD_DIM, BLOCK_D, MASK_M)  # (BLOCK_M, BLOCK_D)
        do = _load_tile(do_base, offs_m, offs_d, stride_don, N, HEAD_DIM, BLOCK_D, MASK_M)
        lse = _load_rows(lse_base, offs_m, N, float("inf"), MASK_M)
        delta = _load_rows(delta_base, offs_m, N, 0.0, MASK_M)
        qk_t = tl.dot(k, tl.trans(q), input_precision=PRECISION) * qk_scale  # (BLOCK_N, BLOCK_M), log2 units
        p_t = tl.math.exp2(qk_t - lse[None, :])
        dv += tl.dot(p_t.to(do.dtype), do, input_precision=PRECISION)
        dp_t = tl.dot(v, tl.trans(do), input_precision=PRECISION)  # (BLOCK_N, BLOCK_M)
        ds_t = p_t * (dp_t - delta[None, :])
        dk += tl.dot(ds_t.to(q.dtype), q, input_precision=PRECISION)
    return dk, dv


@triton.jit
def _bwd_dkdv_kernel(Q, K, V, DO, DK, DV, LSE, DELTA, sm_scale, qk_scale,
                     stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn,
                     stride_vb, stride_vh, stride_vn, stride_dob, stride_doh, stride_don,
                     stride_dkb, stride_dkh, stride_dkn, stride_dvb, stride_dvh, stride_dvn,
                     H, N, N_BUCKET,
                     HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     PRECISION: tl.constexpr):
    """One program per key tile of BLOCK_N keys: loops over query tiles of BLOCK_M (full ones unmasked).
    The padded keys of a ragged key tile (k = v = 0) may get inf/NaN in their own rows of dK, dV, never stored."""
    pid_n, pid_bh = _program_ids(N, BLOCK_N)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    k = _load_tile(K + _head_offset(pid_bh, H, stride_kb, stride_kh), offs_n, offs_d, stride_kn, N, HEAD_DIM,
                   BLOCK_D, True)  # (BLOCK_N, BLOCK_D)
    v = _load_tile(V + _head_offset(pid_bh, H, stride_vb, stride_vh), offs_n, offs_d, stride_vn, N, HEAD_DIM,
                   BLOCK_D, True)
    q_base = Q + _head_offset(pid_bh, H, stride_qb, stride_qh)
    do_base = DO + _head_offset(pid_bh, H, stride_dob, stride_doh)
    lse_base = LSE + pid_bh * N
    delta_base = DELTA + pid_bh * N
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    m_full = (N // BLOCK_M) * BLOCK_M
    dk, dv = _dkdv_inner(dk, dv, k, v, q_base, do_base, lse_base, delta_base, stride_qn, stride_don, 0, m_full, N,
                         qk_scale, HEAD_DIM, BLOCK_D, BLOCK_M, False, PRECISION)
    if m_full < N:
        dk, dv = _dkdv_inner(dk, dv, k, v, q_base, do_base, lse_base, delta_base, stride_qn, stride_don, m_full, N,
                             N, qk_scale, HEAD_DIM, BLOCK_D, BLOCK_M, True, PRECISION)
    _store_tile(DK + _head_offset(pid_bh, H, stride_dkb, stride_dkh), offs_n, offs_d, stride_dkn, N,
                dk * sm_scale, HEAD_DIM)
    _store_tile(DV + _head_offset(pid_bh, H, stride_dvb, stride_dvh), offs_n, offs_d, stride_dvn, N, dv, HEAD_DIM)


@triton.jit
def _dq_inner(dq, q, do, lse, delta, k_base, v_base, stride_kn, stride_vn, start_n, end_n, N, qk_scale,
              HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
              MASK_N: tl.constexpr, PRECISION: tl.constexpr):
    """Adds key tiles [start_n, end_n) to dQ (BLOCK_M, BLOCK_D) of the queries q."""
    for start in range(start_n, end_n, BLOCK_N):
        k, v, qk = _key_value_tile(q, k_base, v_base, start, stride_kn, stride_vn, N, qk_scale, HEAD_DIM, BLOCK_D,
                                   BLOCK_N, MASK_N, PRECISION)
        p = tl.math.exp2(qk - lse[:, None])  # (BLOCK_M, BLOCK_N)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)
    return dq


@triton.jit
def _bwd_dq_kernel(Q, K, V, DO, DQ, LSE, DELTA, sm_scale, qk_scale,
                   stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn,
                   stride_vb, stride_vh, stride_vn, stride_dob, stride_doh, stride_don,
                   stride_dqb, stride_dqh, stride_dqn,
                   H, N, N_BUCKET,
                   HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   PRECISION: tl.constexpr):
    """One program per query tile of BLOCK_M queries: loops over key tiles of BLOCK_N (full ones unmasked)."""
    pid_m, pid_bh = _program_ids(N, BLOCK_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    q = _load_tile(Q + _head_offset(pid_bh, H, stride_qb, stride_qh), offs_m, offs_d, stride_qn, N, HEAD_DIM,
                   BLOCK_D, True)  # (BLOCK_M, BLOCK_D)
    do = _load_tile(DO + _head_offset(pid_bh, H, stride_dob, stride_doh), offs_m, offs_d, stride_don, N,
                    HEAD_DIM, BLOCK_D, True)
    lse = _load_rows(LSE + pid_bh * N, offs_m, N, float("inf"), True)  # padded rows: P = 0
    delta = _load_rows(DELTA + pid_bh * N, offs_m, N, 0.0, True)
    k_base = K + _head_offset(pid_bh, H, stride_kb, stride_kh)
    v_base = V + _head_offset(pid_bh, H, stride_vb, stride_vh)
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    n_full = (N // BLOCK_N) * BLOCK_N
    dq = _dq_inner(dq, q, do, lse, delta, k_base, v_base, stride_kn, stride_vn, 0, n_full, N, qk_scale,
                   HEAD_DIM, BLOCK_D, BLOCK_N, False, PRECISION)
    if n_full < N:
        dq = _dq_inner(dq, q, do, lse, delta, k_base, v_base, stride_kn, stride_vn, n_full, N, N, qk_scale,
                       HEAD_DIM, BLOCK_D, BLOCK_N, True, PRECISION)
    _store_tile(DQ + _head_offset(pid_bh, H, stride_dqb, stride_dqh), offs_m, offs_d, stride_dqn, N,
                dq * sm_scale, HEAD_DIM)


# ------------------------------------------------------------------------------------- autotuning setup

# (BLOCK_M, BLOCK_N, num_warps, num_stages); the first is the fixed configuration. Kept by
# tools/kernel_compile_table.py: each compiles for sm_80 and sm_90, fp16 and bf16, head dims 64 and 128, within
# shared memory and without register spills, with Triton 3.8 and with the GPU machine's 3.6 (pruned ones and their
# numbers: results/kernel_compile/README.md; dK/dV 64x64 w8 s3 spills 16 B on sm_80 D=64 with 3.6 only).
FWD_TILES = [(128, 64, 8, 3), (128, 32, 8, 4), (64, 64, 4, 3)]
# dK/dV: a program per key tile, so few (BLOCK_M) queries against many (BLOCK_N) keys, deep pipelines.
DKDV_TILES = [(32, 64, 8, 5), (16, 128, 8, 4), (16, 64, 4, 5)]
# dQ: a program per query tile, so many (BLOCK_M) queries against few (BLOCK_N) keys.
DQ_TILES = [(128, 32, 8, 4), (128, 16, 8, 5), (64, 32, 4, 5)]
DELTA_BLOCK_M = 64


def tile_configs(tiles: list[tuple[int, int, int, int]]) -> list[triton.Config]:
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s) for m, n, w, s in tiles]


def _tuned(kernel, tiles):
    """Autotuned on (head dim, bucket of N); Triton adds the tensors' dtypes to the key itself."""
    configs = tile_configs(tiles)
    return triton.autotune(configs=configs[:1] if FIXED_CONFIG else configs, key=["HEAD_DIM", "N_BUCKET"])(kernel)


_fwd = _tuned(_fwd_kernel, FWD_TILES)
_bwd_dkdv = _tuned(_bwd_dkdv_kernel, DKDV_TILES)
_bwd_dq = _tuned(_bwd_dq_kernel, DQ_TILES)

# ------------------------------------------------------------------------------------------ launchers

if _INTERPRETED:
    def wrap_triton(kernel):
        """The interpreter's kernels launch as they are: its ops are opaque custom ops, never traced. (torch 2.14's
        wrap_triton hands an InterpretedFunction back; torch 2.11's rejects a bare one and wraps an autotuned one
        for tracing, whose launch then fails: 'function' object has no attribute 'fn'.)"""
        return kernel
else:  # the launches keep this name: triton_op finds an op's kernels by the wrap_triton(...) calls in its source
    from torch.library import wrap_triton


def _n_bucket(n: int) -> int:
    """Autotuning key: lengths within a power of two share a tuned config (197 and 257 do not re-tune)."""
    return triton.next_power_of_2(n)


def _block_d(d: int) -> int:
    return max(16, triton.next_power_of_2(d))


def _strides(t: torch.Tensor) -> tuple[int, int, int]:
    return t.stride(0), t.stride(1), t.stride(2)  # (B, H, N) strides of a (B, H, N, D) view


def _precision(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"  # tf32 is ignored for fp16/bf16 operands


def _last_dim_contiguous(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _launches(t: torch.Tensor) -> bool:
    """On a GPU wrap_triton turns launches on torch.compile's fake tensors into graph nodes; the CPU interpreter
    cannot be traced, so there the op is opaque and its fake tensors (shape propagation) launch nothing."""
    return not (_INTERPRETED and is_fake(t))


def _forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """q, k, v: (B, H, N, D) views -> o: (B, H, N, D) in (B, N, H, D) memory, lse: (B*H, N) fp32 (base 2)."""
    B, H, N, D = q.shape
    q, k, v = (_last_dim_contiguous(t) for t in (q, k, v))
    o = q.new_empty((B, N, H, D)).transpose(1, 2)
    lse = torch.empty((B * H, N), device=q.device, dtype=torch.float32)
    if _launches(q):
        wrap_triton(_fwd)[lambda meta: (triton.cdiv(N, meta["BLOCK_M"]) * B * H,)](
            q, k, v, o, lse, scale * LOG2E, *_strides(q), *_strides(k), *_strides(v), *_strides(o),
            H, N, _n_bucket(N), HEAD_DIM=D, BLOCK_D=_block_d(D), PRECISION=_precision(q.dtype))
    return o, lse


def _backward(do, q, k, v, o, lse, dq, dk, dv, scale: float) -> None:
    """Writes dQ, dK, dV into the (B, H, N, D) views dq, dk, dv for the upstream gradient do (B, H, N, D)."""
    B, H, N, D = q.shape
    do, q, k, v = (_last_dim_contiguous(t) for t in (do, q, k, v))
    if not _launches(q):
        return
    delta = torch.empty_like(lse)
    wrap_triton(_bwd_delta_kernel)[(triton.cdiv(N, DELTA_BLOCK_M) * B * H,)](
        o, do, delta, *_strides(o), *_strides(do), H, N, HEAD_DIM=D, BLOCK_D=_block_d(D), BLOCK_M=DELTA_BLOCK_M)
    meta = dict(HEAD_DIM=D, BLOCK_D=_block_d(D), PRECISION=_precision(q.dtype))
    qkv_do_strides = (*_strides(q), *_strides(k), *_strides(v), *_strides(do))
    wrap_triton(_bwd_dkdv)[lambda m: (triton.cdiv(N, m["BLOCK_N"]) * B * H,)](
        q, k, v, do, dk, dv, lse, delta, scale, scale * LOG2E, *qkv_do_strides, *_strides(dk), *_strides(dv),
        H, N, _n_bucket(N), **meta)
    wrap_triton(_bwd_dq)[lambda m: (triton.cdiv(N, m["BLOCK_M"]) * B * H,)](
        q, k, v, do, dq, lse, delta, scale, scale * LOG2E, *qkv_do_strides, *_strides(dq), H, N, _n_bucket(N),
        **meta)


def _unpack(qkv: torch.Tensor) -> list[torch.Tensor]:
    """(B, N, 3, H, D) -> q, k, v as (B, H, N, D) views."""
    return [qkv[:, :, i].transpose(1, 2) for i in range(3)]


# ------------------------------------------------------------------------ ops, autograd, FLOP formulas


def _op(name: str):
    """A torch.library.triton_op, which torch.compile traces into; under the CPU interpreter (not traceable) an
    opaque custom op with the same body as its fake implementation (see _launches)."""

    def register(fn):
        if not _INTERPRETED:
            return triton_op(name, fn, mutates_args=())
        op = torch.library.custom_op(name, fn, mutates_args=())
        op.register_fake(fn)
        return op

    return register


@_op("vitbench::flash_attn_fwd")
def _flash_attn_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """q, k, v: (B, H, N, D) -> o: (B, H, N, D) in (B, N, H, D) memory, lse: (B*H, N)."""
    return _forward(q, k, v, scale)


@_op("vitbench::flash_attn_bwd")
def _flash_attn_bwd(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor,
                    lse: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> dq, dk, dv: (B, H, N, D)."""
    dq, dk, dv = (torch.empty_like(t) for t in (q, k, v))
    _backward(do, q, k, v, o, lse, dq, dk, dv, scale)
    return dq, dk, dv


@_op("vitbench::flash_attn_qkvpacked_fwd")
def _flash_attn_qkvpacked_fwd(qkv: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """qkv: (B, N, 3, H, D), the qkv projection's output -> o: (B, N, H*D), lse: (B*H, N)."""
    B, N, _, H, D = qkv.shape
    o, lse = _forward(*_unpack(qkv), scale)
    return o.transpose(1, 2).reshape(B, N, H * D), lse  # a view: o is (B, N, H, D) in memory


@_op("vitbench::flash_attn_qkvpacked_bwd")
def _flash_attn_qkvpacked_bwd(do: torch.Tensor, qkv: torch.Tensor, o: torch.Tensor, lse: torch.Tensor,
                              scale: float) -> torch.Tensor:
    """do, o: (B, N, H*D) -> dqkv: (B, N, 3, H, D), written through (B, H, N, D) views (no permute copies)."""
    B, N, _, H, D = qkv.shape
    dqkv = torch.empty_like(qkv)
    heads = lambda t: t.reshape(B, N, H, D).transpose(1, 2)  # noqa: E731
    _backward(heads(do), *_unpack(qkv), heads(o), lse, *_unpack(dqkv), scale)
    return dqkv


def _save(ctx, inputs, output) -> None:
    *tensors, ctx.scale = inputs
    ctx.save_for_backward(*tensors, *output)
    ctx.mark_non_differentiable(output[1])


def _flash_attn_grad(ctx, do, _dlse):
    q, k, v, o, lse = ctx.saved_tensors
    return (*_flash_attn_bwd(do, q, k, v, o, lse, ctx.scale), None)


def _flash_attn_qkvpacked_grad(ctx, do, _dlse):
    qkv, o, lse = ctx.saved_tensors
    return _flash_attn_qkvpacked_bwd(do, qkv, o, lse, ctx.scale), None


_flash_attn_fwd.register_autograd(_flash_attn_grad, setup_context=_save)
_flash_attn_qkvpacked_fwd.register_autograd(_flash_attn_qkvpacked_grad, setup_context=_save)


def attention_flops(batch: int, heads: int, seq_len: int, head_dim: int, with_backward: bool = False) -> float:
    """Matmul FLOPs of attention: forward 2 matmuls of 2*N*N*D; backward 5 such (2.5x), so fwd+bwd is 3.5x."""
    forward = 4.0 * batch * heads * seq_len * seq_len * head_dim
    return forward * (1.0 + BWD_FLOPS_FACTOR if with_backward else 1.0)


def _packed_dims(qkv_shape) -> tuple[int, int, int, int]:
    B, N, _, H, D = qkv_shape
    return B, H, N, D


@register_flop_formula(torch.ops.vitbench.flash_attn_fwd)
def _fwd_flops(q_shape, *args, **kwargs) -> int:
    return int(attention_flops(*q_shape))


@register_flop_formula(torch.ops.vitbench.flash_attn_bwd)
def _bwd_flops(do_shape, *args, **kwargs) -> int:
    return int(BWD_FLOPS_FACTOR * attention_flops(*do_shape))


@register_flop_formula(torch.ops.vitbench.flash_attn_qkvpacked_fwd)
def _packed_fwd_flops(qkv_shape, *args, **kwargs) -> int:
    return int(attention_flops(*_packed_dims(qkv_shape)))


@register_flop_formula(torch.ops.vitbench.flash_attn_qkvpacked_bwd)
def _packed_bwd_flops(do_shape, qkv_shape, *args, **kwargs) -> int:
    return int(BWD_FLOPS_FACTOR * attention_flops(*_packed_dims(qkv_shape)))


# ------------------------------------------------------------------------------------------ public API


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
    if q.device.type != "cuda" and not _INTERPRETED:
        raise RuntimeError(f"the triton attention backend needs a CUDA device (got a {q.device.type} tensor); "
                           "use attn_backend='sdpa' or 'math' on this device, or set TRITON_INTERPRET=1 "
                           "before importing vit_impl to run the kernel (slowly) on the CPU")


def flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """Like F.scaled_dot_product_attention(q, k, v, scale=scale) for (B, H, N, D) inputs, non-causal."""
    _check_inputs(q, k, v)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    return _flash_attn_fwd(q, k, v, scale)[0]


def flash_attention_qkvpacked(qkv: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """Fused attention on the qkv projection's output (B, N, 3, H, D) -> (B, N, H*D)."""
    if qkv.ndim != 5 or qkv.shape[2] != 3:
        raise ValueError(f"flash_attention_qkvpacked expects (B, N, 3, H, D), got {tuple(qkv.shape)}")
    _check_inputs(*qkv.unbind(2))
    scale = qkv.shape[-1] ** -0.5 if scale is None else float(scale)
    return _flash_attn_qkvpacked_fwd(qkv, scale)[0]


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None,
                        upcast: bool = True) -> torch.Tensor:
    """softmax(q k^T * scale) v in plain PyTorch; upcast=True computes in fp32 (the tests' ground truth)."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    dtype = q.dtype
    if upcast:
        q, k, v = q.float(), k.float(), v.float()
    attn = torch.softmax((q @ k.transpose(-2, -1)) * scale, dim=-1)
    return (attn @ v).to(dtype)


__all__ = [
    "attention_flops",
    "flash_attention",
    "flash_attention_qkvpacked",
    "interpreting",
    "reference_attention",
    "supported_head_dim",
]
