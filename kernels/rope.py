"""Rotary position embedding of Q and K in one launch, with per-token position ids, and its cos/sin tables.

HF Llama/Qwen "rotate half" convention, for a head vector x = [x1, x2] (two halves of D/2) and angle
theta_i = position * inv_freq_i:

    out1 = x1 cos(theta) - x2 sin(theta)
    out2 = x2 cos(theta) + x1 sin(theta)

The backward is the rotation by -theta (the same kernel with sin negated): dx1 = dy1 cos + dy2 sin,
dx2 = dy2 cos - dy1 sin. Nothing but the position ids is saved for it.

Layout: q (B, S, Hq, D) and k (B, S, Hk, D) with any strides but a contiguous last dim, so both the projection
output `q_proj(x).view(B, S, H, D)` and HF's (B, H, S, D) tensor passed as `q.transpose(1, 2)` work. One program per
token (b, s) reads its position id, one row of the fp32 cos/sin tables (P, D/2) and rotates every head of q and k:
packed sequences just carry position ids that restart at 0. Head dims need not be powers of two (80, 96: the half
is padded to a power of two and masked).

Numerics: loads in the input dtype, fp32 tables and math, one rounding to the output dtype. HF rounds cos/sin to the
activation dtype first and computes in it; the difference is within one ulp of bf16.

In place (`inplace=True`): q and k are overwritten (each program reads both halves before writing them); this saves
the two output allocations and is safe whenever the pre-rotation q/k are not needed elsewhere (they are not for the
backward).

Bytes moved: reads and writes q and k once (2 * (Hq + Hk) * D * b per token) plus D/2 * 8 bytes of table per token.

`rope_inv_freq` computes the inverse frequencies for rope types default, linear, dynamic, yarn and llama3 exactly as
transformers' ROPE_INIT_FUNCTIONS do (tests compare them); `rope_cos_sin` turns them into the tables.
"""

import math

import torch
import triton
import triton.language as tl

from kernels import dispatch

ROPE_TYPES = ("default", "linear", "dynamic", "yarn", "llama3")


def rope_inv_freq(
    head_dim: int,
    base: float = 10000.0,
    rope_scaling: dict | None = None,
    max_position_embeddings: int | None = None,
    seq_len: int | None = None,
    partial_rotary_factor: float = 1.0,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, float]:
    """Inverse frequencies (fp32, dim/2) and the attention factor that scales cos and sin, as transformers does.

    Args:
        head_dim: the attention head size.
        base: rope_theta.
        rope_scaling: the config's rope_scaling / rope_parameters dict ("rope_type" or "type", "factor", ...);
            None or rope_type "default" for plain RoPE.
        max_position_embeddings: the config's value (dynamic and yarn use it).
        seq_len: the current sequence length, for dynamic NTK (defaults to max_position_embeddings).
        partial_rotary_factor: fraction of the head that is rotated.
        device: where the result lives.
    """
    p = dict(rope_scaling or {})
    rope_type = p.get("rope_type", p.get("type", "default"))
    if rope_type not in ROPE_TYPES:
        raise ValueError(f"rope_type {rope_type!r} is not supported: use one of {ROPE_TYPES}")
    base = float(p.get("rope_theta", base))
    partial_rotary_factor = p.get("partial_rotary_factor", partial_rotary_factor)
    dim = int(head_dim * partial_rotary_factor)
    exponents = torch.arange(0, dim, 2, dtype=torch.int64).to(device=device, dtype=torch.float) / dim
    attention_factor = 1.0

    if rope_type == "dynamic":
        factor = p["factor"]
        seq_len = max(seq_len or max_position_embeddings, max_position_embeddings)
        base = base * ((factor * seq_len / max_position_embeddings) - (factor - 1)) ** (dim / (dim - 2))
    inv_freq = 1.0 / (base**exponents)

    if rope_type == "linear":
        inv_freq = inv_freq / p["factor"]
    elif rope_type == "llama3":
        factor, low, high = p["factor"], p["low_freq_factor"], p["high_freq_factor"]
        old_len = p["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < old_len / high) * ~(wavelen > old_len / low)
        inv_freq = torch.where(medium, smoothed, scaled)
    elif rope_type == "yarn":
        inv_freq, attention_factor = _yarn(p, dim, base, exponents, max_position_embeddings)
    return inv_freq, attention_factor


def _yarn(p: dict, dim: int, base: float, exponents: torch.Tensor, max_position_embeddings: int | None):
    original = p.get("original_max_position_embeddings") or max_position_embeddings
    factor = p.get("factor") or max_position_embeddings / original
    attention_factor = p.get("attention_factor")
    mscale, mscale_all_dim = p.get("mscale"), p.get("mscale_all_dim")

    def get_mscale(scale, m=1):
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    if attention_factor is None:
        if mscale and mscale_all_dim:
            attention_factor = float(get_mscale(factor, mscale) / get_mscale(factor, mscale_all_dim))
        else:
            attention_factor = get_mscale(factor)
    beta_fast = p.get("beta_fast") or 32
    beta_slow = p.get("beta_slow") or 1

    def correction_dim(rotations):
        return (dim * math.log(original / (rotations * 2 * math.pi))) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if p.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # as transformers: avoid a zero-width ramp
    ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
    extrapolation = 1 - ramp.to(exponents.device)
    pos_freqs = base**exponents
    inv_freq = (1.0 / (factor * pos_freqs)) * (1 - extrapolation) + (1.0 / pos_freqs) * extrapolation
    return inv_freq, attention_factor


def rope_cos_sin(
    inv_freq: torch.Tensor, attention_factor: float, max_positions: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 tables (max_positions, dim/2) of cos(p * inv_freq) and sin(p * inv_freq), scaled by attention_factor."""
    positions = torch.arange(max_positions, device=inv_freq.device, dtype=torch.float32)
    freqs = positions[:, None] * inv_freq.float()[None, :]
    return freqs.cos() * attention_factor, freqs.sin() * attention_factor


def rope_reference(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, position_ids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pure-torch rotate-half RoPE on (B, S, H, D) q and k, in fp32, rounded once to the input dtype."""
    c = cos[position_ids].unsqueeze(2)  # (B, S, 1, D/2)
    s = sin[position_ids].unsqueeze(2)

    def rotate(x):
        x1, x2 = x.float().chunk(2, dim=-1)
        return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1).to(x.dtype)

    return rotate(q), rotate(k)


@triton.jit
def _rotate_heads(
    x_ptr,
    o_ptr,
    b,
    s,
    x_sb,
    x_ss,
    x_sh,
    o_sb,
    o_ss,
    o_sh,
    H,
    cos,
    sin,
    HALF,
    BLOCK_H: tl.constexpr,
    BLOCK_HALF: tl.constexpr,
):
    h = tl.arange(0, BLOCK_H)[:, None]
    d = tl.arange(0, BLOCK_HALF)[None, :]
    mask = (h < H) & (d < HALF)
    x_row = x_ptr + b * x_sb + s * x_ss + h * x_sh + d
    o_row = o_ptr + b * o_sb + s * o_ss + h * o_sh + d
    x1 = tl.load(x_row, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(x_row + HALF, mask=mask, other=0.0).to(tl.float32)
    tl.store(o_row, (x1 * cos - x2 * sin).to(o_ptr.dtype.element_ty), mask=mask)
    tl.store(o_row + HALF, (x2 * cos + x1 * sin).to(o_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _rope_fwd_kernel(
    q_ptr,
    k_ptr,
    qo_ptr,
    ko_ptr,
    cos_ptr,
    sin_ptr,
    pos_ptr,
    q_sb,
    q_ss,
    q_sh,
    k_sb,
    k_ss,
    k_sh,
    qo_sb,
    qo_ss,
    qo_sh,
    ko_sb,
    ko_ss,
    ko_sh,
    pos_sb,
    pos_ss,
    S,
    HQ,
    HK,
    HALF,
    BACKWARD: tl.constexpr,
    BLOCK_HQ: tl.constexpr,
    BLOCK_HK: tl.constexpr,
    BLOCK_HALF: tl.constexpr,
):
    token = tl.program_id(0)
    b = (token // S).to(tl.int64)
    s = (token % S).to(tl.int64)
    pos = tl.load(pos_ptr + b * pos_sb + s * pos_ss).to(tl.int64)
    d = tl.arange(0, BLOCK_HALF)[None, :]
    cos = tl.load(cos_ptr + pos * HALF + d, mask=d < HALF, other=0.0)
    sin = tl.load(sin_ptr + pos * HALF + d, mask=d < HALF, other=0.0)
    if BACKWARD:
        sin = -sin
    _rotate_heads(q_ptr, qo_ptr, b, s, q_sb, q_ss, q_sh, qo_sb, qo_ss, qo_sh, HQ, cos, sin, HALF, BLOCK_HQ, BLOCK_HALF)
    _rotate_heads(k_ptr, ko_ptr, b, s, k_sb, k_ss, k_sh, ko_sb, ko_ss, ko_sh, HK, cos, sin, HALF, BLOCK_HK, BLOCK_HALF)


def _launch(q, k, qo, ko, cos, sin, position_ids, backward: bool):
    bsz, seq, hq, dim = q.shape
    hk = k.shape[2]
    half = dim // 2
    if cos.shape[-1] != half:
        raise ValueError(f"rope: tables have {cos.shape[-1]} frequencies, head dim {dim} needs {half}")
    for t in (q, k, qo, ko):
        if t.stride(-1) != 1:
            raise ValueError("rope: the head dimension must be contiguous")
    pos = position_ids.expand(bsz, seq)
    block_h = triton.next_power_of_2(max(hq, hk))
    _rope_fwd_kernel[(bsz * seq,)](
        q,
        k,
        qo,
        ko,
        cos,
        sin,
        pos,
        *q.stride()[:3],
        *k.stride()[:3],
        *qo.stride()[:3],
        *ko.stride()[:3],
        *pos.stride(),
        seq,
        hq,
        hk,
        half,
        BACKWARD=backward,
        BLOCK_HQ=triton.next_power_of_2(hq),
        BLOCK_HK=triton.next_power_of_2(hk),
        BLOCK_HALF=triton.next_power_of_2(half),
        num_warps=4 if block_h * dim <= 4096 else 8,
    )
    return qo, ko


def rope_fwd(q, k, cos, sin, position_ids, inplace: bool):
    if inplace:
        return _launch(q, k, q, k, cos, sin, position_ids, backward=False)
    qo = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    ko = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    return _launch(q, k, qo, ko, cos, sin, position_ids, backward=False)


def rope_bwd(dq, dk, cos, sin, position_ids):
    # incoming gradients can be broadcast views (stride 0), e.g. from out.sum()
    dq = dq if dq.stride(-1) == 1 else dq.contiguous()
    dk = dk if dk.stride(-1) == 1 else dk.contiguous()
    dqi = torch.empty(dq.shape, dtype=dq.dtype, device=dq.device)
    dki = torch.empty(dk.shape, dtype=dk.dtype, device=dk.device)
    return _launch(dq, dk, dqi, dki, cos, sin, position_ids, backward=True)


class RoPEFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, cos, sin, position_ids, inplace):
        cos, sin = cos.float().contiguous(), sin.float().contiguous()
        qo, ko = rope_fwd(q, k, cos, sin, position_ids, inplace)
        if inplace:
            ctx.mark_dirty(q, k)
        ctx.save_for_backward(cos, sin, position_ids)
        return qo, ko

    @staticmethod
    def backward(ctx, dq, dk):
        cos, sin, position_ids = ctx.saved_tensors
        dqi, dki = rope_bwd(dq, dk, cos, sin, position_ids)
        return dqi, dki, None, None, None, None


def rope(
    q: torch.Tensor,
    k: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    position_ids: torch.Tensor,
    inplace: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate q and k by their tokens' positions (HF rotate-half convention), in one launch.

    Args:
        q: (B, S, Hq, D), last dim contiguous; for HF's (B, H, S, D) pass `q.transpose(1, 2)`.
        k: (B, S, Hk, D), same dtype.
        cos, sin: (P, D/2) tables from `rope_cos_sin` (fp32), P > every position id.
        position_ids: (B, S) or (1, S) integer positions; packed sequences restart at 0.
        inplace: let the Triton path overwrite q and k (they must not be leaves that require grad); the reference
            path always returns new tensors, so use the returned pair either way.

    Returns:
        The rotated (q, k).
    """
    if dispatch.use_triton(q, k):
        return RoPEFunction.apply(q, k, cos, sin, position_ids, inplace)
    return rope_reference(q, k, cos, sin, position_ids)
