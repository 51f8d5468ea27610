"""SwiGLU / GeGLU: Triton vs reference vs torch.compile(reference), forward and forward+backward, with GB/s."""

import functools

import torch
from common import DEVICE, SMOKE, compiled, fwd_bwd, main, measure

from kernels import dispatch
from kernels.swiglu import swiglu, swiglu_reference

SHAPES = [(16, 96)] if SMOKE else [(8192, 14336)]  # tokens x intermediate (Llama-3-8B)
DTYPES = [torch.bfloat16]
ACTIVATIONS = ["silu", "gelu_tanh"]


def triton_swiglu(g, u, activation):
    with dispatch.force("triton"):
        return swiglu(g, u, activation)


def bench_one(m: int, n: int, dtype: torch.dtype, act: str) -> list[dict]:
    g = torch.randn(m, n, dtype=dtype, device=DEVICE, requires_grad=True)
    u = torch.randn(m, n, dtype=dtype, device=DEVICE, requires_grad=True)
    b = g.element_size()
    ref = functools.partial(swiglu_reference, activation=act)
    fns = {"triton": functools.partial(triton_swiglu, activation=act), "torch": ref, "compiled": compiled(ref)}
    fwd = {k: (lambda f=f: f(g, u)) for k, f in fns.items()}
    both = {k: fwd_bwd(f, (g, u)) for k, f in fns.items()}
    op = f"swiglu[{act}]"
    return [
        measure(op, f"{m}x{n}", dtype, "fwd", fwd, nbytes=3 * m * n * b),
        measure(op, f"{m}x{n}", dtype, "fwd+bwd", both, nbytes=8 * m * n * b, grad_to_none=[g, u]),
    ]


def run() -> list[dict]:
    return [row for m, n in SHAPES for dtype in DTYPES for act in ACTIVATIONS for row in bench_one(m, n, dtype, act)]


if __name__ == "__main__":
    main(run)
