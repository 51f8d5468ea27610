"""Grouped matrix product for mixture-of-experts layers: rows sorted by group, each group times its own matrix.

    y[s_g:e_g] = x[s_g:e_g] @ w[g]        x [M, K] (rows of group g are s_g..e_g-1), w [G, K, N], y [M, N]

`offsets` [G] (int32) holds each group's end row e_g, as torch._grouped_mm's `offs`; empty groups are allowed. w may
be any strided view, so an expert stack stored [G, N, K] (nn.Linear orientation) is passed as w.transpose(1, 2)
without a copy. Backward:

    dx[s_g:e_g] = dy[s_g:e_g] @ w[g]^T    (the same kernel on w's transposed view)
    dw[g]       = x[s_g:e_g]^T @ dy[s_g:e_g]

Tiling: the forward launches one program per (row tile of BLOCK_M rows inside one group, column tile); the tile ->
(group, first row) table is built on the device from `offsets` for an upper bound of cdiv(M, BLOCK_M) + G tiles, so no
host sync is needed; programs past the last tile return at once. dw runs one program per (group, K tile, N tile) and
loops over the group's rows. Numerics: inputs in their dtype, fp32 accumulation (IEEE fp32 products for fp32 inputs,
no TF32), one rounding to the output dtype.

Bytes moved: forward reads x once per column tile and w once per row tile and writes y; a per-expert loop of
F.linear moves the same bytes but launches 2G kernels and gathers each group's rows into a new tensor first.

`grouped_mm` hands bf16 products on compute 9.0+ to PyTorch's CUTLASS grouped product (torch._grouped_mm; `cutlass`
says when), measured faster there; this kernel runs everywhere else (fp16, fp32, older cards, the CPU's interpreter).
"""

import functools
import os
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from kernels import dispatch, target
from kernels.varlen_attention import _dot  # tl.dot with the interpreter's bf16 workaround


class Tiles(NamedTuple):
    """A launch's tile sizes and pipelining (bench/bench_grouped_mm.py times alternatives on the GPU)."""

    m: int = 64
    n: int = 64
    k: int = 32
    warps: int = 4
    stages: int = 3


TILES = Tiles()
# The forward's tiles for 16-bit products with K >= 64 and N >= 128, by the card's shared memory per block
# (kernels.target): on the H100, 128x256x64 was the fastest of eight tile sizes on every Qwen3-30B-A3B expert product,
# 2.5-3.4x as fast as TILES, 64x128x64 1.9-2.5x and 64x128x32 (4 stages) 1.5-1.6x (bench/README.md, "The MoE step
# with CUTLASS and 16-bit expert copies"). A card gets the largest that its shared memory holds; tests/kernels/
# test_compile_targets.py compiles them for each card, but only the H100 timed them. Thin products (the LoRA
# factors'), fp32 and the interpreter keep TILES.
WIDE_TILES = (  # (least shared memory per block, tiles)
    (160 * 1024, Tiles(128, 256, 64, 8, 3)),  # A100, H100, H200 (the compiler: 98,304 and 147,456 bytes)
    (96 * 1024, Tiles(64, 128, 64, 4, 3)),  # RTX 30xx / 40xx, L4
    (0, Tiles(64, 128, 32, 4, 4)),  # T4
)


def forward_tiles(x: torch.Tensor, w: torch.Tensor) -> Tiles:
    """The forward launch's tiles for x @ w[g] on x's device (see WIDE_TILES)."""
    gpu = target.of(x)
    if gpu is None or x.dtype == torch.float32 or w.shape[1] < 64 or w.shape[2] < 128:
        return TILES
    return next(tiles for least, tiles in WIDE_TILES if gpu.shared_memory >= least)


def grouped_mm_reference(x: torch.Tensor, w: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Pure-torch y[s_g:e_g] = x[s_g:e_g] @ w[g] group by group, in fp32, rounded once to x's dtype."""
    y = x.new_zeros(x.shape[0], w.shape[2])
    start = 0
    for g, end in enumerate(offsets.tolist()):
        if end > start:
            y[start:end] = (x[start:end].float() @ w[g].float()).to(x.dtype)
        start = end
    return y


@triton.jit
def _grouped_mm_fwd_kernel(
    x_ptr, w_ptr, y_ptr, tile_group_ptr, tile_row_ptr, ends_ptr,
    N, K, sxm, sxk, swg, swk, swn, sym, syn,
    PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    g = tl.load(tile_group_ptr + tl.program_id(0))
    if g >= 0:
        row0 = tl.load(tile_row_ptr + tl.program_id(0))
        end = tl.load(ends_ptr + g)
        rows = (row0 + tl.arange(0, BLOCK_M)).to(tl.int64)
        cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        mask_m, mask_n = rows < end, cols < N
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        w_base = w_ptr + g.to(tl.int64) * swg
        for k0 in range(0, K, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            mask_k = ks < K
            a_mask, b_mask = mask_m[:, None] & mask_k[None, :], mask_k[:, None] & mask_n[None, :]
            a = tl.load(x_ptr + rows[:, None] * sxm + ks[None, :] * sxk, mask=a_mask, other=0.0)
            b = tl.load(w_base + ks[:, None] * swk + cols[None, :] * swn, mask=b_mask, other=0.0)
            acc += _dot(a, b, PRECISION)
        out = y_ptr + rows[:, None] * sym + cols[None, :] * syn
        tl.store(out, acc.to(y_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


@triton.jit
def _grouped_mm_dw_kernel(
    x_ptr, dy_ptr, dw_ptr, ends_ptr, K, N, sxm, sxk, sdm, sdn,
    PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    g = tl.program_id(0)
    end = tl.load(ends_ptr + g)
    start = tl.load(ends_ptr + g - 1, mask=g > 0, other=0)
    ks = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    cols = tl.program_id(2) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_k, mask_n = ks < K, cols < N
    acc = tl.zeros((BLOCK_K, BLOCK_N), dtype=tl.float32)
    for m0 in range(start, end, BLOCK_M):
        rows = (m0 + tl.arange(0, BLOCK_M)).to(tl.int64)
        mask_m = rows < end
        a_mask, b_mask = mask_k[:, None] & mask_m[None, :], mask_m[:, None] & mask_n[None, :]
        a = tl.load(x_ptr + rows[None, :] * sxm + ks[:, None] * sxk, mask=a_mask, other=0.0)
        b = tl.load(dy_ptr + rows[:, None] * sdm + cols[None, :] * sdn, mask=b_mask, other=0.0)
        acc += _dot(a, b, PRECISION)
    out = dw_ptr + g.to(tl.int64) * K * N + ks[:, None] * N + cols[None, :]
    tl.store(out, acc.to(dw_ptr.dtype.element_ty), mask=mask_k[:, None] & mask_n[None, :])


def _precision(x: torch.Tensor) -> str:
    return target.dot_precision(x)


def _tiles(offsets: torch.Tensor, m: int, block_m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(group, first row) of every block_m row tile, -1 past the last one, for cdiv(m, block_m) + G tiles."""
    ends = offsets.long()
    starts = torch.cat([ends.new_zeros(1), ends[:-1]])
    per_group = (ends - starts + block_m - 1) // block_m
    first_tile = torch.cumsum(per_group, 0) - per_group
    n_tiles = triton.cdiv(m, block_m) + offsets.numel()
    t = torch.arange(n_tiles, device=offsets.device)
    group = torch.searchsorted(first_tile + per_group, t, right=True)
    valid = group < offsets.numel()
    g = group.clamp(max=offsets.numel() - 1)
    row = starts[g] + (t - first_tile[g]) * block_m
    return torch.where(valid, g, -1).to(torch.int32), row.to(torch.int32)


def grouped_mm_fwd(x: torch.Tensor, w: torch.Tensor, offsets: torch.Tensor, out=None, tiles=None) -> torch.Tensor:
    """The forward launch; `out`: an [M, N] tensor (any row-major strides) to write y into; `tiles`: forward_tiles'
    unless given."""
    m, k = x.shape
    n = w.shape[2]
    tiles = tiles or forward_tiles(x, w)
    y = torch.empty(m, n, dtype=x.dtype, device=x.device) if out is None else out
    if m == 0:
        return y
    tile_group, tile_row = _tiles(offsets, m, tiles.m)
    grid = (tile_group.numel(), triton.cdiv(n, tiles.n))
    _grouped_mm_fwd_kernel[grid](
        x, w, y, tile_group, tile_row, offsets, n, k, *x.stride(), *w.stride(), *y.stride(),
        PRECISION=_precision(x), BLOCK_M=tiles.m, BLOCK_N=tiles.n, BLOCK_K=tiles.k,
        num_warps=tiles.warps, num_stages=tiles.stages,
    )  # fmt: skip
    return y


def grouped_mm_dw(x, dy, offsets: torch.Tensor, dtype: torch.dtype, tiles=TILES) -> torch.Tensor:
    k, n, groups = x.shape[1], dy.shape[1], offsets.numel()
    dw = torch.empty(groups, k, n, dtype=dtype, device=x.device)
    grid = (groups, triton.cdiv(k, tiles.k), triton.cdiv(n, tiles.n))
    _grouped_mm_dw_kernel[grid](
        x, dy, dw, offsets, k, n, *x.stride(), *dy.stride(),
        PRECISION=_precision(x), BLOCK_M=tiles.m, BLOCK_N=tiles.n, BLOCK_K=tiles.k,
        num_warps=tiles.warps, num_stages=tiles.stages,
    )  # fmt: skip
    return dw


class GroupedMMFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, offsets):
        ctx.save_for_backward(x, w, offsets)
        return grouped_mm_fwd(x, w, offsets)

    @staticmethod
    def backward(ctx, dy):
        x, w, offsets = ctx.saved_tensors
        dy = dy.contiguous()
        dx = grouped_mm_fwd(dy, w.transpose(1, 2), offsets) if ctx.needs_input_grad[0] else None
        dw = grouped_mm_dw(x, dy, offsets, w.dtype) if ctx.needs_input_grad[1] else None
        return dx, dw, None


class ContiguousGradient(torch.autograd.Function):
    """The identity, whose backward hands on a contiguous gradient (torch._grouped_mm's backward refuses others)."""

    @staticmethod
    def forward(ctx, y):
        return y.view_as(y)

    @staticmethod
    def backward(ctx, dy):
        return dy.contiguous()


def _dense_matrices(t: torch.Tensor) -> bool:
    """Whether each matrix of t (its last two dims) is row- or column-major with 16-byte aligned rows, as
    torch._grouped_mm requires (a PEFT factor's permuted view is neither)."""
    rows, cols = t.stride()[-2:]
    if cols == 1 and rows >= max(1, t.shape[-1]):
        lead = rows
    elif rows == 1 and cols >= max(1, t.shape[-2]):
        lead = cols
    else:
        return False
    return lead * t.element_size() % 16 == 0 and t.data_ptr() % 16 == 0


@functools.cache
def _hopper_or_newer(device: torch.device) -> bool:
    return torch.cuda.get_device_capability(device) >= (9, 0)


def _cutlass_wanted(x: torch.Tensor, w: torch.Tensor) -> bool:
    """Everything torch._grouped_mm needs but the matrices' layout: a CUDA GPU of compute 9.0 or newer, bf16, K and N
    multiples of 8, and not turned off (TUNESMITH_GROUPED_MM=triton runs the Triton kernel everywhere)."""
    return (
        x.is_cuda
        and x.dtype == w.dtype == torch.bfloat16
        and x.shape[1] % 8 == 0
        and w.shape[2] % 8 == 0
        and hasattr(torch, "_grouped_mm")
        and dispatch.backend() == "triton"  # the fast path's (a forced reference stays the reference)
        and os.environ.get("TUNESMITH_GROUPED_MM", "auto") != "triton"
        and _hopper_or_newer(x.device)
    )


def cutlass(x: torch.Tensor, w: torch.Tensor) -> bool:
    """Whether PyTorch's CUTLASS grouped product (torch._grouped_mm) runs x @ w[g] instead of the Triton kernel:
    where it can (`_cutlass_wanted`, and matrices it reads). On the H100 it took 0.64-0.70x the Triton kernel's time
    at the best of eight tile sizes on Qwen3-30B-A3B's expert products, and 0.2x on row-major LoRA factors
    (bench/README.md, "The MoE step with CUTLASS and 16-bit expert copies"); the step with it ran 28,492 tokens/s
    against 21,787."""
    return _cutlass_wanted(x, w) and _dense_matrices(x) and _dense_matrices(w)


def grouped_mm(x: torch.Tensor, w: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """y[s_g:e_g] = x[s_g:e_g] @ w[g] for rows sorted by group, differentiable in x and w.

    Args:
        x: [M, K] rows grouped by expert, fp32/bf16/fp16.
        w: [G, K, N] in x's dtype, any strides (an [G, N, K] stack as w.transpose(1, 2)).
        offsets: [G] int32, the end row of each group (non-decreasing, the last one M).
    """
    if x.dim() != 2 or w.dim() != 3 or x.shape[1] != w.shape[1] or offsets.numel() != w.shape[0]:
        raise ValueError(f"x {tuple(x.shape)}, w {tuple(w.shape)}, offsets {tuple(offsets.shape)} do not fit")
    if x.dtype != w.dtype:
        raise ValueError(f"x is {x.dtype} and w is {w.dtype}")
    wanted = _cutlass_wanted(x, w)
    if wanted and not _dense_matrices(w):
        w = w.contiguous()  # a PEFT factor's permuted view: a copy of the small factor (the product reads it anyway)
    if wanted and _dense_matrices(x) and _dense_matrices(w):  # differentiable in both; see ContiguousGradient
        return ContiguousGradient.apply(torch._grouped_mm(x, w, offs=offsets.to(torch.int32)))
    if dispatch.use_triton(x, w):
        return GroupedMMFunction.apply(x, w, offsets.to(torch.int32))
    return grouped_mm_reference(x, w, offsets)
