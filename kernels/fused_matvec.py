"""Batch-1 matvec whose input is made as it is read: the small kernel before a decode projection fused into it.

    norm_matvec:    h = residual + x,  v = w_n * (h * rstd),  rstd = 1 / sqrt(mean(h^2) + eps),  y = W v (+ b)
    swiglu_matvec:  v = silu(g) * u,                                                             y = W v (+ b)

v is rounded exactly as kernels/add_rms_norm.py and kernels/swiglu.py round their outputs (h to x's dtype; h * rstd,
then w_n * that, each rounded, as transformers' Llama norm; silu(g) * u in fp32, rounded once), and the product is
kernels/matvec.py's (fp32 products and sum, bias in fp32, one rounding). So each output is the unfused pair's but for
the order of the fp32 sum of squares behind rstd. The references are the unfused pair's references.

Why: at batch 1 a decode step is a weight stream (kernels/matvec.py) between small kernels whose time is launch and
latency, not bytes. Per Llama-like layer the input norm before q/k/v, the post-attention norm before gate/up and the
SwiGLU before down were three kernels of ~1.4-2 us each (bench/README.md, the decode profile of issue 30: 0.15 ms of
norms and 0.05 ms of SwiGLU per Qwen3-4B token on the H100). Here each matvec program makes its own copy of v: for
the norm it first sums h^2 over the whole hidden vector (a few KB, from L2), then rebuilds each slice of v as it
walks K; for SwiGLU it computes silu(g) * u for each slice. Program 0 also stores v (and h), which the LoRA terms
and the next residual add read: 3 * K * b bytes more written per call, none read from HBM. The price is L2 reads:
each program reads x and the residual twice and w_n once (5 K-vectors) where a plain matvec reads x once, and
SwiGLU's reads g and u (2) and computes the activation once per program per element. Not measured on a GPU yet.

Tiles: making v costs some 20-25 instructions an element (loads, the add, the bf16 roundings by hand, the
activation), once per program, so a program of few rows pays them per weight. Compiled for sm_90 with Triton 3.9
(SASS of the loop over K, counted as bench/nf4_matvec_sass.py counts): at 8 x 512 (4 warps) the fused loop issues 6.7
(norm) and 6.8 (SwiGLU) instructions a weight where the plain matvec issues 3.7 there and 5.3-6.5 at its 1 x 1024 /
1 x 2048 tiles; at 1 x 2048 the fused SwiGLU loop issued 30 a weight, 15 a byte, more than an SM issues for its
share of the HBM stream. So the fused kernel takes kernels.matvec's measured tile when it has MIN_BLOCK_N rows or
more (Qwen3-4B's q/k/v 16 x 512, gate/up 8 x 512), else 8 x 512 (Qwen3-4B's down, Llama-8B's q/k/v, gate/up, down).

No split-K (kernels.matvec.pick_config never picks it; a config that asks for it runs unsplit), no autograd:
anything else (more than one row, mixed dtypes, a non-contiguous weight, gradients, or dispatch picking the
reference) runs the unfused pair, kernels.add_rms_norm / kernels.swiglu then kernels.matvec, which pick their own
paths. Two public functions share the one kernel, since they differ only in how the kernel loads its input.
"""

import dataclasses

import torch
import triton
import triton.language as tl

from kernels import dispatch
from kernels.add_rms_norm import _r, add_rms_norm, add_rms_norm_reference
from kernels.matvec import MatvecConfig, matvec, matvec_reference, pick_config
from kernels.swiglu import _sigmoid, swiglu, swiglu_reference

NORM, SWIGLU = 0, 1  # the kernel's PROLOGUE
MIN_BLOCK_N = 8  # rows a program shares its input's work over (module docstring)
# The norm's first pass reads this many columns a step: the whole of a hidden vector up to 4096 in one round trip to
# L2 (a program's weight stream waits for it), 32 fp32 registers a thread at 4 warps.
PRE_BLOCK_MAX = 4096


def norm_matvec_reference(x, residual, norm_weight, eps, weight, bias=None):
    """(y, v, h): kernels.add_rms_norm's reference, then F.linear."""
    v, h = add_rms_norm_reference(x, residual, norm_weight, eps)
    return matvec_reference(v, weight, bias), v, h


def swiglu_matvec_reference(gate, up, weight, bias=None):
    """(y, v): kernels.swiglu's reference (silu), then F.linear."""
    v = swiglu_reference(gate, up)
    return matvec_reference(v, weight, bias), v


@triton.jit
def _vector(ptr, kk, mask, EVEN: tl.constexpr):
    """fp32 elements kk of a K-vector, kept in L2 (every program reads it); 0 past K."""
    if EVEN:
        return tl.load(ptr + kk, eviction_policy="evict_last").to(tl.float32)
    else:
        return tl.load(ptr + kk, mask=mask, other=0.0, eviction_policy="evict_last").to(tl.float32)


@triton.jit
def _residual(a_ptr, b_ptr, kk, mask, HAS_RESIDUAL: tl.constexpr, BF16: tl.constexpr, EVEN: tl.constexpr):
    """h = residual + x at columns kk (x itself without a residual), fp32 rounded to x's dtype."""
    h = _vector(a_ptr, kk, mask, EVEN)
    if HAS_RESIDUAL:
        h = _r(h + _vector(b_ptr, kk, mask, EVEN), a_ptr, BF16)
    return h


@triton.jit
def _input(
    a_ptr,
    b_ptr,
    n_ptr,
    kk,
    mask,
    rstd,
    PROLOGUE: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
    BF16: tl.constexpr,
    EVEN: tl.constexpr,
):
    """(v, h) at columns kk: the matvec's input and, for the norm, the residual stream (fp32, each rounded to the
    output's dtype)."""
    if PROLOGUE == 0:
        h = _residual(a_ptr, b_ptr, kk, mask, HAS_RESIDUAL, BF16, EVEN)
        w = _vector(n_ptr, kk, mask, EVEN)
        return _r(w * _r(h * rstd, a_ptr, BF16), a_ptr, BF16), h
    else:
        g = _vector(a_ptr, kk, mask, EVEN)
        return _r(g * _sigmoid(g) * _vector(b_ptr, kk, mask, EVEN), a_ptr, BF16), g


@triton.jit
def _fused_matvec_kernel(
    a_ptr,  # NORM: x; SWIGLU: gate
    b_ptr,  # NORM: the residual (x again without one); SWIGLU: up
    n_ptr,  # NORM: the norm's weight
    w_ptr,
    bias_ptr,
    y_ptr,
    v_ptr,
    h_ptr,
    N,
    K,
    eps,
    PROLOGUE: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BF16: tl.constexpr,
    EVEN_K: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PRE_BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    w_rows = w_ptr + tl.minimum(rows, N - 1).to(tl.int64)[:, None] * K  # as kernels/matvec.py: clamped, unmasked
    cols = tl.arange(0, BLOCK_K)
    rstd = 0.0
    if PROLOGUE == 0:  # the whole row's mean square before any of v: one wide load (hidden <= PRE_BLOCK_MAX)
        squares = tl.zeros((PRE_BLOCK,), dtype=tl.float32)
        for k0 in range(0, K, PRE_BLOCK):
            kk = k0 + tl.arange(0, PRE_BLOCK)
            h = _residual(a_ptr, b_ptr, kk, kk < K, HAS_RESIDUAL, BF16, False)
            squares += h * h
        rstd = 1.0 / tl.sqrt(tl.sum(squares, axis=0) / K + eps)
    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + cols
        k_mask = kk < K
        v, h = _input(a_ptr, b_ptr, n_ptr, kk, k_mask, rstd, PROLOGUE, HAS_RESIDUAL, BF16, EVEN_K)
        if pid == 0:  # program 0 stores v (and h) for the LoRA terms and the next residual add
            tl.store(v_ptr + kk, v.to(v_ptr.dtype.element_ty), mask=k_mask)
            if HAS_RESIDUAL:
                tl.store(h_ptr + kk, h.to(h_ptr.dtype.element_ty), mask=k_mask)
        if EVEN_K:
            w = tl.load(w_rows + kk[None, :], eviction_policy="evict_first")
        else:
            w = tl.load(w_rows + kk[None, :], mask=k_mask[None, :], other=0.0, eviction_policy="evict_first")
        acc += w.to(tl.float32) * v[None, :]
    y = tl.sum(acc, axis=1)
    row_mask = rows < N
    if HAS_BIAS:
        y += tl.load(bias_ptr + rows, mask=row_mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + rows, y.to(y_ptr.dtype.element_ty), mask=row_mask)


def fused_matvec_fwd(prologue, a, b, norm_weight, eps, weight, bias, cfg: MatvecConfig, residual: bool):
    """Launch on (K,) inputs `a` and `b` (stride 1) and an (N, K) weight: returns (y (N,), v (K,), h (K,) or None)."""
    n, k = weight.shape
    y = torch.empty(n, dtype=a.dtype, device=a.device)
    v = torch.empty(k, dtype=a.dtype, device=a.device)
    h = torch.empty(k, dtype=a.dtype, device=a.device) if residual else None
    _fused_matvec_kernel[(triton.cdiv(n, cfg.block_n),)](
        a,
        b,
        norm_weight if norm_weight is not None else a,  # unused for SwiGLU
        weight,
        bias if bias is not None else y,  # unused without a bias
        y,
        v,
        h if h is not None else v,  # unused without a residual
        n,
        k,
        eps,
        **launch_options(prologue, residual, bias is not None, a.dtype, k, cfg),
    )
    return y, v, h


def launch_options(prologue: int, residual: bool, bias: bool, dtype, k: int, cfg: MatvecConfig) -> dict:
    """The kernel's constexprs and launch options (engine.chat.warmup compiles them ahead of the first launch)."""
    return dict(
        PROLOGUE=prologue,
        HAS_RESIDUAL=residual,
        HAS_BIAS=bias,
        BF16=dtype == torch.bfloat16,
        EVEN_K=k % cfg.block_k == 0,
        BLOCK_N=cfg.block_n,
        BLOCK_K=cfg.block_k,
        PRE_BLOCK=min(triton.next_power_of_2(k), PRE_BLOCK_MAX) if prologue == NORM else 1,
        num_warps=cfg.num_warps,
    )


def config_for(n: int, k: int, config: MatvecConfig | None = None) -> MatvecConfig:
    """`config`, or kernels.matvec's tile for an (n, k) weight when it has MIN_BLOCK_N rows or more, else
    MIN_BLOCK_N x 512 (module docstring); unsplit either way."""
    cfg = config or pick_config(n, k)
    if config is None and cfg.block_n < MIN_BLOCK_N:
        cfg = MatvecConfig(MIN_BLOCK_N, min(512, max(16, triton.next_power_of_2(k))), 1, 4)
    return dataclasses.replace(cfg, split_k=1, num_stages=1)


def _applies(weight, bias, *vectors) -> bool:
    """One row of every input, all of the weight's dtype (fp32/bf16/fp16), contiguous, nothing needing gradients."""
    if weight.dim() != 2 or not weight.is_contiguous() or weight.numel() == 0:
        return False
    n, k = weight.shape
    if weight.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        return False
    if bias is not None and (bias.shape != (n,) or bias.dtype != weight.dtype or not bias.is_contiguous()):
        return False
    for t in vectors:
        if t.dtype != weight.dtype or t.numel() != k or t.shape[-1] != k or t.stride(-1) != 1:
            return False
    tensors = (weight, bias, *vectors)
    return not (torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors))


def norm_matvec(x, residual, norm_weight, eps, weight, bias=None, config=None):
    """kernels.add_rms_norm then kernels.matvec in one launch, for one token.

    Args:
        x: (1, K) the sub-layer's output (the embeddings for the first layer).
        residual: (1, K) the residual stream so far, or None (h is then x).
        norm_weight: (K,) the RMSNorm's scale; eps: added to the mean square.
        weight: (N, K) the projection; bias: (N,) or None; config: its tile (None: kernels.matvec's pick_config).

    Returns:
        (y, v, h): y (1, N) the projection of v, v (1, K) the normalized row, h (1, K) the new residual stream.
    """
    vectors = (x, norm_weight) if residual is None else (x, residual, norm_weight)
    if x.dim() == 2 and _applies(weight, bias, *vectors) and dispatch.use_triton(x, weight):
        n, k = weight.shape
        b = x if residual is None else residual
        y, v, h = fused_matvec_fwd(
            NORM, x, b, norm_weight, eps, weight, bias, config_for(n, k, config), residual is not None
        )
        return y.view(1, n), v.view(1, k), x if h is None else h.view(1, k)
    v, h = add_rms_norm(x, residual, norm_weight, eps)
    return matvec(v, weight, bias), v, h


def swiglu_matvec(gate, up, weight, bias=None, config=None):
    """kernels.swiglu (silu) then kernels.matvec in one launch, for one token.

    Args:
        gate, up: (1, K) each (views of one gate/up product are fine: each needs stride 1 along K).
        weight: (N, K) the down projection; bias: (N,) or None; config: as `norm_matvec`.

    Returns:
        (y, v): y (1, N) the projection of v = silu(gate) * up, and v (1, K).
    """
    if gate.dim() == 2 and _applies(weight, bias, gate, up) and dispatch.use_triton(gate, weight):
        n, k = weight.shape
        y, v, _ = fused_matvec_fwd(SWIGLU, gate, up, None, 0.0, weight, bias, config_for(n, k, config), False)
        return y.view(1, n), v.view(1, k)
    v = swiglu(gate, up)
    return matvec(v, weight, bias), v
