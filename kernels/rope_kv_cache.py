"""Per-head q/k RMSNorm (Qwen3), rotary position embedding and the KV-cache write of one attention layer, in one
launch, for decoding (forward only).

For T new tokens at positions p0 + t (p0 read from a device tensor, so a replayed CUDA graph needs no host value):

    q_t, k_t = norm(q_t), norm(k_t)             per head, y = w * (x * rstd) rounded as transformers (Qwen3 only)
    q_t      = q_t cos(p) + rotate_half(q_t) sin(p)          rotate_half([x1, x2]) = [-x2, x1]
    k_cache[:, p0 + t] = k_t rotated the same way;  v_cache[:, p0 + t] = v_t

cos and sin are the model's own tables (`rotary_emb` for every position of the cache, in the activation dtype), so
every RoPE variant the model computes (linear, llama3, yarn scaling) is applied as transformers applies it, with the
same rounding: each product and the sum are rounded to the activation dtype, as `(q * cos) + (rotate_half(q) * sin)`
rounds in bf16. A position past the cache's end is not written (the caller sizes the cache; this only keeps a wrong
position from writing out of bounds), and its query is rotated by the last position's angles.

Layout: q (T, Hq * D), k and v (T, Hk * D), any row stride (views into one fused qkv product are fine); caches
(Hk, C, D) with a contiguous last dim; tables (C, D). One program per (token, head) over the Hq + 2 Hk heads.

Bytes moved per token: reads (Hq + 2 Hk) * D * b and writes as much (b bytes per element), plus a table row; the
eager path (view, two norms of ~8 kernels, rotate_half's slices, neg and cat, four multiplies, two adds, two cache
index_copy kernels) makes ~25 launches of it.

Batched (B sequences decoding together, one new token each at its own position): caches (B, Hk, C, D) and
positions (B,); token t is row t's, at position[t], written into cache t. The same kernel: a token's position is
`position[t * ROW] + t * (1 - ROW)` and its cache is offset by t times the cache's row stride (0 for one sequence).

No backward: decoding only.
"""

import torch
import triton
import triton.language as tl

from kernels import dispatch
from kernels.add_rms_norm import _r  # fp32 rounded as each eager op in the model's dtype rounds


def _head_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    xf = x.float()
    n = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
    return (weight.float() * n.float()).to(x.dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x * cos) + (rotated * sin)


def rope_kv_cache_reference(
    q, k, v, cos, sin, position, k_cache, v_cache, q_weight=None, k_weight=None, eps=1e-6
) -> torch.Tensor:
    """Pure-torch version with transformers' ops (and so its rounding); writes the caches, returns q (T, Hq, D).
    Batched (4-D caches), row by row."""
    if k_cache.dim() == 4:
        positions = position.reshape(-1)
        rows = [
            rope_kv_cache_reference(
                q[b : b + 1],
                k[b : b + 1],
                v[b : b + 1],
                cos,
                sin,
                positions[b : b + 1],
                k_cache[b],
                v_cache[b],
                q_weight,
                k_weight,
                eps,
            )
            for b in range(q.shape[0])
        ]
        return torch.cat(rows)
    t, d = q.shape[0], k_cache.shape[-1]
    q, k, v = q.reshape(t, -1, d), k.reshape(t, -1, d), v.reshape(t, -1, d)
    if q_weight is not None:
        q, k = _head_norm(q, q_weight, eps), _head_norm(k, k_weight, eps)
    positions = position.reshape(-1)[:1] + torch.arange(t, device=q.device)
    keep = positions < k_cache.shape[1]  # positions past the end are dropped, as the kernel drops them
    safe = positions.clamp(max=k_cache.shape[1] - 1)
    c, s = cos[safe].unsqueeze(1).to(q.dtype), sin[safe].unsqueeze(1).to(q.dtype)
    q_out, k_out = _rotate(q, c, s), _rotate(k, c, s)
    written = positions[keep]
    k_cache[:, written] = k_out[keep].transpose(0, 1).to(k_cache.dtype)
    v_cache[:, written] = v[keep].transpose(0, 1).to(v_cache.dtype)
    return q_out


@triton.jit
def _norm_rope(
    src,
    w_ptr,
    cos_row,
    sin_row,
    d,
    mask,
    HALF,
    eps,
    NORM: tl.constexpr,
    like_ptr,
    BF16: tl.constexpr,
):
    x1 = tl.load(src + d, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(src + HALF + d, mask=mask, other=0.0).to(tl.float32)
    if NORM:
        rstd = 1.0 / tl.sqrt((tl.sum(x1 * x1, axis=0) + tl.sum(x2 * x2, axis=0)) / (2 * HALF) + eps)
        w1 = tl.load(w_ptr + d, mask=mask, other=0.0).to(tl.float32)
        w2 = tl.load(w_ptr + HALF + d, mask=mask, other=0.0).to(tl.float32)
        x1 = _r(w1 * _r(x1 * rstd, like_ptr, BF16), like_ptr, BF16)
        x2 = _r(w2 * _r(x2 * rstd, like_ptr, BF16), like_ptr, BF16)
    c1 = tl.load(cos_row + d, mask=mask, other=0.0).to(tl.float32)
    c2 = tl.load(cos_row + HALF + d, mask=mask, other=0.0).to(tl.float32)
    s1 = tl.load(sin_row + d, mask=mask, other=0.0).to(tl.float32)
    s2 = tl.load(sin_row + HALF + d, mask=mask, other=0.0).to(tl.float32)
    o1 = _r(_r(x1 * c1, like_ptr, BF16) + _r(-x2 * s1, like_ptr, BF16), like_ptr, BF16)
    o2 = _r(_r(x2 * c2, like_ptr, BF16) + _r(x1 * s2, like_ptr, BF16), like_ptr, BF16)
    return o1, o2


@triton.jit
def _rope_kv_cache_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    qo_ptr,
    kc_ptr,
    vc_ptr,
    cos_ptr,
    sin_ptr,
    pos_ptr,
    qw_ptr,
    kw_ptr,
    q_stride,
    k_stride,
    v_stride,
    kc_row,
    vc_row,
    kc_head,
    kc_pos,
    vc_head,
    vc_pos,
    table_stride,
    HQ,
    HK,
    C,
    HALF,
    eps,
    NORM: tl.constexpr,
    BF16: tl.constexpr,
    BLOCK_HALF: tl.constexpr,
    ROW: tl.constexpr,
):
    t = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    if ROW:  # batched: token t is row t's, with its own position and cache
        pos = tl.load(pos_ptr + t).to(tl.int64)
        kc_ptr += t * kc_row
        vc_ptr += t * vc_row
    else:
        pos = tl.load(pos_ptr).to(tl.int64) + t
    d = tl.arange(0, BLOCK_HALF)
    mask = d < HALF
    write = d < tl.where(pos < C, HALF, 0)  # nothing past the cache's end (such a query uses the last table row)
    dtype = qo_ptr.dtype.element_ty
    head = 2 * HALF
    cos_row = cos_ptr + tl.minimum(pos, C - 1) * table_stride
    sin_row = sin_ptr + tl.minimum(pos, C - 1) * table_stride
    if h < HQ:
        o1, o2 = _norm_rope(
            q_ptr + t * q_stride + h * head, qw_ptr, cos_row, sin_row, d, mask, HALF, eps, NORM, qo_ptr, BF16
        )
        out = qo_ptr + (t * HQ + h) * head
        tl.store(out + d, o1.to(dtype), mask=mask)
        tl.store(out + HALF + d, o2.to(dtype), mask=mask)
    elif h < HQ + HK:
        hk = h - HQ
        o1, o2 = _norm_rope(
            k_ptr + t * k_stride + hk * head, kw_ptr, cos_row, sin_row, d, mask, HALF, eps, NORM, qo_ptr, BF16
        )
        out = kc_ptr + hk * kc_head + pos * kc_pos
        tl.store(out + d, o1.to(kc_ptr.dtype.element_ty), mask=write)
        tl.store(out + HALF + d, o2.to(kc_ptr.dtype.element_ty), mask=write)
    else:
        hv = h - HQ - HK
        src = v_ptr + t * v_stride + hv * head
        out = vc_ptr + hv * vc_head + pos * vc_pos
        tl.store(out + d, tl.load(src + d, mask=write, other=0.0).to(vc_ptr.dtype.element_ty), mask=write)
        tl.store(out + HALF + d, tl.load(src + HALF + d, mask=write, other=0.0).to(vc_ptr.dtype.element_ty), mask=write)


def rope_kv_cache_fwd(q, k, v, cos, sin, position, k_cache, v_cache, q_weight, k_weight, eps):
    t = q.shape[0]
    row = k_cache.dim() == 4
    hk, capacity, d = k_cache.shape[-3:]
    hq = q.shape[1] // d
    q_out = torch.empty(t, hq, d, dtype=q.dtype, device=q.device)
    norm = q_weight is not None
    _rope_kv_cache_kernel[(t, hq + 2 * hk)](
        q,
        k,
        v,
        q_out,
        k_cache,
        v_cache,
        cos,
        sin,
        position,
        q_weight if norm else cos,  # unused pointers without the norm
        k_weight if norm else cos,
        q.stride(0),
        k.stride(0),
        v.stride(0),
        k_cache.stride(0) if row else 0,
        v_cache.stride(0) if row else 0,
        k_cache.stride(-3),
        k_cache.stride(-2),
        v_cache.stride(-3),
        v_cache.stride(-2),
        cos.stride(0),
        hq,
        hk,
        capacity,
        d // 2,
        eps,
        NORM=norm,
        BF16=q.dtype == torch.bfloat16,
        BLOCK_HALF=triton.next_power_of_2(d // 2),
        ROW=row,
        num_warps=1,
    )
    return q_out


def rope_kv_cache(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    position: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    q_weight: torch.Tensor | None = None,
    k_weight: torch.Tensor | None = None,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Normalize (optionally) and rotate T new tokens' q and k, and write k and v into the cache.

    Args:
        q: (T, Hq * D) queries; k, v: (T, Hk * D); the last dim contiguous, any row stride.
        cos, sin: (C, D) the model's rotary tables for positions 0..C-1, in the activation dtype.
        position: integer tensor whose first element is the position of the first new token (read on the device).
        k_cache, v_cache: (Hk, C, D) one layer's cache, written in place at positions position..position+T-1.
            Batched: (B, Hk, C, D) with T = B, and `position` (B,): token t is row t's, at position[t].
        q_weight, k_weight: (D,) Qwen3's q_norm / k_norm scales, or None (no per-head norm).
        eps: the per-head norm's epsilon.

    Returns:
        (T, Hq, D) the rotated queries.
    """
    d = k_cache.shape[-1]
    rows_ok = k_cache.dim() == 3 or (k_cache.dim() == 4 and k_cache.shape[0] == q.shape[0] == position.numel())
    if d % 2 or q.shape[-1] % d or k.shape[-1] != k_cache.shape[-3] * d or v.shape != k.shape or not rows_ok:
        raise ValueError(f"rope_kv_cache: q {tuple(q.shape)}, k {tuple(k.shape)}, cache {tuple(k_cache.shape)}")
    if cos.shape[-1] != d:
        raise ValueError(f"rope_kv_cache: tables of {cos.shape[-1]} dims for heads of {d}")
    if dispatch.use_triton(q, k_cache):
        for x in (q, k, v, k_cache, v_cache, cos, sin):
            if x.stride(-1) != 1:
                raise ValueError("rope_kv_cache: the last dimension must be contiguous")
        return rope_kv_cache_fwd(q, k, v, cos, sin, position, k_cache, v_cache, q_weight, k_weight, eps)
    return rope_kv_cache_reference(q, k, v, cos, sin, position, k_cache, v_cache, q_weight, k_weight, eps)
