"""NF4 dequantization (bitsandbytes layout, double-quantized absmax); the fused NF4 matvec is kernels/nf4_matvec.py.

Layout, as `bitsandbytes.functional.quantize_4bit(w, quant_type="nf4", compress_statistics=True)` writes it, for a
weight of n elements in flat row-major order:

    packed   uint8 (n/2,)         byte i holds element 2i in its high nibble and 2i+1 in its low nibble
    absmax   uint8 (n/blocksize)  8-bit code of each block's absmax (fp32 when not nested)
    absmax2  fp32 (n/blocksize/256), code2 fp32 (256,), offset (float): the second-level quantization state

    scale_b = code2[absmax[b]] * absmax2[b // 256] + offset          (fp32 multiply, then fp32 add: no FMA)
    w[e]    = NF4[nibble(e)] * scale_{e // blocksize}                (fp32), rounded once to the output dtype

Bit-exact with `bitsandbytes.functional.dequantize_4bit`: same operations in the same order and precision. On CUDA
the kernels are launched with `enable_fp_fusion=False` so the compiler does not contract the absmax multiply-add
into an FMA (which bitsandbytes does not do). bf16 output is rounded to nearest even by hand (`_round_to_bf16`),
because Triton's CPU interpreter truncates fp32 -> bf16; on the GPU the hand rounding gives the same bits as the
hardware conversion.

Bytes moved by the dequantization: n/2 + n/blocksize read, n * b written (b = 2 for bf16): ~4.5 bytes per weight.

No autograd: NF4 weights are frozen; a training step dequantizes into a scratch buffer and lets torch differentiate
the matmul with respect to the activations.
"""

import torch
import triton
import triton.language as tl

from kernels import dispatch, target

NF4_CODE = (
    -1.0,
    -0.6961928009986877,
    -0.5250730514526367,
    -0.39491748809814453,
    -0.28444138169288635,
    -0.18477343022823334,
    -0.09105003625154495,
    0.0,
    0.07958029955625534,
    0.16093020141124725,
    0.24611230194568634,
    0.33791524171829224,
    0.44070982933044434,
    0.5626170039176941,
    0.7229568362236023,
    1.0,
)
BLOCK_BYTES = 1024  # packed bytes per program (32 quantization blocks of 64)


def _code(code: torch.Tensor | None, device) -> torch.Tensor:
    if code is None:
        return torch.tensor(NF4_CODE, dtype=torch.float32, device=device)
    return code.to(device=device, dtype=torch.float32).contiguous()


def nf4_scales_reference(absmax, absmax2=None, code2=None, offset=0.0, blocksize2=256) -> torch.Tensor:
    """Per-block fp32 scales: absmax itself, or the dequantized nested absmax (code2[q] * absmax2, then + offset)."""
    if absmax2 is None:
        return absmax.float()
    n = absmax.numel()
    per_block2 = absmax2.float().repeat_interleave(blocksize2)[:n]
    return code2.float()[absmax.long()] * per_block2 + offset


def nf4_dequantize_reference(
    packed, absmax, shape, dtype, blocksize=64, code=None, absmax2=None, code2=None, offset=0.0, blocksize2=256
) -> torch.Tensor:
    """Pure-torch NF4 dequantization in bitsandbytes' order of operations."""
    flat = packed.reshape(-1)
    nib = torch.stack([flat >> 4, flat & 0xF], dim=1).reshape(-1).long()
    n = 1
    for s in shape:
        n *= s
    values = _code(code, packed.device)[nib][:n]
    scales = nf4_scales_reference(absmax, absmax2, code2, offset, blocksize2)
    return (values * scales.repeat_interleave(blocksize)[:n]).reshape(shape).to(dtype)


@triton.jit
def _round_to_bf16(x):
    """fp32 -> the nearest-even bf16 value, still as fp32 (so the final cast is exact whichever way it rounds)."""
    bits = x.to(tl.uint32, bitcast=True)
    bits = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16  # shifts, not a mask: 0xFFFF0000 is no int32
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _block_scale(absmax_ptr, absmax2_ptr, code2_ptr, blk, offset, mask, NESTED: tl.constexpr, BLOCKSIZE2: tl.constexpr):
    if NESTED:
        q = tl.load(absmax_ptr + blk, mask=mask, other=0).to(tl.int32)
        a = tl.load(code2_ptr + q, mask=mask, other=0.0) * tl.load(
            absmax2_ptr + blk // BLOCKSIZE2, mask=mask, other=0.0
        )
        return a + offset
    else:
        return tl.load(absmax_ptr + blk, mask=mask, other=0.0)


@triton.jit
def _nf4_dequant_fwd_kernel(
    packed_ptr,
    absmax_ptr,
    absmax2_ptr,
    code2_ptr,
    code_ptr,
    out_ptr,
    n_bytes,
    offset,
    BLOCKSIZE: tl.constexpr,
    BLOCKSIZE2: tl.constexpr,
    NESTED: tl.constexpr,
    ROUND_BF16: tl.constexpr,
    BLOCKS: tl.constexpr,
):
    """BLOCKS quantization blocks per program, as a (BLOCKS, BLOCKSIZE / 2) tile of bytes: one scale per block row,
    and each row's high and low nibbles interleaved into one contiguous store."""
    HALF: tl.constexpr = BLOCKSIZE // 2
    blk = tl.program_id(0).to(tl.int64) * BLOCKS + tl.arange(0, BLOCKS)
    i = blk[:, None] * HALF + tl.arange(0, HALF)[None, :]
    mask = i < n_bytes
    byte = tl.load(packed_ptr + i, mask=mask, other=0).to(tl.int32)
    scale = _block_scale(absmax_ptr, absmax2_ptr, code2_ptr, blk, offset, blk * HALF < n_bytes, NESTED, BLOCKSIZE2)
    hi = tl.load(code_ptr + (byte >> 4)) * scale[:, None]
    lo = tl.load(code_ptr + (byte & 0xF)) * scale[:, None]
    if ROUND_BF16:
        hi = _round_to_bf16(hi)
        lo = _round_to_bf16(lo)
    pairs = tl.reshape(tl.join(hi, lo), (BLOCKS, BLOCKSIZE))  # element 2j is byte j's high nibble, 2j + 1 its low
    o = blk[:, None] * BLOCKSIZE + tl.arange(0, BLOCKSIZE)[None, :]
    tl.store(out_ptr + o, pairs.to(out_ptr.dtype.element_ty), mask=o < 2 * n_bytes)


def _nested_args(absmax, absmax2, code2, device):
    """Kernel pointer arguments for the absmax state (dummies stand in for the second level when not nested)."""
    if absmax2 is None:
        return absmax.float().contiguous(), absmax, absmax, False  # unused pointers when not nested
    return absmax.contiguous(), absmax2.float().contiguous(), code2.float().contiguous(), True


def _launch_options(t: torch.Tensor) -> dict:
    return {"enable_fp_fusion": False} if target.of(t) is not None else {}


def nf4_dequantize_fwd(packed, absmax, absmax2, code2, offset, code, blocksize, blocksize2, out):
    n_bytes = packed.numel()
    absmax, absmax2, code2, nested = _nested_args(absmax, absmax2, code2, packed.device)
    blocks = max(1, BLOCK_BYTES // (blocksize // 2))  # quantization blocks per program
    _nf4_dequant_fwd_kernel[(triton.cdiv(n_bytes, blocks * (blocksize // 2)),)](
        packed,
        absmax,
        absmax2,
        code2,
        _code(code, packed.device),
        out,
        n_bytes,
        float(offset),
        BLOCKSIZE=blocksize,
        BLOCKSIZE2=blocksize2,
        NESTED=nested,
        ROUND_BF16=out.dtype == torch.bfloat16,
        BLOCKS=blocks,
        num_warps=4,
        **_launch_options(packed),
    )
    return out


def nf4_dequantize(
    packed: torch.Tensor,
    absmax: torch.Tensor,
    shape,
    dtype: torch.dtype,
    blocksize: int = 64,
    code: torch.Tensor | None = None,
    absmax2: torch.Tensor | None = None,
    code2: torch.Tensor | None = None,
    offset: float = 0.0,
    blocksize2: int = 256,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Dequantize a bitsandbytes NF4 weight, bit-exact with bitsandbytes.functional.dequantize_4bit.

    Args:
        packed: uint8 packed nibbles (bitsandbytes' (n/2, 1) tensor, or any view of those bytes).
        absmax: per-block absmax: uint8 codes when nested (double quantization), else fp32.
        shape: the weight's shape (e.g. (out_features, in_features)).
        dtype: output dtype (fp32, bf16, fp16).
        blocksize: elements per absmax block (QuantState.blocksize).
        code: the 16-value NF4 table (QuantState.code); None for the standard one.
        absmax2, code2, offset, blocksize2: QuantState.state2.absmax, .state2.code, .offset, .state2.blocksize;
            None / unused when absmax is not nested.
        out: caller-provided contiguous buffer of `shape` and `dtype` (one scratch buffer can serve every layer).

    Returns:
        `out` (or a new tensor) holding the weight.
    """
    numel = 1
    for s in shape:
        numel *= s
    if out is None:
        out = torch.empty(tuple(shape), dtype=dtype, device=packed.device)
    elif out.dtype != dtype or out.numel() != numel or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous {dtype} buffer of {numel} elements, got {out.dtype} {out.shape}")
    if numel % 2 or blocksize % 2:
        raise ValueError("nf4: the element count and blocksize must be even")
    if dispatch.use_triton(packed):
        return nf4_dequantize_fwd(packed.reshape(-1), absmax, absmax2, code2, offset, code, blocksize, blocksize2, out)
    out.copy_(
        nf4_dequantize_reference(
            packed, absmax, shape, dtype, blocksize, code, absmax2, code2, offset, blocksize2
        ).view(out.shape)
    )
    return out


def cpu_repacked(quant_state) -> bool:
    """Whether bitsandbytes has rewritten this weight into its CPU layout, which the kernels here cannot read.

    On a CPU with AVX512-BF16, a bitsandbytes Linear4bit in eval mode whose input needs no gradient (any no-grad
    forward: transformers' generate, a prompt) replaces its weight, in place and for good, by a tiled repacking for
    its bf16 CPU kernel: absmax un-nested, rounded to bf16 and transposed (`packing_format_for_cpu`). Clearing the
    module's `support_avx512bf16_for_cpu` before that keeps the layout (and the fp32 math) as loaded."""
    return bool(getattr(quant_state, "packing_format_for_cpu", False))


def nf4_dequantize_state(packed: torch.Tensor, quant_state, out: torch.Tensor | None = None) -> torch.Tensor:
    """`nf4_dequantize` reading the fields of a bitsandbytes QuantState (duck-typed: bitsandbytes is not imported)."""
    if quant_state.quant_type != "nf4":
        raise ValueError(f"quant_type {quant_state.quant_type!r}: only nf4 is supported")
    if cpu_repacked(quant_state):
        raise ValueError("the weight is in bitsandbytes' CPU-repacked layout (see cpu_repacked): not readable here")
    return nf4_dequantize(
        packed, shape=tuple(quant_state.shape), dtype=quant_state.dtype, out=out, **state_args(quant_state)
    )


def state_args(quant_state) -> dict:
    """The keyword arguments of `nf4_dequantize` (and its reference) that a bitsandbytes QuantState holds."""
    state2 = quant_state.state2 if quant_state.nested else None
    return dict(
        absmax=quant_state.absmax,
        blocksize=quant_state.blocksize,
        code=quant_state.code,
        absmax2=state2.absmax if state2 is not None else None,
        code2=state2.code if state2 is not None else None,
        offset=_offset(quant_state) if state2 is not None else 0.0,
        blocksize2=state2.blocksize if state2 is not None else 256,
    )


def read_offsets(quant_states) -> None:
    """Read the nested-absmax offsets of many QuantStates in one transfer per device, into the cache `_offset` reads:
    dequantizing every weight of a model (engine.memory.weights.keep_dense) then waits for the GPU once, not once per
    weight. The values are those `float(quant_state.offset)` gives (fp32 scalars, read exactly)."""
    todo = {}
    for state in quant_states:
        if state.nested and getattr(state, "tunesmith_offset", None) is None:
            offset = torch.as_tensor(state.offset)
            todo.setdefault(offset.device, []).append((state, offset.reshape(())))
    for pairs in todo.values():
        values = torch.stack([offset for _, offset in pairs]).tolist()
        for (state, _), value in zip(pairs, values, strict=True):
            state.tunesmith_offset = value


def _offset(quant_state) -> float:
    """The nested-absmax offset as a Python float, read from the device once per QuantState: reading a GPU scalar
    waits for the GPU, and a training step dequantizes every layer's weights twice."""
    cached = getattr(quant_state, "tunesmith_offset", None)
    if cached is None:
        cached = quant_state.tunesmith_offset = float(quant_state.offset)
    return cached
