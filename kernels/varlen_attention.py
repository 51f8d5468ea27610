"""Causal attention over variable-length segments packed into one token stream (padding-free), forward and backward.

A micro-batch's S examples are concatenated into T tokens; cu_seqlens (S + 1,) holds where each starts. For query
head h (of Hq = Hkv * G; head h reads KV head h // G, as transformers' repeat_kv pairs them) and token i of segment
[a, b):

    s_ij = scale * q_i . k_j                              for a <= j <= i (and i - j < window when window > 0)
    s_ij = softcap * tanh(s_ij / softcap)                 when softcap > 0 (Gemma 2)
    o_i  = sum_j softmax_j(s_i) v_j

Numerics: inputs are loaded in their dtype, scores, softmax and sums are fp32, the output is rounded once.
"""

import torch


def _segment_starts(cu_seqlens: torch.Tensor, total: int) -> torch.Tensor:
    """(T,) int32: the first token of each token's segment, computed on the device (no host sync).

    Empty segments repeat a boundary; `right=True` picks the last of equal boundaries, the one whose segment holds
    the token.
    """
    tokens = torch.arange(total, device=cu_seqlens.device, dtype=cu_seqlens.dtype)
    segment = torch.searchsorted(cu_seqlens, tokens, right=True) - 1
    return cu_seqlens[segment].to(torch.int32)


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
    starts = _segment_starts(cu_seqlens, total)
    pos = torch.arange(total, device=q.device)
    visible = (pos[None, :] >= starts[:, None]) & (pos[None, :] <= pos[:, None])
    if window > 0:
        visible &= pos[:, None] - pos[None, :] < window
    probs = scores.masked_fill(~visible, float("-inf")).softmax(-1)
    return torch.matmul(probs, vf).transpose(0, 1).to(q.dtype)


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

    Args:
        q: (T, Hq, D) queries; T the total tokens of a micro-batch whose examples are concatenated.
        k, v: (T, Hkv, D) keys and values, Hq % Hkv == 0; q, k, v of one dtype (fp32, bf16 or fp16).
        cu_seqlens: int32 (S + 1,) on q's device: 0, then the cumulative segment lengths, ending at T; empty segments
            (repeated values) are allowed so callers can pad the segment count to a fixed size.
        scale: the score scale (head_dim ** -0.5 for most families).
        softcap: > 0 caps scores as softcap * tanh(scores / softcap) (Gemma 2).
        window: > 0 lets a token see only the last `window` positions of its segment, itself included.

    Returns:
        (T, Hq, D) in q's dtype; q, k and v get gradients.
    """
    return varlen_attention_reference(q, k, v, cu_seqlens, scale, softcap, window)
