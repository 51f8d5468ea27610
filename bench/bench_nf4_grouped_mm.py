"""NF4 experts' grouped product: chunked dequantization (kernels.nf4_grouped_mm, chunks of engine.core.scratch's
size, the path QLoRA's MoE layers take) vs the whole stack dequantized and then kernels.grouped_mm (the path before
it), forward and forward+backward (the input's gradient: the weights are frozen), with each variant's peak memory
beyond its inputs, on Qwen3-30B-A3B's gate_up and down projections for 4096 tokens routed uniformly at random."""

import functools

import torch
from common import DEVICE, SMOKE, fwd_bwd, main, measure, peak_bytes  # first: sets TRITON_INTERPRET on the CPU

from engine.core.scratch import experts_per_chunk
from kernels import dispatch
from kernels.grouped_mm import grouped_mm
from kernels.nf4 import nf4_dequantize_state
from kernels.nf4_grouped_mm import nf4_grouped_mm

# tokens, experts, experts per token, stored [experts, out, in]
SHAPES = [(16, 4, 2, 48, 64)] if SMOKE else [(4096, 128, 8, 1536, 2048), (4096, 128, 8, 2048, 768)]


def chunked(x, packed, state, shape, offsets):
    with dispatch.force("triton"):
        chunk = experts_per_chunk(shape[1] * shape[2] * x.element_size())
        return nf4_grouped_mm(x, packed, state, shape, offsets, chunk=chunk)


def whole(x, packed, state, shape, offsets):
    with dispatch.force("triton"):
        return grouped_mm(x, nf4_dequantize_state(packed, state).view(shape).transpose(1, 2), offsets)


def peak_mib(fn) -> float | None:
    """Peak allocated memory of one call beyond what was allocated before it, MiB (None on the CPU)."""
    peak = peak_bytes(fn)
    return None if peak is None else peak / 2**20


def bench_one(tokens, experts, k, n_out, n_in, dtype=torch.bfloat16) -> list[dict]:
    gen = torch.Generator().manual_seed(0)
    ids = torch.stack([torch.randperm(experts, generator=gen)[:k] for _ in range(tokens)]).reshape(-1)
    offsets = torch.bincount(ids, minlength=experts).cumsum(0).to(torch.int32).to(DEVICE)
    shape = (experts, n_out, n_in)
    w = (torch.randn(shape, device=DEVICE) / n_in**0.5).to(dtype)
    import bitsandbytes.functional as bnbf

    packed, state = bnbf.quantize_4bit(w.reshape(-1, n_in), blocksize=64, compress_statistics=True, quant_type="nf4")
    del w
    x = torch.randn(tokens * k, n_in, dtype=dtype, device=DEVICE, requires_grad=True)
    fns = {"triton": chunked, "torch": whole}
    fwd = {name: (lambda f=f: f(x, packed, state, shape, offsets)) for name, f in fns.items()}
    both = {name: fwd_bwd(functools.partial(f, packed=packed, state=state, shape=shape, offsets=offsets), (x,))
            for name, f in fns.items()}  # fmt: skip
    label = f"{tokens}tok {experts}x{n_in}->{n_out} top{k}"
    rows = [
        measure("nf4_grouped_mm", label, dtype, "fwd", fwd),
        measure("nf4_grouped_mm", label, dtype, "fwd+bwd", both, grad_to_none=[x]),
    ]
    for row, variants in zip(rows, (fwd, both), strict=True):
        peaks = {name: peak_mib(fn) for name, fn in variants.items()}
        if not SMOKE:
            row["note"] = "peak MiB beyond inputs: " + ", ".join(f"{n} {p:.0f}" for n, p in peaks.items())
    return rows


def run() -> list[dict]:
    return [row for shape in SHAPES for row in bench_one(*shape)]


if __name__ == "__main__":
    main(run)
