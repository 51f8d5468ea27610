"""RMSNorm, forward and backward, one row per program.

    rstd = 1 / sqrt(mean(x^2) + eps)            (per row, fp32)
    y    = x * rstd * w          Llama / Qwen / Mistral
    y    = x * rstd * (1 + w)    Gemma (`offset=1.0`)

Numerics: x and w are loaded in their own dtype and everything is computed in fp32; y is rounded once to x's dtype.
(HF Llama rounds `x * rstd` to the input dtype before multiplying by w; this differs from that by at most one ulp of
the input dtype. Gemma's module multiplies in fp32 like this kernel.) The forward saves rstd (fp32, one per row), not
the normalized x, so the backward recomputes x_hat = x * rstd:

    g  = dy * (w + offset)
    dx = rstd * (g - x_hat * mean(g * x_hat))
    dw = sum over rows of dy * x_hat

dw is reduced in two stages: each backward program walks a strided set of rows and keeps an fp32 partial sum
(one row of a (programs, N) buffer), which torch then sums. Only when the weight is trained (full fine-tuning): a
LoRA's norms are frozen, and then the backward runs one row per program like the forward, with no partial sums. In
a LoRA step the dw pass was waste, and its few programs (4 per SM) each looping over many rows were slow on Qwen3's
per-head q/k norms (N = 128): on the H100 the backward took 39 us a call, 5.6 ms of a 104.5 ms padding-free qwen3_4b
QLoRA step of 2,432 tokens, and summing the partials another 1.7 ms (`python3 bench/profile_step.py --impl project
--arch qwen3_4b --mode qlora --varlen --bs 8 --seq 280`, 2026-12-06, before this change).

Bytes moved (N = hidden, M = rows, b = bytes per element): forward reads M*N*b and writes M*N*b (+4M for rstd); the
backward reads x and dy and writes dx (3*M*N*b) plus the small dw partials. The reference materializes several fp32
temporaries of size M*N each.
"""

import torch
import triton
import triton.language as tl

from kernels import dispatch

MAX_HIDDEN = 16384


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6, offset: float = 0.0) -> torch.Tensor:
    """Pure-torch RMSNorm with the numerics of the kernel: fp32 throughout, one rounding to x's dtype."""
    xf = x.float()
    rstd = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return (xf * rstd * (weight.float() + offset)).to(x.dtype)


@triton.jit
def _rms_norm_fwd_kernel(x_ptr, w_ptr, y_ptr, rstd_ptr, x_stride, y_stride, N, eps, offset, BLOCK_N: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_N)
    mask = cols < N
    x = tl.load(x_ptr + row * x_stride + cols, mask=mask, other=0.0).to(tl.float32)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32) + offset
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / N + eps)
    tl.store(rstd_ptr + row, rstd)
    tl.store(y_ptr + row * y_stride + cols, (x * rstd * w).to(y_ptr.dtype.element_ty), mask=mask)


# Not specialized on the row counts: they follow the micro-batch's token count, so each new bucket would otherwise
# compile another variant (rows_per_program == 1, a multiple of 16, or neither), and engine.patching.warmup's compile
# would not be the run's; both only bound loops and rows, where the specialization gains nothing.
@triton.jit(do_not_specialize=["M", "rows_per_program"])
def _rms_norm_bwd_kernel(
    dy_ptr,
    x_ptr,
    w_ptr,
    rstd_ptr,
    dx_ptr,
    dw_partial_ptr,
    dy_stride,
    x_stride,
    dx_stride,
    M,
    N,
    offset,
    rows_per_program,
    BLOCK_N: tl.constexpr,
    COMPUTE_DW: tl.constexpr,
):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_N)
    mask = cols < N
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32) + offset
    dw = tl.zeros((BLOCK_N,), dtype=tl.float32)
    row_start = pid * rows_per_program
    for i in range(0, rows_per_program):
        row = (row_start + i).to(tl.int64)
        if row < M:
            x = tl.load(x_ptr + row * x_stride + cols, mask=mask, other=0.0).to(tl.float32)
            dy = tl.load(dy_ptr + row * dy_stride + cols, mask=mask, other=0.0).to(tl.float32)
            rstd = tl.load(rstd_ptr + row)
            x_hat = x * rstd
            g = dy * w
            dx = rstd * (g - x_hat * (tl.sum(g * x_hat, axis=0) / N))
            tl.store(dx_ptr + row * dx_stride + cols, dx.to(dx_ptr.dtype.element_ty), mask=mask)
            if COMPUTE_DW:
                dw += dy * x_hat
    if COMPUTE_DW:
        tl.store(dw_partial_ptr + pid * N + cols, dw, mask=mask)


def _block_and_warps(n: int) -> tuple[int, int]:
    block = triton.next_power_of_2(n)
    return block, min(max(block // 256, 1), 16)


def rms_norm_fwd(x2d: torch.Tensor, weight: torch.Tensor, eps: float, offset: float):
    """Launch the forward on a (M, N) row-contiguous view; returns (y, rstd)."""
    m, n = x2d.shape
    if n > MAX_HIDDEN:
        raise ValueError(f"rms_norm: hidden size {n} exceeds {MAX_HIDDEN}")
    y = torch.empty_like(x2d)
    rstd = torch.empty(m, dtype=torch.float32, device=x2d.device)
    block, warps = _block_and_warps(n)
    _rms_norm_fwd_kernel[(m,)](
        x2d, weight, y, rstd, x2d.stride(0), y.stride(0), n, eps, offset, BLOCK_N=block, num_warps=warps
    )
    return y, rstd


def rms_norm_bwd(
    dy2d: torch.Tensor, x2d: torch.Tensor, weight: torch.Tensor, rstd: torch.Tensor, offset: float, need_dw=True
):
    """Launch the backward; returns (dx, dw) with dw in the weight's dtype, None without `need_dw`."""
    m, n = x2d.shape
    dy2d = dy2d.contiguous()
    dx = torch.empty_like(x2d)
    if not need_dw:
        programs = m  # one row each, as the forward
    elif x2d.is_cuda:
        programs = min(m, torch.cuda.get_device_properties(x2d.device).multi_processor_count * 4)
    else:
        programs = min(m, 4)
    programs = max(programs, 1)
    rows_per_program = triton.cdiv(m, programs)
    dw_partial = torch.empty(programs if need_dw else 1, n, dtype=torch.float32, device=x2d.device)
    block, warps = _block_and_warps(n)
    _rms_norm_bwd_kernel[(programs,)](
        dy2d,
        x2d,
        weight,
        rstd,
        dx,
        dw_partial,
        dy2d.stride(0),
        x2d.stride(0),
        dx.stride(0),
        m,
        n,
        offset,
        rows_per_program,
        BLOCK_N=block,
        COMPUTE_DW=need_dw,
        num_warps=warps,
    )
    return dx, dw_partial.sum(0).to(weight.dtype) if need_dw else None


class RMSNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps, offset):
        shape = x.shape
        x2d = x.reshape(-1, shape[-1]).contiguous()
        y, rstd = rms_norm_fwd(x2d, weight.contiguous(), eps, offset)
        ctx.save_for_backward(x2d, weight, rstd)
        ctx.offset = offset
        return y.view(shape)

    @staticmethod
    def backward(ctx, dy):
        x2d, weight, rstd = ctx.saved_tensors
        need_dw = ctx.needs_input_grad[1]
        dx, dw = rms_norm_bwd(dy.reshape(x2d.shape), x2d, weight.contiguous(), rstd, ctx.offset, need_dw)
        return dx.view(dy.shape), dw, None, None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6, offset: float = 0.0) -> torch.Tensor:
    """RMSNorm over the last dimension.

    Args:
        x: (..., N) activations, fp32/bf16/fp16, N <= 16384.
        weight: (N,) scale.
        eps: added to the mean square.
        offset: 0.0 for Llama/Qwen/Mistral (`* w`), 1.0 for Gemma (`* (1 + w)`).

    Returns:
        Tensor shaped and typed like x.
    """
    if dispatch.use_triton(x, weight):
        return RMSNormFunction.apply(x, weight, eps, offset)
    return rms_norm_reference(x, weight, eps, offset)
