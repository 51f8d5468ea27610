"""Embedding rows gathered by the GPU straight from a table in pinned host memory.

engine.memory.offload keeps a large input embedding table (llama8b's: 1 GiB of bf16) in host RAM under a small VRAM
budget, and every step needs the rows of its tokens on the GPU before anything else can run. Gathered by the host, those
rows leave the GPU idle: the token ids must come back first (a synchronization), then the host gathers 32 MiB at
4096 tokens and copies them over (9-12 ms of idle GPU per llama8b step on the H100 machine; a host gather into
reused pinned buffers took 1.2 ms in one process and 21 ms in another, not traced further). Pinned host memory is
mapped into the GPU's address space (unified addressing), so a kernel can read just the rows it needs over PCIe
instead: nothing runs on the host, nothing waits, and the ids stay on the GPU.

    out[i, :] = table[ids[i], :]

The table is read once per row gathered, in BLOCK-wide pieces; nothing is computed, so the result is bit-exact.
"""

import torch
import triton
import triton.language as tl

from kernels import dispatch

BLOCK = 1024


def gather_rows_reference(table: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """table[ids], on ids' device."""
    return table[ids.to(table.device)].to(ids.device)


@triton.jit
def _gather_rows_kernel(table_ptr, ids_ptr, out_ptr, width, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < width
    source = tl.load(ids_ptr + row).to(tl.int64)
    values = tl.load(table_ptr + source * width + cols, mask=mask)
    tl.store(out_ptr + row * width + cols, values, mask=mask)


def gather_rows(table: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """table[ids] as a new tensor on ids' device.

    Args:
        table: (vocab, width) contiguous; on ids' device, or (ids on CUDA) in pinned host memory, which the kernel
            reads over PCIe.
        ids: integer token ids of any shape; every id must be in range (as for torch.nn.functional.embedding).

    Returns:
        (*ids.shape, width) in table's dtype.
    """
    if table.dim() != 2 or not table.is_contiguous():
        raise ValueError("table must be a contiguous (vocab, width) tensor")
    reachable = table.device == ids.device or (ids.is_cuda and table.is_pinned())
    if not (reachable and dispatch.use_triton(ids)):
        return gather_rows_reference(table, ids)
    flat = ids.reshape(-1).contiguous()
    out = torch.empty(flat.numel(), table.shape[1], dtype=table.dtype, device=ids.device)
    if flat.numel():
        grid = (flat.numel(), triton.cdiv(table.shape[1], BLOCK))
        _gather_rows_kernel[grid](table, flat, out, table.shape[1], BLOCK=BLOCK, num_warps=4)
    return out.view(*ids.shape, table.shape[1])
