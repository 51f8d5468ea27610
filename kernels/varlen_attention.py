"""Causal attention over variable-length segments packed into one token stream (padding-free), forward and backward.

A micro-batch's S examples are concatenated into T tokens; cu_seqlens (S + 1,) holds where each starts. For query
head h (of Hq = Hkv * G; head h reads KV head h // G, as transformers' repeat_kv pairs them) and token i of segment
[a, b):

    s_ij = scale * q_i . k_j                      for a <= j <= i (and i - j < window when window > 0)
    s_ij = softcap * tanh(s_ij / softcap)         when softcap > 0 (Gemma 2)
    o_i  = sum_j P_ij v_j,   P_i = softmax_j(s_i),   lse_i = log sum_j exp(s_ij)

Backward (flash-attention 2, as in Triton's fused-attention tutorial), with delta_i = dO_i . O_i:

    dV_j = sum_i P_ij dO_i      dP_ij = dO_i . v_j      dS_ij = P_ij (dP_ij - delta_i)
    dS_ij *= 1 - tanh^2         (softcap)
    dQ_i = scale * sum_j dS_ij k_j                  dK_j = scale * sum_i dS_ij q_i

Layout: the grid covers the flattened token stream in blocks of BLOCK_M query rows (forward, dQ) or BLOCK_N key rows
(dK/dV), times the heads; a block may straddle segment boundaries. A program finds each row's segment with a binary
search of cu_seqlens on the device, so the grid and every launch depend on shapes only (T, S, heads, D) and never on
the values in cu_seqlens: no host synchronisation, and one captured CUDA graph serves every split of T tokens into S
segments. A query block reads keys from its first row's segment start (or window) to its last row; key tiles that
every row of the block sees skip the mask. The dK/dV program of a KV head loops over the G query heads of its group,
so the group's sum needs no atomics.

Numerics: q, k, v are loaded in their dtype; scores, the online softmax (log2 domain) and all sums are fp32; P and dS
are rounded to the input dtype before their matrix products with V and K/Q (as flash attention does; the reference
keeps fp32 there), and each output is rounded once. fp32 inputs use IEEE fp32 products (no TF32). The forward saves
lse (fp32, Hq * T) for the backward, not P.

Bytes and FLOPs (b bytes per element, n_i keys seen by token i, N = sum_i n_i): the forward reads q once and K, V
once per query block (from L2 mostly), writes o and lse: about 4 * N * Hq * D FLOPs. The backward recomputes the
scores twice (dQ and dK/dV passes): about 10 * N * Hq * D FLOPs. The reference materializes Hq * T^2 fp32 scores.

Speed (bench/README.md, H200, bf16, 16 examples of ~1000 tokens, T = 16295, 32/8 heads x 128): 666 us forward and
2769 us forward+backward, vs 767 / 3083 us for torch.nn.attention.varlen.varlen_attn (FlashAttention 2), 975 / 5276
us for compiled FlexAttention and 1885 / 7268 us for SDPA on the padded batch. At head dim 256 (16/8 heads, no
softcap) varlen_attn is faster forward+backward: 3412 us vs 4019 us (our forward is faster, 551 vs 709 us).
"""

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from kernels import dispatch, target

MAX_HEAD_DIM = 256


def _segment_bounds(cu_seqlens: torch.Tensor, total: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(T,) start and end of each token's segment, on the device (no host sync).

    Empty segments repeat a boundary; `right=True` picks the last of equal boundaries, the one whose segment holds
    the token.
    """
    tokens = torch.arange(total, device=cu_seqlens.device, dtype=cu_seqlens.dtype)
    segment = torch.searchsorted(cu_seqlens, tokens, right=True) - 1
    segment = segment.clamp(max=cu_seqlens.numel() - 2)
    return cu_seqlens[segment], cu_seqlens[segment + 1]


def varlen_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    scale: float,
    softcap: float = 0.0,
    window: int = 0,
) -> torch.Tensor:
    """Pure-torch version in fp32 with a dense (T, T) mask: (T, Hq, D) in q's dtype. Memory O(Hq * T^2)."""
    total, hq, _ = q.shape
    group = hq // k.shape[1]
    qf = q.float().transpose(0, 1)  # (Hq, T, D)
    kf = k.float().transpose(0, 1).repeat_interleave(group, 0)
    vf = v.float().transpose(0, 1).repeat_interleave(group, 0)
    scores = torch.matmul(qf, kf.transpose(1, 2)) * scale
    if softcap > 0:
        scores = softcap * torch.tanh(scores / softcap)
    starts, _ = _segment_bounds(cu_seqlens, total)
    pos = torch.arange(total, device=q.device)
    visible = (pos[None, :] >= starts[:, None]) & (pos[None, :] <= pos[:, None])
    if window > 0:
        visible &= pos[:, None] - pos[None, :] < window
    probs = scores.masked_fill(~visible, float("-inf")).softmax(-1)
    return torch.matmul(probs, vf).transpose(0, 1).to(q.dtype)


@triton.jit
def _segments(cu_ptr, rows, S, steps):
    """Start and end of each row's segment: the largest j with cu[j] <= row, by a binary search of `steps` halvings.

    Rows past the last token land in the last segment (callers mask them).
    """
    lo = tl.zeros_like(rows)
    hi = lo + S + 1
    for _ in range(steps):
        mid = (lo + hi) // 2
        go = tl.load(cu_ptr + mid) <= rows
        lo = tl.where(go, mid, lo)
        hi = tl.where(go, hi, mid)
    seg = tl.minimum(lo, S - 1)
    return tl.load(cu_ptr + seg), tl.load(cu_ptr + seg + 1)


@triton.jit
def _split(lo, full_lo, full_hi, BLOCK: tl.constexpr):
    """Tile bounds of a range that starts at lo: [lo, n1) and [n2, end) need the mask, [n1, n2) lies in the part
    [full_lo, full_hi) that every row of the block sees."""
    n1 = lo + tl.cdiv(full_lo - lo, BLOCK) * BLOCK
    n2 = n1 + tl.maximum(full_hi - n1, 0) // BLOCK * BLOCK
    return n1, n2


@triton.jit
def _dot(a, b, PRECISION: tl.constexpr):
    """a @ b with fp32 accumulation. "upcast" (the interpreter) multiplies fp32 copies: Triton 3.9's interpreter
    returns garbage (errors of 1e10) for bf16 operands; products of 16-bit values are exact in fp32, so only the
    order of the sum differs from the GPU's."""
    if PRECISION == "upcast":
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        return tl.dot(a, b, input_precision=PRECISION)


@triton.jit
def _scores(qk, scale, softcap, SOFTCAP: tl.constexpr):
    """Scores in the log2 domain and, with softcap, the tanh of the capped score (its backward needs 1 - tanh^2)."""
    if SOFTCAP:
        t = 1.0 - 2.0 / (tl.exp(qk * (2.0 * scale / softcap)) + 1.0)  # tanh, saturating without NaN
        return t * (softcap * 1.4426950408889634), t
    else:
        return qk * (scale * 1.4426950408889634), qk


@triton.jit
def _rows(base, rows, row_stride, T, D: tl.constexpr, BLOCK_D: tl.constexpr, MASK: tl.constexpr):
    """Load a (rows, D) tile of a (T, H, D) tensor at one head; MASK: rows may run past T. Unmasked loads of a
    power-of-two D carry no mask at all, so they vectorize."""
    dd = tl.arange(0, BLOCK_D)
    ptrs = base + rows.to(tl.int64)[:, None] * row_stride + dd[None, :]
    if MASK:
        return tl.load(ptrs, mask=(rows < T)[:, None] & (dd < D)[None, :], other=0.0)
    elif D < BLOCK_D:
        return tl.load(ptrs, mask=(dd < D)[None, :], other=0.0)
    else:
        return tl.load(ptrs)


@triton.jit
def _store_rows(base, rows, row_stride, T, value, D: tl.constexpr, BLOCK_D: tl.constexpr):
    dd = tl.arange(0, BLOCK_D)
    mask = (rows < T)[:, None] & (dd < D)[None, :]
    tl.store(base + rows.to(tl.int64)[:, None] * row_stride + dd[None, :], value.to(base.dtype.element_ty), mask=mask)


@triton.jit
def _visible(rows, keys, starts, window, WINDOW: tl.constexpr):
    """(rows, keys) mask: a row sees the keys of its segment (from `starts`, one per row) up to itself."""
    visible = (keys[None, :] >= starts[:, None]) & (keys[None, :] <= rows[:, None])
    if WINDOW:
        visible = visible & (rows[:, None] - keys[None, :] < window)
    return visible


@triton.jit
def _part(part: tl.constexpr, lo, n1, n2, hi):
    """Bounds of the three tile ranges: masked [lo, n1), whole [n1, n2), masked [n2, hi)."""
    if part == 0:
        return lo, n1
    elif part == 1:
        return n1, n2
    else:
        return n2, hi


@triton.jit
def _query_block(cu_ptr, T, S, steps, window, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, WINDOW: tl.constexpr):
    """A query block's rows, their segment starts, and its key range [lo, hi) split into masked and whole tiles."""
    first = tl.program_id(1) * BLOCK_M
    rows = first + tl.arange(0, BLOCK_M)
    starts, _ = _segments(cu_ptr, rows, S, steps)
    last = tl.minimum(first + BLOCK_M, T) - 1
    lo = tl.min(starts, 0)  # the first row's start: starts never decrease along the stream
    full_lo = tl.max(tl.where(rows < T, starts, 0), 0)  # the last row's start
    if WINDOW:
        lo = tl.maximum(lo, first - window + 1)
        full_lo = tl.maximum(full_lo, last - window + 1)
    n1, n2 = _split(lo, full_lo, first + 1, BLOCK_N)
    return rows, starts, lo, n1, n2, last + 1


@triton.jit
def _varlen_attention_fwd_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    cu_ptr,
    o_ptr,
    lse_ptr,
    T,
    S,
    steps,
    HQ,
    HKV,
    scale,
    softcap,
    window,
    D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    SOFTCAP: tl.constexpr,
    WINDOW: tl.constexpr,
    PRECISION: tl.constexpr,
):
    h = tl.program_id(0)
    kv = h // (HQ // HKV)
    rows, starts, lo, n1, n2, hi = _query_block(cu_ptr, T, S, steps, window, BLOCK_M, BLOCK_N, WINDOW)
    q = _rows(q_ptr + h * D, rows, HQ * D, T, D, BLOCK_D, True)
    acc = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
    l_i = tl.zeros((BLOCK_M,), tl.float32)
    m_i = tl.full((BLOCK_M,), -1.0e30, tl.float32)  # finite: a row whose tile is all masked gets alpha = 1, p = 0
    for part in tl.static_range(3):
        start, end = _part(part, lo, n1, n2, hi)
        for n in range(start, end, BLOCK_N):
            keys = n + tl.arange(0, BLOCK_N)
            k = _rows(k_ptr + kv * D, keys, HKV * D, T, D, BLOCK_D, part != 1)
            s, _ = _scores(_dot(q, tl.trans(k), PRECISION), scale, softcap, SOFTCAP)
            if part != 1:
                s = tl.where(_visible(rows, keys, starts, window, WINDOW), s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            v = _rows(v_ptr + kv * D, keys, HKV * D, T, D, BLOCK_D, part != 1)
            acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, PRECISION)
            m_i = m_new
    _store_rows(o_ptr + h * D, rows, HQ * D, T, acc / l_i[:, None], D, BLOCK_D)
    tl.store(lse_ptr + h * T + rows, m_i + tl.log2(l_i), mask=rows < T)


@triton.jit
def _varlen_attention_bwd_delta_kernel(
    o_ptr, do_ptr, delta_ptr, T, HQ, D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr
):
    h = tl.program_id(0)
    rows = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    o = _rows(o_ptr + h * D, rows, HQ * D, T, D, BLOCK_D, True).to(tl.float32)
    do = _rows(do_ptr + h * D, rows, HQ * D, T, D, BLOCK_D, True).to(tl.float32)
    tl.store(delta_ptr + h * T + rows, tl.sum(o * do, 1), mask=rows < T)


@triton.jit
def _varlen_attention_bwd_dq_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    do_ptr,
    lse_ptr,
    delta_ptr,
    cu_ptr,
    dq_ptr,
    T,
    S,
    steps,
    HQ,
    HKV,
    scale,
    softcap,
    window,
    D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    SOFTCAP: tl.constexpr,
    WINDOW: tl.constexpr,
    PRECISION: tl.constexpr,
):
    h = tl.program_id(0)
    kv = h // (HQ // HKV)
    rows, starts, lo, n1, n2, hi = _query_block(cu_ptr, T, S, steps, window, BLOCK_M, BLOCK_N, WINDOW)
    q = _rows(q_ptr + h * D, rows, HQ * D, T, D, BLOCK_D, True)
    do = _rows(do_ptr + h * D, rows, HQ * D, T, D, BLOCK_D, True)
    lse = tl.load(lse_ptr + h * T + rows, mask=rows < T, other=0.0)
    delta = tl.load(delta_ptr + h * T + rows, mask=rows < T, other=0.0)
    dq = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
    for part in tl.static_range(3):
        start, end = _part(part, lo, n1, n2, hi)
        for n in range(start, end, BLOCK_N):
            keys = n + tl.arange(0, BLOCK_N)
            k = _rows(k_ptr + kv * D, keys, HKV * D, T, D, BLOCK_D, part != 1)
            v = _rows(v_ptr + kv * D, keys, HKV * D, T, D, BLOCK_D, part != 1)
            s, t = _scores(_dot(q, tl.trans(k), PRECISION), scale, softcap, SOFTCAP)
            p = tl.exp2(s - lse[:, None])
            if part != 1:
                p = tl.where(_visible(rows, keys, starts, window, WINDOW), p, 0.0)
            ds = p * (_dot(do, tl.trans(v), PRECISION) - delta[:, None])
            if SOFTCAP:
                ds = ds * (1.0 - t * t)
            dq += _dot(ds.to(k.dtype), k, PRECISION)
    _store_rows(dq_ptr + h * D, rows, HQ * D, T, dq * scale, D, BLOCK_D)


@triton.jit
def _varlen_attention_bwd_dkdv_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    do_ptr,
    lse_ptr,
    delta_ptr,
    cu_ptr,
    dk_ptr,
    dv_ptr,
    T,
    S,
    steps,
    HQ,
    HKV,
    scale,
    softcap,
    window,
    D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    SOFTCAP: tl.constexpr,
    WINDOW: tl.constexpr,
    PRECISION: tl.constexpr,
):
    kv = tl.program_id(0)
    first = tl.program_id(1) * BLOCK_N
    keys = first + tl.arange(0, BLOCK_N)
    _, ends = _segments(cu_ptr, keys, S, steps)
    last = tl.minimum(first + BLOCK_N, T) - 1
    # Rows that see a key of the block: from its first key to its last key's segment end (or window); rows that see
    # every key: from the last key to the first key's segment end (none when the block straddles a boundary).
    hi = tl.max(tl.where(keys < T, ends, 0), 0)
    full_hi = tl.min(ends, 0)
    if WINDOW:
        hi = tl.minimum(hi, last + window)
        full_hi = tl.minimum(full_hi, first + window)
    n1, n2 = _split(first, last, full_hi, BLOCK_M)
    k = _rows(k_ptr + kv * D, keys, HKV * D, T, D, BLOCK_D, True)
    v = _rows(v_ptr + kv * D, keys, HKV * D, T, D, BLOCK_D, True)
    dk = tl.zeros((BLOCK_N, BLOCK_D), tl.float32)
    dv = tl.zeros((BLOCK_N, BLOCK_D), tl.float32)
    group = HQ // HKV
    for h in range(kv * group, kv * group + group):  # the group's query heads, summed here rather than with atomics
        for part in tl.static_range(3):
            start, end = _part(part, first, n1, n2, hi)
            for m in range(start, end, BLOCK_M):
                rows = m + tl.arange(0, BLOCK_M)
                q = _rows(q_ptr + h * D, rows, HQ * D, T, D, BLOCK_D, part != 1)
                do = _rows(do_ptr + h * D, rows, HQ * D, T, D, BLOCK_D, part != 1)
                lse = tl.load(lse_ptr + h * T + rows, mask=rows < T, other=0.0)
                delta = tl.load(delta_ptr + h * T + rows, mask=rows < T, other=0.0)
                s_t, t_t = _scores(_dot(k, tl.trans(q), PRECISION), scale, softcap, SOFTCAP)  # (keys, rows)
                p_t = tl.exp2(s_t - lse[None, :])
                if part != 1:  # row i sees key j when j <= i < the end of j's segment (and i - j < window)
                    visible = (rows[None, :] >= keys[:, None]) & (rows[None, :] < ends[:, None])
                    if WINDOW:
                        visible = visible & (rows[None, :] - keys[:, None] < window)
                    p_t = tl.where(visible, p_t, 0.0)
                dv += _dot(p_t.to(do.dtype), do, PRECISION)
                ds_t = p_t * (_dot(v, tl.trans(do), PRECISION) - delta[None, :])
                if SOFTCAP:
                    ds_t = ds_t * (1.0 - t_t * t_t)
                dk += _dot(ds_t.to(q.dtype), q, PRECISION)
    _store_rows(dk_ptr + kv * D, keys, HKV * D, T, dk * scale, D, BLOCK_D)
    _store_rows(dv_ptr + kv * D, keys, HKV * D, T, dv, D, BLOCK_D)


class Blocks(NamedTuple):
    """One kernel's tile sizes and launch settings (block_m: query rows, block_n: key rows)."""

    block_m: int
    block_n: int
    warps: int
    stages: int


# Per head dim on CUDA: forward, dQ, dK/dV. 128 and 256: the fastest of `bench/bench_varlen_attention.py --sweep` on
# the H200 (16 x ~1000 tokens; bench/README.md). 64: not measured, the 128 tiles with 4 warps. They need up to 164352
# bytes of shared memory per block (dK/dV at 256, sm_80; Triton 3.9), which an A100 (163 KiB) and an H100 have.
GPU_BLOCKS = {
    64: (Blocks(64, 64, 4, 3), Blocks(128, 64, 4, 3), Blocks(32, 128, 4, 3)),
    128: (Blocks(64, 64, 4, 3), Blocks(128, 64, 8, 3), Blocks(32, 128, 8, 3)),
    256: (Blocks(128, 64, 8, 2), Blocks(64, 64, 8, 2), Blocks(64, 64, 8, 2)),
}
GPU_BLOCKS_SHARED = 163 * 1024
# Cards with less shared memory per block: (the least they need, tiles), largest first. RTX 30xx/40xx (sm_86/89,
# 99 KiB) keep GPU_BLOCKS up to head dim 128 (98816 bytes at most) and halve the tiles at 256 (98304 at most); a T4
# (sm_75, 64 KiB; Triton stages Turing's tensor-core operands through far more shared memory) takes one stage and
# the largest tiles that fit (65536 at most). Bytes as Triton 3.9 compiles them (tests/kernels/test_compile_targets.py
# checks every target's pick); the tiles are not measured for speed (no such card here).
SMALL_GPU_BLOCKS = {
    64: ((99 * 1024, GPU_BLOCKS[64]), (64 * 1024, (Blocks(64, 64, 4, 1),) * 3)),
    128: (
        (99 * 1024, GPU_BLOCKS[128]),
        (64 * 1024, (Blocks(64, 64, 4, 1), Blocks(32, 64, 4, 1), Blocks(64, 32, 4, 1))),
    ),
    256: (
        (99 * 1024, (Blocks(64, 64, 8, 2), Blocks(64, 32, 8, 2), Blocks(32, 32, 8, 2))),
        (64 * 1024, (Blocks(32, 32, 4, 1), Blocks(16, 32, 4, 1), Blocks(32, 16, 4, 1))),
    ),
}
CPU_BLOCKS = (Blocks(16, 16, 4, 1),) * 3


def gpu_blocks(block_d: int, shared_memory: int) -> tuple[Blocks, Blocks, Blocks]:
    """The 16-bit tiles (forward, dQ, dK/dV) for a head dim block of 64, 128 or 256 on a GPU with `shared_memory`
    bytes per block: GPU_BLOCKS where they fit, else the largest of SMALL_GPU_BLOCKS that fit (the smallest below a
    T4's 64 KiB)."""
    if shared_memory >= GPU_BLOCKS_SHARED:
        return GPU_BLOCKS[block_d]
    tiers = SMALL_GPU_BLOCKS[block_d]
    return next((blocks for least, blocks in tiers if shared_memory >= least), tiers[-1][1])


def _blocks(block_d: int, t: torch.Tensor) -> tuple[Blocks, Blocks, Blocks]:
    """The tiles for this head dim and device; fp32 tiles take twice the shared memory, so half the rows, one stage."""
    gpu = target.of(t)
    if gpu is None:
        return CPU_BLOCKS
    blocks = gpu_blocks(max(block_d, 64), gpu.shared_memory)
    if t.dtype == torch.float32:
        blocks = tuple(Blocks(max(16, b.block_m // 2), max(16, b.block_n // 2), b.warps, 1) for b in blocks)
    return blocks


def _common(q, k, cu_seqlens, scale, softcap, window) -> dict:
    """Arguments every attention kernel takes: sizes (shapes only), the binary search's length, the flags."""
    segments = cu_seqlens.numel() - 1
    return dict(
        T=q.shape[0],
        S=segments,
        steps=segments.bit_length(),
        HQ=q.shape[1],
        HKV=k.shape[1],
        scale=scale,
        softcap=softcap,
        window=window,
        D=q.shape[2],
        BLOCK_D=max(16, triton.next_power_of_2(q.shape[2])),
        SOFTCAP=softcap > 0,
        WINDOW=window > 0,
        PRECISION=target.dot_precision(q),
    )


def varlen_attention_fwd(q, k, v, cu_seqlens, scale, softcap, window, blocks=None):
    """Launch the forward on contiguous (T, H, D) tensors; returns (o, lse) with lse (Hq, T) fp32, log2 domain."""
    total, hq, _ = q.shape
    common = _common(q, k, cu_seqlens, scale, softcap, window)
    cfg = blocks or _blocks(common["BLOCK_D"], q)[0]
    o = torch.empty_like(q)
    lse = torch.empty(hq, total, dtype=torch.float32, device=q.device)
    _varlen_attention_fwd_kernel[(hq, triton.cdiv(total, cfg.block_m))](
        q,
        k,
        v,
        cu_seqlens,
        o,
        lse,
        **common,
        BLOCK_M=cfg.block_m,
        BLOCK_N=cfg.block_n,
        num_warps=cfg.warps,
        num_stages=cfg.stages,
    )
    return o, lse


def varlen_attention_bwd(do, q, k, v, o, lse, cu_seqlens, scale, softcap, window, blocks=None):
    """Launch the backward (delta, then dQ, then dK/dV) on contiguous tensors; returns (dq, dk, dv)."""
    total, hq, _ = q.shape
    common = _common(q, k, cu_seqlens, scale, softcap, window)
    cfg_dq, cfg_dkdv = (blocks or _blocks(common["BLOCK_D"], q))[1:]
    delta = torch.empty(hq, total, dtype=torch.float32, device=q.device)
    _varlen_attention_bwd_delta_kernel[(hq, triton.cdiv(total, 64))](
        o, do, delta, total, hq, D=common["D"], BLOCK_M=64, BLOCK_D=common["BLOCK_D"]
    )
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    _varlen_attention_bwd_dq_kernel[(hq, triton.cdiv(total, cfg_dq.block_m))](
        q,
        k,
        v,
        do,
        lse,
        delta,
        cu_seqlens,
        dq,
        **common,
        BLOCK_M=cfg_dq.block_m,
        BLOCK_N=cfg_dq.block_n,
        num_warps=cfg_dq.warps,
        num_stages=cfg_dq.stages,
    )
    _varlen_attention_bwd_dkdv_kernel[(k.shape[1], triton.cdiv(total, cfg_dkdv.block_n))](
        q,
        k,
        v,
        do,
        lse,
        delta,
        cu_seqlens,
        dk,
        dv,
        **common,
        BLOCK_M=cfg_dkdv.block_m,
        BLOCK_N=cfg_dkdv.block_n,
        num_warps=cfg_dkdv.warps,
        num_stages=cfg_dkdv.stages,
    )
    return dq, dk, dv


class VarlenAttentionFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, cu_seqlens, scale, softcap, window):
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        cu_seqlens = cu_seqlens.contiguous()
        o, lse = varlen_attention_fwd(q, k, v, cu_seqlens, scale, softcap, window)
        ctx.save_for_backward(q, k, v, o, lse, cu_seqlens)
        ctx.args = (scale, softcap, window)
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse, cu_seqlens = ctx.saved_tensors
        dq, dk, dv = varlen_attention_bwd(do.contiguous(), q, k, v, o, lse, cu_seqlens, *ctx.args)
        return dq, dk, dv, None, None, None, None


def varlen_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    scale: float,
    softcap: float = 0.0,
    window: int = 0,
) -> torch.Tensor:
    """Causal attention of each token over the earlier tokens of its own segment, grouped-query heads.

    Softcap and sliding window are both supported by the Triton kernels (no fallback needed); head dims up to 256
    (64, 80, 96, 128 and 256 are the families' sizes; others are padded to a power of two inside the kernel).
    Nothing here reads cu_seqlens on the host, so a call can be captured in a CUDA graph and replayed with other
    segment lengths of the same total.

    Args:
        q: (T, Hq, D) queries; T the total tokens of a micro-batch whose examples are concatenated.
        k, v: (T, Hkv, D) keys and values, Hq % Hkv == 0; q, k, v of one dtype (fp32, bf16 or fp16).
        cu_seqlens: int32 (S + 1,) on q's device: 0, then the cumulative segment lengths, ending at T; empty segments
            (repeated values) are allowed so callers can pad the segment count to a fixed size. Not validated on
            the device: values outside [0, T] or decreasing give undefined results.
        scale: the score scale (head_dim ** -0.5 for most families).
        softcap: > 0 caps scores as softcap * tanh(scores / softcap) (Gemma 2).
        window: > 0 lets a token see only the last `window` positions of its segment, itself included.

    Returns:
        (T, Hq, D) in q's dtype; q, k and v get gradients.

    Raises:
        ValueError: shapes, dtypes or devices that do not fit together, or a head dim over 256.
    """
    total, hq, d = q.shape
    if k.shape != v.shape or k.dim() != 3 or k.shape[0] != total or k.shape[2] != d or hq % k.shape[1]:
        raise ValueError(f"varlen_attention: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"varlen_attention: q, k, v must share one of fp32/bf16/fp16, got {q.dtype}, {k.dtype}")
    if cu_seqlens.dtype != torch.int32 or cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
        raise ValueError(f"varlen_attention: cu_seqlens must be int32 (S + 1,) with S >= 1, got {cu_seqlens.dtype}")
    if cu_seqlens.device != q.device:
        raise ValueError(f"varlen_attention: cu_seqlens is on {cu_seqlens.device}, q on {q.device}")
    if d > MAX_HEAD_DIM:
        raise ValueError(f"varlen_attention: head dim {d} is over {MAX_HEAD_DIM}; use the model's own attention")
    if total == 0:
        return q.new_empty(q.shape).requires_grad_(q.requires_grad)
    if dispatch.use_triton(q, k, v):
        return VarlenAttentionFunction.apply(q, k, v, cu_seqlens, scale, softcap, window)
    return varlen_attention_reference(q, k, v, cu_seqlens, scale, softcap, window)
