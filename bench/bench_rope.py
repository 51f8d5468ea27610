"""RoPE on Q and K: Triton (one launch) vs reference vs torch.compile(reference), forward and fwd+bwd, GB/s."""

import torch
from common import DEVICE, SMOKE, compiled, fwd_bwd, main, measure

from kernels import dispatch
from kernels.rope import rope, rope_cos_sin, rope_inv_freq, rope_reference

# (batch, seq, q heads, kv heads, head dim): Llama-3-8B, and a Gemma-2-style 256 head dim
SHAPES = [(1, 8, 4, 2, 64)] if SMOKE else [(4, 2048, 32, 8, 128), (4, 2048, 16, 8, 256)]
DTYPES = [torch.bfloat16]


def triton_rope(q, k, cos, sin, pos):
    with dispatch.force("triton"):
        return rope(q, k, cos, sin, pos)


def bench_one(bsz, seq, hq, hk, dim, dtype) -> list[dict]:
    cos, sin = rope_cos_sin(*rope_inv_freq(dim, 500000.0, device=DEVICE), max_positions=seq)
    pos = torch.arange(seq, device=DEVICE)[None].expand(bsz, seq)
    q = torch.randn(bsz, seq, hq, dim, dtype=dtype, device=DEVICE, requires_grad=True)
    k = torch.randn(bsz, seq, hk, dim, dtype=dtype, device=DEVICE, requires_grad=True)
    fns = {"triton": triton_rope, "torch": rope_reference, "compiled": compiled(rope_reference)}
    fwd = {n: (lambda f=f: f(q, k, cos, sin, pos)) for n, f in fns.items()}
    both = {n: fwd_bwd(f, (q, k), cos, sin, pos) for n, f in fns.items()}
    nbytes = 2 * (q.numel() + k.numel()) * q.element_size()
    shape = f"{bsz}x{seq}x({hq}+{hk})x{dim}"
    return [
        measure("rope", shape, dtype, "fwd", fwd, nbytes=nbytes),
        measure("rope", shape, dtype, "fwd+bwd", both, nbytes=2 * nbytes, grad_to_none=[q, k]),
    ]


def run() -> list[dict]:
    return [row for shape in SHAPES for dtype in DTYPES for row in bench_one(*shape, dtype)]


if __name__ == "__main__":
    main(run)
