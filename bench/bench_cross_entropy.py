"""Fused linear + cross-entropy: Triton-chunked vs full-logits reference vs torch.compile(reference), fwd+bwd.

Compute-bound (the lm_head matmuls dominate), so no GB/s; the point is as much memory, printed as peak GiB.
The fused forward already computes the gradients, so only forward+backward is timed.
"""

import torch
from common import DEVICE, SMOKE, compiled, empty_cache, main, measure, peak_bytes

from kernels import dispatch
from kernels.cross_entropy import cross_entropy_reference, fused_linear_cross_entropy

# tokens, hidden, vocab: Llama-3-8B, Qwen2.5-14B
SHAPES = [(32, 16, 300)] if SMOKE else [(8192, 4096, 128256), (8192, 5120, 151936)]
DTYPES = [torch.bfloat16]


def peak_gib(fn) -> float | None:
    """Peak memory fn allocates on top of what is already allocated."""
    peak = peak_bytes(fn)
    return None if peak is None else round(peak / 2**30, 2)


def triton_ce(h, w, y):
    with dispatch.force("triton"):
        return fused_linear_cross_entropy(h, w, y)


def bench_one(tokens: int, hidden: int, vocab: int, dtype: torch.dtype) -> dict:
    h = torch.randn(tokens, hidden, dtype=dtype, device=DEVICE, requires_grad=True)
    w = (torch.randn(vocab, hidden, device=DEVICE) / hidden**0.5).to(dtype).requires_grad_()
    y = torch.randint(0, vocab, (tokens,), device=DEVICE)
    fns = {"triton": triton_ce, "torch": cross_entropy_reference, "compiled": compiled(cross_entropy_reference)}
    variants = {name: (lambda f=f: f(h, w, y).backward()) for name, f in fns.items()}
    row = measure("fused_linear_ce", f"{tokens}x{hidden}x{vocab}", dtype, "fwd+bwd", variants, grad_to_none=[h, w])
    peaks = []
    for name, fn in variants.items():
        try:
            peaks.append(f"{name} {peak_gib(fn)}")
        except Exception as exc:  # out of memory in the reference is a result, not a crash
            peaks.append(f"{name} {type(exc).__name__}")
        h.grad = w.grad = None
        empty_cache()
    row["note"] = "peak GiB: " + ", ".join(peaks)
    return row


def run() -> list[dict]:
    rows = []
    for shape in SHAPES:
        for dtype in DTYPES:
            rows.append(bench_one(*shape, dtype))
            empty_cache()
    return rows


if __name__ == "__main__":
    main(run)
