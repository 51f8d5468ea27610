"""The NF4 matvec kernel that kernels/nf4_matvec.py replaced (kernels/nf4.py before issue 30's rewrite), kept only
so that bench/bench_nf4_matvec.py can time the old kernel and the new one in the same call. Not used by the app.

Per (16 rows x 256 columns) tile it read every packed byte with its own absmax code, code2 entry and absmax2 value
(three scale loads a byte), looked both nibbles up in the code table, multiplied each value by its scale and
rounded it to x's dtype before the product.
"""

import torch
import triton
import triton.language as tl

from kernels.nf4 import _block_scale, _code, _launch_options, _nested_args, _round_to_bf16


@triton.jit
def _nf4_matvec_fwd_kernel(
    x_ptr,
    packed_ptr,
    absmax_ptr,
    absmax2_ptr,
    code2_ptr,
    code_ptr,
    y_ptr,
    N,
    K,
    offset,
    BLOCKSIZE: tl.constexpr,
    BLOCKSIZE2: tl.constexpr,
    NESTED: tl.constexpr,
    ROUND_BF16: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_KB: tl.constexpr,
):
    """y[n] = sum_k W[n, k] x[k], W decoded to x's dtype tile by tile (BLOCK_N rows x 2*BLOCK_KB columns)."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < N
    kb_total = K // 2
    acc = tl.zeros((BLOCK_N,), tl.float32)
    for kb in range(0, kb_total, BLOCK_KB):
        j = kb + tl.arange(0, BLOCK_KB)
        col_mask = j < kb_total
        mask = row_mask[:, None] & col_mask[None, :]
        byte_idx = rows[:, None] * kb_total + j[None, :]
        byte = tl.load(packed_ptr + byte_idx, mask=mask, other=0).to(tl.int32)
        scale = _block_scale(
            absmax_ptr, absmax2_ptr, code2_ptr, (2 * byte_idx) // BLOCKSIZE, offset, mask, NESTED, BLOCKSIZE2
        )
        hi = tl.load(code_ptr + (byte >> 4)) * scale
        lo = tl.load(code_ptr + (byte & 0xF)) * scale
        if ROUND_BF16:
            hi = _round_to_bf16(hi)
            lo = _round_to_bf16(lo)
        # round the weights to x's dtype like the dequantize-then-matmul reference does
        hi = hi.to(x_ptr.dtype.element_ty).to(tl.float32)
        lo = lo.to(x_ptr.dtype.element_ty).to(tl.float32)
        x_even = tl.load(x_ptr + 2 * j, mask=col_mask, other=0.0).to(tl.float32)
        x_odd = tl.load(x_ptr + 2 * j + 1, mask=col_mask, other=0.0).to(tl.float32)
        acc += tl.sum(hi * x_even[None, :] + lo * x_odd[None, :], axis=1)
    tl.store(y_ptr + rows, acc.to(y_ptr.dtype.element_ty), mask=row_mask)


def nf4_matvec_before(x, packed, absmax, absmax2, code2, offset, code, n_out, k_in, blocksize, blocksize2):
    """The old launcher: a contiguous (K,) x and the flat packed bytes -> (N,) in x's dtype."""
    y = torch.empty(n_out, dtype=x.dtype, device=x.device)
    absmax, absmax2, code2, nested = _nested_args(absmax, absmax2, code2, x.device)
    block_n, block_kb = 16, 128
    _nf4_matvec_fwd_kernel[(triton.cdiv(n_out, block_n),)](
        x,
        packed,
        absmax,
        absmax2,
        code2,
        _code(code, x.device),
        y,
        n_out,
        k_in,
        float(offset),
        BLOCKSIZE=blocksize,
        BLOCKSIZE2=blocksize2,
        NESTED=nested,
        ROUND_BF16=x.dtype == torch.bfloat16,
        BLOCK_N=block_n,
        BLOCK_KB=block_kb,
        num_warps=4,
        **_launch_options(x.device),
    )
    return y
