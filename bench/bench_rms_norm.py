"""RMSNorm: Triton vs reference vs torch.compile(reference), forward and forward+backward, with GB/s."""

import torch
from common import DEVICE, SMOKE, compiled, fwd_bwd, main, measure

from kernels import dispatch
from kernels.rms_norm import rms_norm, rms_norm_reference

SHAPES = [(64, 96)] if SMOKE else [(8192, 4096), (8192, 5120)]  # tokens x hidden
DTYPES = [torch.bfloat16]


def triton_rms_norm(x, w):
    with dispatch.force("triton"):
        return rms_norm(x, w)


def bench_one(m: int, n: int, dtype: torch.dtype) -> list[dict]:
    x = torch.randn(m, n, dtype=dtype, device=DEVICE, requires_grad=True)
    w = torch.ones(n, dtype=dtype, device=DEVICE, requires_grad=True)
    b = x.element_size()
    fns = {"triton": triton_rms_norm, "torch": rms_norm_reference, "compiled": compiled(rms_norm_reference)}
    fwd = {k: (lambda f=f: f(x, w)) for k, f in fns.items()}
    both = {k: fwd_bwd(f, (x, w)) for k, f in fns.items()}
    return [
        measure("rms_norm", f"{m}x{n}", dtype, "fwd", fwd, nbytes=2 * m * n * b),
        measure("rms_norm", f"{m}x{n}", dtype, "fwd+bwd", both, nbytes=5 * m * n * b, grad_to_none=[x, w]),
    ]


def run() -> list[dict]:
    return [row for m, n in SHAPES for dtype in DTYPES for row in bench_one(m, n, dtype)]


if __name__ == "__main__":
    main(run)
