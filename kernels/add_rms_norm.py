"""Residual add and RMSNorm in one pass, for decoding (forward only), rounded as transformers' Llama/Qwen modules round.

    h = residual + x                              (rounded to x's dtype: the new residual stream)
    n = h * rstd,  rstd = 1 / sqrt(mean(h^2) + eps)   (fp32, then rounded to x's dtype)
    y = w * n                                     (computed in fp32, rounded to x's dtype)

Without a residual (the first layer) h is x itself. The two roundings of y are transformers' (`weight *
hidden.to(input_dtype)`); kernels/rms_norm.py rounds once instead, which is as accurate but not bit-equal, and a
decoder that is compared token for token with transformers wants the same rounding. In fp32 both are the same ops.

One program per row: it reads x and the residual once and writes h and y (4 * N * b bytes per row, b bytes per
element), where the eager pair is an add kernel plus ~8 norm kernels, each a round trip through memory. At batch 1
the time is all launch and latency (~2 us per kernel on an H100), so one kernel in place of nine is the point.

No backward: decoding only.
"""

import torch
import triton
import triton.language as tl

from kernels import dispatch
from kernels.nf4 import _round_to_bf16

MAX_HIDDEN = 32768


def add_rms_norm_reference(
    x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(y, h): h = residual + x in x's dtype (x itself without a residual), y = w * (h * rstd) as transformers."""
    h = x if residual is None else residual + x
    hf = h.float()
    n = (hf * torch.rsqrt(hf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
    return (weight.float() * n.float()).to(x.dtype), h


@triton.jit
def _r(x, like_ptr, BF16: tl.constexpr):
    """Round fp32 x to the dtype `like_ptr` points to and back (bf16 by hand, to nearest even: Triton's CPU
    interpreter truncates; on the GPU it is the same bits as the conversion)."""
    if BF16:
        return _round_to_bf16(x)
    else:
        return x.to(like_ptr.dtype.element_ty).to(tl.float32)


@triton.jit
def _add_rms_norm_kernel(
    x_ptr,
    r_ptr,
    w_ptr,
    y_ptr,
    h_ptr,
    x_stride,
    r_stride,
    y_stride,
    h_stride,
    N,
    eps,
    HAS_RESIDUAL: tl.constexpr,
    BF16: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_N)
    mask = cols < N
    dtype = y_ptr.dtype.element_ty
    h = tl.load(x_ptr + row * x_stride + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        h = _r(h + tl.load(r_ptr + row * r_stride + cols, mask=mask, other=0.0).to(tl.float32), y_ptr, BF16)
        tl.store(h_ptr + row * h_stride + cols, h.to(dtype), mask=mask)
    rstd = 1.0 / tl.sqrt(tl.sum(h * h, axis=0) / N + eps)
    n = _r(h * rstd, y_ptr, BF16)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + row * y_stride + cols, _r(w * n, y_ptr, BF16).to(dtype), mask=mask)


def add_rms_norm_fwd(x2d, r2d, weight, eps):
    m, n = x2d.shape
    y = torch.empty_like(x2d)
    h = torch.empty_like(x2d) if r2d is not None else x2d
    block = triton.next_power_of_2(n)
    _add_rms_norm_kernel[(m,)](
        x2d,
        r2d if r2d is not None else x2d,
        weight,
        y,
        h,
        x2d.stride(0),
        r2d.stride(0) if r2d is not None else 0,
        y.stride(0),
        h.stride(0),
        n,
        eps,
        HAS_RESIDUAL=r2d is not None,
        BF16=x2d.dtype == torch.bfloat16,
        BLOCK_N=block,
        num_warps=min(max(block // 512, 1), 16),
    )
    return y, h


def add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor]:
    """The residual add and the RMSNorm that follows it in a Llama-like layer.

    Args:
        x: (M, N) what the sub-layer adds to the residual stream (or the embeddings, with `residual` None).
        residual: (M, N) the residual stream so far, same dtype, or None for the first layer.
        weight: (N,) the norm's scale.
        eps: added to the mean square.

    Returns:
        (y, h): the normalized rows, and the new residual stream h = residual + x (x itself without a residual).
    """
    if x.dim() != 2 or x.shape[-1] > MAX_HIDDEN:
        raise ValueError(f"add_rms_norm takes (rows, hidden <= {MAX_HIDDEN}), got {tuple(x.shape)}")
    if dispatch.use_triton(x, weight):
        x2d = x if x.stride(-1) == 1 else x.contiguous()
        r2d = None if residual is None else (residual if residual.stride(-1) == 1 else residual.contiguous())
        return add_rms_norm_fwd(x2d, r2d, weight, eps)
    return add_rms_norm_reference(x, residual, weight, eps)
