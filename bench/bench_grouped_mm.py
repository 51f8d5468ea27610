"""Grouped expert matmul: Triton (kernels.grouped_mm) vs the per-expert loop (reference) vs torch.compile of it, and
torch._grouped_mm where this torch has it, forward and forward+backward, on Qwen3-30B-A3B's gate_up projection
(128 experts, 8 per token, hidden 2048 -> 2 x 768) for 4096 tokens routed uniformly at random."""

import functools

import torch
from common import DEVICE, SMOKE, compiled, fwd_bwd, main, measure

from kernels import dispatch
from kernels.grouped_mm import grouped_mm, grouped_mm_reference

# tokens, experts, experts per token, in, out
SHAPES = [(16, 4, 2, 32, 48)] if SMOKE else [(4096, 128, 8, 2048, 1536), (4096, 128, 8, 768, 2048)]
DTYPES = [torch.bfloat16]


def triton_grouped(x, w, offsets):
    with dispatch.force("triton"):
        return grouped_mm(x, w, offsets)


def torch_grouped(x, w, offsets):
    return torch._grouped_mm(x, w, offs=offsets)


def bench_one(tokens, experts, k, n_in, n_out, dtype) -> list[dict]:
    gen = torch.Generator().manual_seed(0)
    ids = torch.stack([torch.randperm(experts, generator=gen)[:k] for _ in range(tokens)]).reshape(-1)
    counts = torch.bincount(ids, minlength=experts)
    offsets = counts.cumsum(0).to(torch.int32).to(DEVICE)
    m = tokens * k
    x = torch.randn(m, n_in, dtype=dtype, device=DEVICE, requires_grad=True)
    stored = (torch.randn(experts, n_out, n_in, dtype=dtype, device=DEVICE) / n_in**0.5).requires_grad_()
    w = stored.transpose(1, 2)  # the fused expert tensor as transformers stores it, [E, out, in]
    fns = {"triton": triton_grouped, "torch": grouped_mm_reference, "compiled": compiled(grouped_mm_reference)}
    if hasattr(torch, "_grouped_mm") and not SMOKE:
        fns["torch_grouped_mm"] = torch_grouped
    fwd = {name: (lambda f=f: f(x, w, offsets)) for name, f in fns.items()}
    both = {name: fwd_bwd(functools.partial(f, offsets=offsets), (x, w)) for name, f in fns.items()}
    b = x.element_size()
    nbytes = (m * n_in + experts * n_in * n_out + m * n_out) * b
    shape = f"{tokens}tok {experts}x{n_in}->{n_out} top{k}"
    return [
        measure("grouped_mm", shape, dtype, "fwd", fwd, nbytes=nbytes),
        measure("grouped_mm", shape, dtype, "fwd+bwd", both, grad_to_none=[x, stored]),
    ]


def run() -> list[dict]:
    return [row for shape in SHAPES for dtype in DTYPES for row in bench_one(*shape, dtype)]


if __name__ == "__main__":
    main(run)
