"""Grouped matrix product over NF4 expert weights, dequantized a chunk of experts at a time (QLoRA's MoE experts).

    y[s_g:e_g] = x[s_g:e_g] @ W_g        W_g: expert g's weight, stored NF4 (bitsandbytes' layout, kernels.nf4)

A layer's stack of G experts, [G, A, B] in 16 bits, is stored as one NF4 tensor of its G*A*B elements in row-major
order (quantized as the 2-D [G*A, B]), so expert g's weights are one run of whole quantization blocks when A*B is a
multiple of the blocksize. The forward and the backward (dx = dy @ W_g^T; the weights are frozen, so there is no dW)
walk the experts that have rows in chunks of at most `chunk` consecutive experts, dequantize a chunk into one scratch
buffer (kernels.nf4) and run the grouped product (kernels.grouped_mm) on the
chunk's rows. The layer's whole 16-bit stack never exists: for Qwen3-30B-A3B's gate_up a chunk of 10 experts is 60
MiB against 768 MiB, and a chunk never starts or ends at an expert no row went to. The cost: the group ends are read
on the host once per call (the chunks' row ranges), so the op cannot be captured in a CUDA graph (mixture-of-experts
layers are not: engine.patching.graphs), and a chunk is one dequantization and one grouped launch. Where the memory
plan has room (engine.memory.offload, Plan.expert_stack) the chunk is the whole stack: one dequantization, one grouped
launch and no host read.

Numerics: the dequantized values are bit-exact with bitsandbytes' (kernels.nf4), rounded once to x's dtype; the
products are kernels.grouped_mm's (fp32 accumulation). Bytes moved: the packed weights once per pass (n/2 + n/64),
the chunk's 16-bit weights written and read once (2n + 2n), x and y as in kernels.grouped_mm.
"""

import torch

from kernels import dispatch
from kernels.grouped_mm import cutlass, grouped_mm_fwd, grouped_mm_reference
from kernels.nf4 import _offset, nf4_dequantize, nf4_dequantize_reference, state_args


def nf4_grouped_mm_reference(x, packed, quant_state, shape, offsets, transposed: bool = False) -> torch.Tensor:
    """Pure torch: the whole stack dequantized (bitsandbytes' order of operations), then the grouped product."""
    w = nf4_dequantize_reference(packed, shape=shape, dtype=x.dtype, **state_args(quant_state))
    return grouped_mm_reference(x, w if transposed else w.transpose(1, 2), offsets)


def _scales(quant_state, first: int, last: int) -> dict:
    """nf4_dequantize's absmax arguments for quantization blocks first..last-1: a slice of both levels when the run
    starts on a second-level block (Qwen3-30B-A3B's and Mixtral's experts are whole numbers of them), else fp32
    absmax with the nested level undone here, as kernels.nf4 does it."""
    absmax = quant_state.absmax[first:last]
    if not quant_state.nested:
        return dict(absmax=absmax.float())
    state2 = quant_state.state2
    if first % state2.blocksize == 0:
        second = state2.absmax[first // state2.blocksize : -(-last // state2.blocksize)]
        offset = _offset(quant_state)
        return dict(absmax=absmax, absmax2=second, code2=state2.code, offset=offset, blocksize2=state2.blocksize)
    second = torch.arange(first, last, device=absmax.device) // state2.blocksize
    return dict(absmax=state2.code.float()[absmax.long()] * state2.absmax.float()[second] + _offset(quant_state))


def _chunks(ends: list[int], chunk: int) -> list[tuple[int, int]]:
    """Runs of at most `chunk` consecutive experts, as (first, past-last) expert indices, each starting and ending at
    an expert that has rows; experts without rows inside a run are dequantized with it (a run per gap would cost a
    dequantization and a grouped launch each, which the host issues one after another)."""
    runs, g = [], 0
    while g < len(ends):
        if ends[g] == (ends[g - 1] if g else 0):
            g += 1
            continue
        end = min(g + chunk, len(ends))
        while end - 1 > g and ends[end - 1] == ends[end - 2]:  # trailing experts without rows
            end -= 1
        runs.append((g, end))
        g = end
    return runs


def _product(x, packed, quant_state, shape, offsets, transposed: bool, chunk: int, backward: bool):
    """y = x @ W_g row group by row group (`backward`: dy @ W_g^T), dequantizing a chunk of experts at a time."""
    groups, a, b = shape
    per_expert, blocksize = a * b, quant_state.blocksize
    # an expert that starts inside a quantization block cannot be dequantized alone: then one chunk of them all; one
    # chunk of them all reads no group ends on the host (that read waits for the GPU to finish all it was given)
    whole = chunk >= groups or per_expert % blocksize != 0
    ends = None if whole else offsets.tolist()
    runs = ([(0, groups)] if x.shape[0] else []) if whole else _chunks(ends, chunk)
    stored_n = b if transposed else a  # [G, K, N] when transposed, else [G, N, K]
    n_out = (a if transposed else b) if backward else stored_n
    y = x.new_empty(x.shape[0], n_out)
    flat = packed.reshape(-1)
    buffer = torch.empty(max((end - g for g, end in runs), default=0) * per_expert, dtype=x.dtype, device=x.device)
    triton = dispatch.use_triton(x)
    for g, end in runs:
        n = end - g
        first, last = g * per_expert // blocksize, -(-end * per_expert // blocksize)
        w = nf4_dequantize(
            flat[g * per_expert // 2 : end * per_expert // 2],
            shape=(n * a, b),
            dtype=x.dtype,
            blocksize=blocksize,
            code=quant_state.code,
            out=buffer[: n * per_expert].view(n * a, b),
            **_scales(quant_state, first, last),
        ).view(n, a, b)
        w = w if transposed else w.transpose(1, 2)  # [n, K, N]
        if backward:
            w = w.transpose(1, 2)
        row0 = ends[g - 1] if g else 0
        rows = slice(row0, x.shape[0] if whole else ends[end - 1])
        local = (offsets if whole else offsets[g:end] - row0).to(torch.int32)
        if cutlass(x, w):
            y[rows] = torch._grouped_mm(x[rows], w, offs=local)
        elif triton:
            grouped_mm_fwd(x[rows], w, local, out=y[rows])
        else:
            y[rows] = grouped_mm_reference(x[rows], w, local)
    return y


class NF4GroupedMMFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, packed, offsets, quant_state, shape, transposed, chunk):
        ctx.save_for_backward(packed, offsets)  # packed may be a streamed slot: saved, not kept as an attribute
        ctx.meta = quant_state, shape, transposed, chunk
        return _product(x, packed, quant_state, shape, offsets, transposed, chunk, backward=False)

    @staticmethod
    def backward(ctx, dy):
        packed, offsets = ctx.saved_tensors
        quant_state, shape, transposed, chunk = ctx.meta
        dx = _product(dy.contiguous(), packed, quant_state, shape, offsets, transposed, chunk, backward=True)
        return dx, None, None, None, None, None, None


def nf4_grouped_mm(
    x: torch.Tensor,
    packed: torch.Tensor,
    quant_state,
    shape: tuple[int, int, int],
    offsets: torch.Tensor,
    transposed: bool = False,
    chunk: int | None = None,
) -> torch.Tensor:
    """y[s_g:e_g] = x[s_g:e_g] @ W_g for rows sorted by expert, W_g dequantized from NF4; differentiable in x.

    Args:
        x: [M, K] rows grouped by expert, fp32/bf16/fp16 (the weights are dequantized to its dtype).
        packed: the stack's packed NF4 bytes (bitsandbytes' quantize_4bit of the [G*A, B] reshape).
        quant_state: its bitsandbytes QuantState (duck-typed: absmax, nested state2, blocksize, code).
        shape: the stack's shape (G, A, B): [G, K, N] when `transposed` (gpt-oss), else [G, N, K] (nn.Linear's).
        offsets: [G] int32, each expert's end row (non-decreasing, the last one M).
        chunk: experts dequantized at a time (None: all of them).
    """
    if x.dim() != 2 or len(shape) != 3 or offsets.numel() != shape[0]:
        raise ValueError(f"x {tuple(x.shape)}, shape {tuple(shape)}, offsets {tuple(offsets.shape)} do not fit")
    if x.shape[1] != (shape[1] if transposed else shape[2]):
        raise ValueError(f"x has {x.shape[1]} columns; the experts' stored shape {tuple(shape)} takes another")
    return NF4GroupedMMFunction.apply(x, packed, offsets, quant_state, tuple(shape), transposed, chunk or shape[0])
