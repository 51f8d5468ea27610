"""Attention of one query token over a KV cache under grouped-query attention, for decoding (forward only).

For query head h (of Hq = Hk * G; head h reads KV head h // G, as transformers' repeat_kv pairs them) and the n
cached positions 0..p (p read from a device tensor, so a replayed CUDA graph needs no host value):

    s_j = scale * q_h . k_j        o_h = sum_j softmax(s)_j v_j

Split-K over the sequence (flash-decoding): the filled positions are cut into S chunks; program (k, i) runs an
online softmax over chunk i for the G query heads of KV head k, reading each K and V row once for the whole group,
and keeps (max, sum of exponentials, unnormalized output) per head; a second kernel merges the S partial results.
S is fixed by the cache's capacity, not by p, so one captured graph serves every position; the filled positions 0..p
are what is cut into the S chunks (each a multiple of the block of positions a program loads), read from the device
position in the kernel, so a short chat still spreads over the GPU's SMs. Before, chunks of at least 64 positions of
the capacity left most programs idle and a few looping: 13 us a call at positions 128-383 of a 512-position cache on
an H100 (qwen3_4b, `bench/decode_profile.py`, call 8 of bench/queue.sh). With one chunk the first kernel writes the
output itself.

Batched (B sequences decoding together, each at its own position): q (B, Hq, D), caches (B, Hk, C, D) and one position
per row; the grid gains a row axis and each row reads its own cache up to its own position (ragged prompts need no
padding). The reference runs the one-row reference row by row, so a row's result is the unbatched one.

Numerics: q, k, v are loaded in their dtype and everything is fp32 (scores, softmax, the weighted sum); the output is
rounded once. transformers' SDPA kernels do the same up to the order of the sums.

Bytes moved: K and V up to p once (2 * n * Hk * D * b), q and the output, plus S * Hq * (D + 2) fp32 partials.
The eager alternative (SDPA over the whole static cache with a mask) reads all C positions and, under GQA with a
bool mask, first copies K and V once per query head of a group.
"""

import torch
import triton
import triton.language as tl

from kernels import dispatch

CHUNK = 16  # capacity per split at the least: a short chat's positions spread over many programs
MAX_SPLITS = 64  # the merge kernel holds all splits of a head at once
TILE = 8192  # elements of a (heads, positions, dim) product tile a program holds in registers


def decode_attention_reference(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, position: torch.Tensor, scale: float
) -> torch.Tensor:
    """Pure-torch version in fp32 over the whole cache with positions past `position` masked: (Hq, D) in q's dtype
    (batched: (B, Hq, D), row by row)."""
    if q.dim() == 3:
        pos = position.reshape(-1)
        return torch.stack(
            [decode_attention_reference(q[b], k_cache[b], v_cache[b], pos[b : b + 1], scale) for b in range(len(q))]
        )
    hq, d = q.shape
    hk, capacity, _ = k_cache.shape
    qf = q.float().view(hk, hq // hk, d)
    scores = torch.matmul(qf, k_cache.float().transpose(1, 2)) * scale  # (Hk, G, C)
    valid = torch.arange(capacity, device=q.device) <= position.reshape(-1)[0]
    probs = scores.masked_fill(~valid, float("-inf")).softmax(-1)
    return torch.matmul(probs, v_cache.float()).reshape(hq, d).to(q.dtype)


def splits_for(capacity: int, block_n: int) -> tuple[int, int]:
    """(number of splits, positions per split, a multiple of block_n) for a cache of `capacity` positions."""
    splits = max(1, min(triton.cdiv(capacity, CHUNK), MAX_SPLITS))
    chunk = triton.cdiv(triton.cdiv(capacity, splits), block_n) * block_n
    return triton.cdiv(capacity, chunk), chunk


@triton.jit
def _decode_attention_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    pos_ptr,
    o_ptr,
    m_ptr,
    l_ptr,
    acc_ptr,
    k_row,
    k_head,
    k_pos,
    v_row,
    v_head,
    v_pos,
    HQ,
    G,
    D,
    C,
    scale,
    SPLITS,
    SPLIT: tl.constexpr,
    BLOCK_G: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    kv = tl.program_id(0).to(tl.int64)
    split = tl.program_id(1)
    row = tl.program_id(2).to(tl.int64)  # batched: this row's query, cache, position, output and partials
    q_ptr += row * HQ * D
    o_ptr += row * HQ * D
    k_ptr += row * k_row
    v_ptr += row * v_row
    n = tl.minimum(tl.load(pos_ptr + row).to(tl.int32) + 1, C)  # a position past the end reads the whole cache
    g = tl.arange(0, BLOCK_G)
    j = tl.arange(0, BLOCK_N)
    dd = tl.arange(0, BLOCK_D)
    heads = kv * G + g  # query heads of this KV head
    g_mask = g < G
    d_mask = dd < D
    q = tl.load(q_ptr + heads[:, None] * D + dd[None, :], mask=g_mask[:, None] & d_mask[None, :], other=0.0)
    q = q.to(tl.float32) * scale
    m = tl.full((BLOCK_G,), float("-inf"), tl.float32)
    l_sum = tl.zeros((BLOCK_G,), tl.float32)
    acc = tl.zeros((BLOCK_G, BLOCK_D), tl.float32)
    chunk = tl.cdiv(tl.cdiv(n, SPLITS), BLOCK_N) * BLOCK_N  # the filled positions over the splits
    start = split * chunk
    end = tl.minimum(start + chunk, n)
    for lo in range(start, end, BLOCK_N):
        rows = lo + j
        r_mask = rows < end
        kv_mask = r_mask[:, None] & d_mask[None, :]
        k = tl.load(k_ptr + kv * k_head + rows[:, None] * k_pos + dd[None, :], mask=kv_mask, other=0.0)
        s = tl.sum(q[:, None, :] * k.to(tl.float32)[None, :, :], axis=2)  # (G, N)
        s = tl.where(r_mask[None, :], s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, axis=1))
        alpha = tl.exp(m - m_new)
        p = tl.exp(s - m_new[:, None])
        v = tl.load(v_ptr + kv * v_head + rows[:, None] * v_pos + dd[None, :], mask=kv_mask, other=0.0)
        acc = acc * alpha[:, None] + tl.sum(p[:, :, None] * v.to(tl.float32)[None, :, :], axis=1)
        l_sum = l_sum * alpha + tl.sum(p, axis=1)
        m = m_new
    out_mask = g_mask[:, None] & d_mask[None, :]
    if SPLIT:
        part = (row * HQ + heads) * SPLITS + split
        tl.store(m_ptr + part, m, mask=g_mask)
        tl.store(l_ptr + part, l_sum, mask=g_mask)
        tl.store(acc_ptr + part[:, None] * D + dd[None, :], acc, mask=out_mask)
    else:
        out = acc / l_sum[:, None]
        tl.store(o_ptr + heads[:, None] * D + dd[None, :], out.to(o_ptr.dtype.element_ty), mask=out_mask)


@triton.jit
def _merge_kernel(m_ptr, l_ptr, acc_ptr, o_ptr, D, SPLITS, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr):
    h = tl.program_id(0).to(tl.int64)
    s = tl.arange(0, BLOCK_S)
    dd = tl.arange(0, BLOCK_D)
    s_mask = s < SPLITS
    m = tl.load(m_ptr + h * SPLITS + s, mask=s_mask, other=float("-inf"))
    big = tl.max(m, axis=0)  # split 0 always holds position 0, so this is finite
    w = tl.where(s_mask & (m > float("-inf")), tl.exp(m - big), 0.0)
    total = tl.sum(tl.load(l_ptr + h * SPLITS + s, mask=s_mask, other=0.0) * w, axis=0)
    acc_mask = s_mask[:, None] & (dd < D)[None, :]
    acc = tl.load(acc_ptr + (h * SPLITS + s)[:, None] * D + dd[None, :], mask=acc_mask, other=0.0)
    out = tl.sum(acc * w[:, None], axis=0) / total
    tl.store(o_ptr + h * D + dd, out.to(o_ptr.dtype.element_ty), mask=dd < D)


def decode_attention_fwd(q, k_cache, v_cache, position, scale):
    """q (B, Hq, D) contiguous, caches (B, Hk, C, D), position (B,): the launches for B rows at once."""
    rows, hq, d = q.shape
    _, hk, capacity, _ = k_cache.shape
    group = hq // hk
    block_g, block_d = triton.next_power_of_2(group), triton.next_power_of_2(d)
    block_n = max(16, TILE // (block_g * block_d))
    splits, _ = splits_for(capacity, block_n)
    out = torch.empty_like(q)
    if splits > 1:
        m = torch.empty(rows * hq * splits, dtype=torch.float32, device=q.device)
        lse = torch.empty_like(m)
        acc = torch.empty(rows * hq * splits, d, dtype=torch.float32, device=q.device)
    else:
        m = lse = acc = out  # unused
    _decode_attention_kernel[(hk, splits, rows)](
        q,
        k_cache,
        v_cache,
        position,
        out,
        m,
        lse,
        acc,
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        v_cache.stride(0),
        v_cache.stride(1),
        v_cache.stride(2),
        hq,
        group,
        d,
        capacity,
        scale,
        splits,
        SPLIT=splits > 1,
        BLOCK_G=block_g,
        BLOCK_N=block_n,
        BLOCK_D=block_d,
        num_warps=4,
    )
    if splits > 1:
        _merge_kernel[(rows * hq,)](
            m, lse, acc, out, d, splits, BLOCK_S=triton.next_power_of_2(splits), BLOCK_D=block_d
        )
    return out


def decode_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, position: torch.Tensor, scale: float
) -> torch.Tensor:
    """softmax(scale * q K^T) V for one query token over cache positions 0..position, grouped-query heads.

    Args:
        q: (Hq, D) the token's rotated queries; Hq a multiple of Hk. Batched: (B, Hq, D), one token per row.
        k_cache, v_cache: (Hk, C, D) one layer's cache (last dim contiguous), filled up to `position`. Batched:
            (B, Hk, C, D), one cache per row.
        position: integer tensor whose first element is the query's position (read on the device); must be < C.
            Batched: (B,) each row's position.
        scale: the score scale (head_dim ** -0.5 for these families).

    Returns:
        (Hq, D) in q's dtype (batched: (B, Hq, D)).
    """
    batched = q.dim() == 3
    hq, d = q.shape[-2:]
    hk, _, dk = k_cache.shape[-3:]
    rows_ok = not batched or (k_cache.dim() == 4 and k_cache.shape[0] == q.shape[0] and position.numel() == len(q))
    if dk != d or hq % hk or v_cache.shape != k_cache.shape or not rows_ok or k_cache.dim() != q.dim() + 1:
        raise ValueError(
            f"decode_attention: q {tuple(q.shape)}, caches {tuple(k_cache.shape)}, positions {tuple(position.shape)}"
        )
    if dispatch.use_triton(q, k_cache):
        if not batched:
            q, k_cache, v_cache = q[None], k_cache[None], v_cache[None]
        out = decode_attention_fwd(q.contiguous(), k_cache, v_cache, position, scale)
        return out if batched else out[0]
    return decode_attention_reference(q, k_cache, v_cache, position, scale)
