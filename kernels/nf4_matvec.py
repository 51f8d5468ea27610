"""NF4 matrix-vector product for decoding: y = x @ W.T (+ b) for 1 to MAX_ROWS rows of x, with W (N, K) in
bitsandbytes' NF4 layout (kernels/nf4.py's docstring), never dequantized to memory.

    y[m, n] = sum_k x[m, k] * NF4[nibble(n, k)] * scale(n, k)    (+ b[n])

Bytes moved: the N*K/2 packed bytes and N*K/blocksize absmax bytes once, x and y; at decode time the packed bytes
are the whole cost, a quarter of a bf16 weight's. So the kernel is a memory stream, and its design is about issuing
as little work per byte as the stream allows.

One kernel, `_nf4_matvec_kernel`: program (i, s) owns BLOCK_N weight rows and the s-th of SPLIT_K ranges of K (then
`kernels.matvec`'s split-K reduction). Each loop step loads a (BLOCK_N, BLOCK_KB) tile of packed bytes,
row-contiguous (16-byte vector loads), as (BLOCK_N, groups, group bytes) where a group is one quantization block (or
the step's part of one), and the step's 2 * BLOCK_KB values of each row of x once, contiguously, for all BLOCK_N
weight rows. Both nibbles of a byte are decoded through the 16-entry code table: `decode="load"` reads it with a
per-nibble load from the 64-byte table (one L1 line for a whole warp: no memory traffic after the first touch),
`decode="gather"` loads the table into registers once per program and picks with `tl.gather` (warp shuffles when a
program is one warp; through shared memory otherwise). The block scale
(kernels.nf4's `_block_scale`: nested absmax code2[q] * absmax2 + offset, or the plain fp32 absmax) is read once per
group, not per byte. Then:

- One row of x (BLOCK_M = 1, batch-1 decoding): x is split into its even and odd elements in registers (element 2i
  meets byte i's high nibble), and the scale is factored out: a group's NF4 values times x are summed in fp32 (one
  FMA a weight), then multiplied by the group's scale once. A weight costs a nibble extract, a table read and an FMA.
- 2..MAX_ROWS rows (BLOCK_M = 16, batched decoding and short prompts): the tile is decoded to weights in x's dtype
  (NF4 value * scale in fp32, rounded once, as dequantize-then-matmul does) and multiplied on the tensor cores
  (`tl.dot` of the rows, padded to 16, with the even and the odd columns). The weights are still read once for all
  rows, where bitsandbytes' matmul_4bit for more than one row writes and reads back a 16-bit copy of the weight.

Numerics: fp32 products and accumulation, rounded once to x's dtype. The one-row kernel does not round each weight
to x's dtype before multiplying (dequantize-then-matmul does): its result is the fp32 product of x and the exact NF4
weights, within one rounding of x's dtype of the reference. Fused multiply-adds are allowed (unlike kernels/nf4.py's
bit-exact dequantization), so a nested scale can differ from bitsandbytes' in its last fp32 bit.

Blocks that straddle rows (K not a multiple of the blocksize, tiny models only) take a slower variant that reads a
scale per byte. The launch shape is an `Nf4MatvecConfig` from `pick_config(N, K, rows)`: a measured table
(`MEASURED`, from `bench/bench_nf4_matvec.py`'s `BEST` line) first, else a rule that is a starting point, not a
measurement. No autograd: decoding runs under `torch.inference_mode()` and NF4 weights are frozen.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from kernels import dispatch, target
from kernels.grouped_mm import _precision  # fp32: exact products ("ieee"), not TF32; the interpreter's bf16 fix
from kernels.matvec import REDUCE_BLOCK, _split_k_reduce_kernel  # the same deterministic split-K sum
from kernels.nf4 import _block_scale, _code, _nested_args, nf4_dequantize_reference
from kernels.varlen_attention import _dot

MAX_ROWS = 16  # rows of x one call takes: one tensor-core tile (BLOCK_M) of the kernel's several-row path
DECODES = ("load", "gather")


@dataclass(frozen=True)
class Nf4MatvecConfig:
    """Launch shape of the NF4 matvec kernels (block sizes are powers of two)."""

    block_n: int  # weight rows per program
    block_kb: int  # packed bytes of each weight row per loop step (2 * block_kb weights)
    split_k: int = 1  # programs sharing one row block, each over 1/split_k of K (then a reduction kernel)
    num_warps: int = 4
    decode: str = "load"  # how a nibble becomes its NF4 value: "load" (64-byte table) or "gather" (registers)
    num_stages: int = 1  # 1: plain loop; > 1: Triton prefetches that many steps ahead (through shared memory)

    def __post_init__(self):
        for name in ("block_n", "block_kb"):
            v = getattr(self, name)
            if v < 1 or v & (v - 1):
                raise ValueError(f"Nf4MatvecConfig.{name}={v}: must be a power of two")
        if min(self.split_k, self.num_warps, self.num_stages) < 1 or self.decode not in DECODES:
            raise ValueError(f"Nf4MatvecConfig: split_k, num_warps, num_stages >= 1, decode in {DECODES}; got {self}")


# (N, K, rows) -> the best config `python bench/bench_nf4_matvec.py` found on the GPU (its last line, `BEST {json}`:
# "N,K,rows": fields -> (N, K, rows): Nf4MatvecConfig(**fields)); rows is 1 for one row of x and 16 for 2..MAX_ROWS.
# Empty until that bench has run on the GPU machine.
MEASURED: dict[tuple[int, int, int], Nf4MatvecConfig] = {}


def _rows_tile(rows: int) -> int:
    return 1 if rows == 1 else 16


def pick_config(n: int, k: int, rows: int = 1) -> Nf4MatvecConfig:
    """The config for a weight of shape (n, k) and `rows` rows of x: the measured one if there is one, else the
    starting rule, chosen without a GPU (not measured). One row: programs of one warp (decode="gather" then picks
    from the table by warp shuffles) reading 32 bytes a thread per step, which the compiled loop turns into the
    fewest instructions per weight (`python bench/nf4_matvec_sass.py`), two steps in flight (num_stages=2) and
    n / 1024 rows a program (2 to 16), so that a 132-SM GPU holds ~16 KB of reads in flight per SM. Several rows:
    32 x 64-byte tiles over 4 warps."""
    measured = MEASURED.get((n, k, _rows_tile(rows)))
    if measured is not None:
        return measured
    row_bytes = max(16, triton.next_power_of_2(k // 2))
    if rows == 1:
        block_n = min(16, max(2, 1 << max(0, (n // 1024).bit_length() - 1)))
        return Nf4MatvecConfig(block_n, min(row_bytes, 1024 // block_n), 1, 1, "gather", 2)
    return Nf4MatvecConfig(32, min(64, row_bytes), 1, 4, "gather")


def nf4_matvec_reference(
    x, packed, absmax, shape, blocksize=64, code=None, absmax2=None, code2=None, offset=0.0, blocksize2=256, bias=None
):
    """F.linear(x, W, bias) with W dequantized to x's dtype: (..., K) -> (..., N) for W of shape (N, K)."""
    w = nf4_dequantize_reference(packed, absmax, shape, x.dtype, blocksize, code, absmax2, code2, offset, blocksize2)
    return F.linear(x, w, None if bias is None else bias.to(x.dtype))


@triton.jit
def _values(byte, code_ptr, table, GATHER: tl.constexpr, SIZE: tl.constexpr):
    """The NF4 values (fp32) of the high and the low nibble of each byte (an int32 tile of SIZE elements)."""
    hi = byte >> 4
    lo = byte & 0xF
    if GATHER:
        hi_v = tl.reshape(tl.gather(table, tl.reshape(hi, (SIZE,)), 0), byte.shape)
        lo_v = tl.reshape(tl.gather(table, tl.reshape(lo, (SIZE,)), 0), byte.shape)
        return hi_v, lo_v
    return tl.load(code_ptr + hi), tl.load(code_ptr + lo)


@triton.jit
def _halves(xw, DTYPE: tl.constexpr, FP32: tl.constexpr):
    """Elements 2j and 2j + 1 of x from its word j (an int32 holding two 16-bit values, low half first; an int64
    holding two fp32 ones): as fp32 when FP32, else in x's dtype DTYPE."""
    if FP32 and DTYPE == tl.bfloat16:  # a bf16 is the high half of the fp32 of the same value: one op each
        even = (xw << 16).to(tl.float32, bitcast=True)
        odd = (xw & -65536).to(tl.float32, bitcast=True)
    elif DTYPE == tl.float32:
        even = xw.to(tl.int32).to(tl.float32, bitcast=True)
        odd = (xw >> 32).to(tl.int32).to(tl.float32, bitcast=True)
    elif FP32:
        even = xw.to(tl.int16).to(DTYPE, bitcast=True).to(tl.float32)
        odd = (xw >> 16).to(tl.int16).to(DTYPE, bitcast=True).to(tl.float32)
    else:
        even = xw.to(tl.int16).to(DTYPE, bitcast=True)
        odd = (xw >> 16).to(tl.int16).to(DTYPE, bitcast=True)
    return even, odd


@triton.jit
def _tile(packed_ptr, absmax_ptr, absmax2_ptr, code2_ptr, code_ptr, table, rows, kb0, N, K, n_blocks, offset,
          BLOCKSIZE: tl.constexpr, BLOCKSIZE2: tl.constexpr, NESTED: tl.constexpr, ALIGNED: tl.constexpr,
          EVEN_K: tl.constexpr, GATHER: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_KB: tl.constexpr,
          GROUP: tl.constexpr):  # fmt: skip
    """One step's (BLOCK_N, groups, GROUP) tile of bytes from byte kb0 of each row: (high nibble values, low nibble
    values, scales), the scales per group (BLOCK_N, groups) when blocks align with rows, else per byte."""
    NG: tl.constexpr = BLOCK_KB // GROUP
    kb_row = K // 2
    rows_ld = tl.minimum(rows, N - 1).to(tl.int64)  # rows past N read row N - 1 again: no row mask on the loads
    j = kb0 + tl.arange(0, NG)[:, None] * GROUP + tl.arange(0, GROUP)[None, :]  # (NG, GROUP) bytes of the row
    ptrs = packed_ptr + rows_ld[:, None, None] * kb_row + j[None, :, :]
    if EVEN_K:
        byte = tl.load(ptrs, eviction_policy="evict_first")  # streamed once: keep x and the tables in cache, not W
    else:
        byte = tl.load(ptrs, mask=(j < kb_row)[None, :, :], other=0, eviction_policy="evict_first")
    hi, lo = _values(byte.to(tl.int32), code_ptr, table, GATHER, BLOCK_N * BLOCK_KB)
    if ALIGNED:  # a group lies in one block: block = row * blocks per row + its first element // BLOCKSIZE
        # unsigned 32-bit: the divisions by powers of two are shifts (block counts are far below 2**32)
        first = (2 * (kb0 + tl.arange(0, NG) * GROUP)).to(tl.uint32)
        row_blk = tl.minimum(rows, N - 1).to(tl.uint32) * (K // BLOCKSIZE)
        blk = row_blk[:, None] + (first // BLOCKSIZE)[None, :]
        scale = _scales(absmax_ptr, absmax2_ptr, code2_ptr, blk, offset, n_blocks, NESTED, BLOCKSIZE2, not EVEN_K)
    else:  # the flat layout: byte i of the weight is in block 2i // BLOCKSIZE
        blk = (rows_ld[:, None, None] * kb_row + j[None, :, :]) // (BLOCKSIZE // 2)
        scale = _scales(absmax_ptr, absmax2_ptr, code2_ptr, blk, offset, n_blocks, NESTED, BLOCKSIZE2, True)
    return hi, lo, scale


@triton.jit
def _scales(absmax_ptr, absmax2_ptr, code2_ptr, blk, offset, n_blocks, NESTED: tl.constexpr,
            BLOCKSIZE2: tl.constexpr, MASKED: tl.constexpr):  # fmt: skip
    """kernels.nf4's `_block_scale` of blocks `blk`; unmasked loads where every block is in the weight."""
    if MASKED:
        scale = _block_scale(absmax_ptr, absmax2_ptr, code2_ptr, blk, offset, blk < n_blocks, NESTED, BLOCKSIZE2)
    elif NESTED:
        q = tl.load(absmax_ptr + blk).to(tl.int32)
        scale = tl.load(code2_ptr + q) * tl.load(absmax2_ptr + blk // BLOCKSIZE2) + offset
    else:
        scale = tl.load(absmax_ptr + blk)
    return scale


@triton.jit
def _product(xw_ptr, packed_ptr, absmax_ptr, absmax2_ptr, code2_ptr, code_ptr, y_ptr, rows, pid_k, M, N, K,
             n_blocks, kb_per_split, offset,
             BLOCKSIZE: tl.constexpr, BLOCKSIZE2: tl.constexpr, NESTED: tl.constexpr, ALIGNED: tl.constexpr,
             EVEN_K: tl.constexpr, GATHER: tl.constexpr, PRECISION: tl.constexpr, BLOCK_M: tl.constexpr,
             BLOCK_N: tl.constexpr, BLOCK_KB: tl.constexpr, GROUP: tl.constexpr, NUM_STAGES: tl.constexpr):  # fmt: skip
    """The (BLOCK_M, BLOCK_N) fp32 products of the rows of x with weight rows `rows` (of the weight at packed_ptr,
    N rows) over the pid_k-th range of K. BLOCK_M == 1: one row of x, FMAs on the CUDA cores; else up to BLOCK_M
    rows through tl.dot (module docstring). y_ptr gives x's dtype only."""
    NG: tl.constexpr = BLOCK_KB // GROUP
    m = tl.arange(0, BLOCK_M)
    # x as words (xw_ptr): word j of a row holds x[2j], the partner of byte j's high nibble, and x[2j + 1], the low
    # one's; so x is loaded in the byte tile's own layout, with no reshuffle. Rows of x past M repeat row M - 1.
    xw_rows = xw_ptr + tl.minimum(m, M - 1)[:, None] * (K // 2)
    table = tl.load(code_ptr + tl.arange(0, 16))  # for decode="gather" (unused, and dropped, otherwise)
    kb_start = pid_k * kb_per_split
    kb_end = tl.minimum(kb_start + kb_per_split, K // 2)
    if BLOCK_M == 1:
        acc = tl.zeros((BLOCK_N, NG), dtype=tl.float32)  # per group: summed over K once, after the loop
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kb0 in tl.range(kb_start, kb_end, BLOCK_KB, num_stages=NUM_STAGES):
        hi, lo, scale = _tile(packed_ptr, absmax_ptr, absmax2_ptr, code2_ptr, code_ptr, table, rows, kb0, N, K,
                              n_blocks, offset, BLOCKSIZE, BLOCKSIZE2, NESTED, ALIGNED, EVEN_K, GATHER, BLOCK_N,
                              BLOCK_KB, GROUP)  # fmt: skip
        if BLOCK_M == 1:
            j = kb0 + tl.arange(0, NG)[:, None] * GROUP + tl.arange(0, GROUP)[None, :]
            if EVEN_K:
                xw = tl.load(xw_ptr + j, eviction_policy="evict_last")
            else:
                xw = tl.load(xw_ptr + j, mask=j < K // 2, other=0, eviction_policy="evict_last")  # zero past K
            x_hi, x_lo = _halves(xw, y_ptr.dtype.element_ty, True)
            part = hi * x_hi[None, :, :] + lo * x_lo[None, :, :]
            if ALIGNED:  # sum each group first, then one multiply by its scale
                acc += tl.sum(part, axis=2) * scale
            else:
                acc += tl.sum(part * scale, axis=2)
        else:
            if ALIGNED:
                scale = scale[:, :, None]
            # the weights in x's dtype, rounded once from fp32 as dequantize-then-matmul rounds them
            w_hi = tl.reshape(hi * scale, (BLOCK_N, BLOCK_KB)).to(y_ptr.dtype.element_ty)
            w_lo = tl.reshape(lo * scale, (BLOCK_N, BLOCK_KB)).to(y_ptr.dtype.element_ty)
            j = kb0 + tl.arange(0, BLOCK_KB)
            if EVEN_K:
                xw = tl.load(xw_rows + j[None, :], eviction_policy="evict_last")
            else:
                xw = tl.load(xw_rows + j[None, :], mask=(j < K // 2)[None, :], other=0, eviction_policy="evict_last")
            x_hi, x_lo = _halves(xw, y_ptr.dtype.element_ty, False)
            acc += _dot(x_hi, tl.trans(w_hi), PRECISION) + _dot(x_lo, tl.trans(w_lo), PRECISION)
    if BLOCK_M == 1:
        out = tl.sum(acc, axis=1)[None, :]
    else:
        out = acc
    return out


@triton.jit
def _store(out, y_ptr, part_ptr, b_ptr, cols, bias_rows, pid_k, M, N,
           HAS_BIAS: tl.constexpr, SPLIT: tl.constexpr, BLOCK_M: tl.constexpr):  # fmt: skip
    """Write `out` (BLOCK_M, BLOCK_N) to columns `cols` of y (M, N) (+ the bias at `bias_rows`), or to the pid_k-th
    split-K part."""
    m = tl.arange(0, BLOCK_M)
    offs = m[:, None] * N + cols[None, :]
    mask = (m < M)[:, None] & (cols < N)[None, :]
    if SPLIT:
        tl.store(part_ptr + pid_k * M * N + offs, out, mask=mask)
    else:
        if HAS_BIAS:
            out += tl.load(b_ptr + bias_rows, mask=cols < N, other=0.0).to(tl.float32)[None, :]
        tl.store(y_ptr + offs, out.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _nf4_matvec_kernel(xw_ptr, packed_ptr, absmax_ptr, absmax2_ptr, code2_ptr, code_ptr, b_ptr, y_ptr, part_ptr,
                       M, N, K, n_blocks, kb_per_split, offset,
                       BLOCKSIZE: tl.constexpr, BLOCKSIZE2: tl.constexpr, NESTED: tl.constexpr,
                       ALIGNED: tl.constexpr, EVEN_K: tl.constexpr, GATHER: tl.constexpr, HAS_BIAS: tl.constexpr,
                       SPLIT: tl.constexpr, PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                       BLOCK_KB: tl.constexpr, GROUP: tl.constexpr, NUM_STAGES: tl.constexpr):  # fmt: skip
    """Program (i, s): weight rows i * BLOCK_N.. over the s-th range of K (`_product`), stored by `_store`."""
    pid_k = tl.program_id(1)
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    out = _product(xw_ptr, packed_ptr, absmax_ptr, absmax2_ptr, code2_ptr, code_ptr, y_ptr, rows, pid_k, M, N, K,
                   n_blocks, kb_per_split, offset, BLOCKSIZE, BLOCKSIZE2, NESTED, ALIGNED, EVEN_K, GATHER, PRECISION,
                   BLOCK_M, BLOCK_N, BLOCK_KB, GROUP, NUM_STAGES)  # fmt: skip
    _store(out, y_ptr, part_ptr, b_ptr, rows, rows, pid_k, M, N, HAS_BIAS, SPLIT, BLOCK_M)


def launch_options(x, k, blocksize, blocksize2, nested, fused_bias, cfg) -> dict:
    """The constexprs and launch options of `_nf4_matvec_kernel` (and kernels/nf4_group_matvec.py's) for a contiguous
    (M, K) x and a weight of K columns; also checks the config fits M rows."""
    m, kb = x.shape[0], k // 2
    if m > 1 and (cfg.block_n < 16 or cfg.block_kb < 16):
        raise ValueError(f"nf4_matvec: {cfg} for {m} rows; the tensor-core kernel needs block_n, block_kb >= 16")
    # groups of bytes that share one scale: whole blocks of a row (or the step's part of one) when blocks align
    aligned = blocksize & (blocksize - 1) == 0 and k % blocksize == 0
    return dict(
        BLOCKSIZE=blocksize,
        BLOCKSIZE2=blocksize2,
        NESTED=nested,
        ALIGNED=aligned,
        EVEN_K=kb % cfg.block_kb == 0,
        GATHER=cfg.decode == "gather",
        HAS_BIAS=fused_bias,
        SPLIT=cfg.split_k > 1,
        BLOCK_N=cfg.block_n,
        BLOCK_KB=cfg.block_kb,
        GROUP=min(blocksize // 2, cfg.block_kb) if aligned else cfg.block_kb,
        PRECISION=_precision(x),
        BLOCK_M=_rows_tile(m),
        NUM_STAGES=cfg.num_stages,
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
        # a product and the sum it feeds become one FMA (Triton 3.10 turns fusion off unless asked)
        **({"enable_fp_fusion": True} if target.of(x) is not None else {}),
    )


def kb_per_split(k: int, cfg: Nf4MatvecConfig) -> int:
    """Packed bytes of a row each split-K program covers: whole loop steps."""
    return triton.cdiv(triton.cdiv(k // 2, cfg.split_k), cfg.block_kb) * cfg.block_kb


def words(x: torch.Tensor) -> torch.Tensor:
    """x (contiguous, even start) as words: x[2j] and x[2j + 1] in word j."""
    return x.view(torch.int32 if x.element_size() == 2 else torch.int64)


def reduce_split_k(part, bias, y, fused_bias: bool) -> None:
    """y = the sum of the split-K parts (split, M, N) (+ bias when fused_bias)."""
    n = y.numel()
    _split_k_reduce_kernel[(triton.cdiv(n, REDUCE_BLOCK),)](
        part, bias if fused_bias else y, y, n, HAS_BIAS=fused_bias, SPLIT_K=part.shape[0], BLOCK=REDUCE_BLOCK
    )


def nf4_matvec_fwd(x, packed, absmax, absmax2, code2, offset, code, shape, blocksize, blocksize2, bias, cfg):
    """Launch on a contiguous (M, K) x (1 <= M <= MAX_ROWS) and the flat packed bytes; returns (M, N), x's dtype."""
    m, (n, k) = x.shape[0], shape
    y = torch.empty(m, n, dtype=x.dtype, device=x.device)
    absmax, absmax2, code2, nested = _nested_args(absmax, absmax2, code2, x.device)
    split = cfg.split_k > 1
    part = torch.empty((cfg.split_k, m, n), dtype=torch.float32, device=x.device) if split else y  # unused without
    fused_bias = bias is not None and not (split and m > 1)  # the reduction adds a bias of one row only
    args = (words(x), packed, absmax, absmax2, code2, _code(code, x.device), bias if fused_bias else y, y, part)
    common = launch_options(x, k, blocksize, blocksize2, nested, fused_bias, cfg)
    grid = (triton.cdiv(n, cfg.block_n), cfg.split_k)
    _nf4_matvec_kernel[grid](
        *args, m, n, k, triton.cdiv(n * k, blocksize), kb_per_split(k, cfg), float(offset), **common
    )
    if split:
        reduce_split_k(part, bias, y, fused_bias)
    if bias is not None and not fused_bias:
        y += bias
    return y


def _aligned(x: torch.Tensor) -> torch.Tensor:
    """x contiguous and starting on a two-element boundary, so that it can be read as words of two elements."""
    x = x.contiguous()
    return x if x.storage_offset() % 2 == 0 else x.clone()


def nf4_matvec(
    x: torch.Tensor,
    packed: torch.Tensor,
    absmax: torch.Tensor,
    shape,
    blocksize: int = 64,
    code: torch.Tensor | None = None,
    absmax2: torch.Tensor | None = None,
    code2: torch.Tensor | None = None,
    offset: float = 0.0,
    blocksize2: int = 256,
    bias: torch.Tensor | None = None,
    config: Nf4MatvecConfig | None = None,
) -> torch.Tensor:
    """y = x @ W.T (+ bias) for 1 to MAX_ROWS rows of x (decoding), with W (N, K) in NF4, never dequantized to memory.

    Args:
        x: (..., K) activations with at most MAX_ROWS rows (e.g. (K,), (1, K), (B, K)), fp32/bf16/fp16.
        packed, absmax, blocksize, code, absmax2, code2, offset, blocksize2: as for `kernels.nf4.nf4_dequantize`.
        shape: (N, K), the weight's shape; K must be even.
        bias: (N,) or None; cast to x's dtype.
        config: the launch shape; None for `pick_config(N, K, rows)`.

    Returns:
        (..., N) in x's dtype; fp32 accumulation.
    """
    n_out, k_in = shape
    rows = x.numel() // max(1, k_in)
    if x.shape[-1] != k_in or not 1 <= rows <= MAX_ROWS:
        raise ValueError(f"nf4_matvec takes 1 to {MAX_ROWS} rows of {k_in} features, got {tuple(x.shape)}")
    if k_in % 2 or blocksize % 2:
        raise ValueError("nf4_matvec: in_features and the blocksize must be even")
    if bias is not None and bias.shape != (n_out,):
        raise ValueError(f"nf4_matvec: bias of shape {tuple(bias.shape)} for {n_out} outputs")
    kernel_dtype = x.dtype in (torch.float32, torch.bfloat16, torch.float16)
    if kernel_dtype and dispatch.use_triton(x, packed):
        b = None if bias is None else bias.to(x.dtype).contiguous()
        cfg = config or pick_config(n_out, k_in, rows)
        y = nf4_matvec_fwd(_aligned(x.reshape(rows, k_in)), packed.reshape(-1), absmax, absmax2, code2, offset,
                           code, shape, blocksize, blocksize2, b, cfg)  # fmt: skip
        return y.view(*x.shape[:-1], n_out)
    return nf4_matvec_reference(x, packed, absmax, shape, blocksize, code, absmax2, code2, offset, blocksize2, bias)
