"""CPU time per call of the fast path's pieces on the GPU: is a step bound by issuing kernels?

    python3 bench/launch_overhead.py

For each piece, `cpu` is the host time per call with nothing waited for and `wall` the time per call including the
GPU finishing: cpu close to wall means the host is the limit (a single small kernel whose launch costs more than it
runs). Shapes are a 14B layer's (5120 wide, NF4 q/k/v) at 2048 tokens.
"""

import os
import sys
import time

sys.path.insert(0, os.getcwd())


def per_call(fn, n=200):
    import torch

    for _ in range(10):
        fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    cpu = (time.perf_counter() - t) / n * 1e6
    torch.cuda.synchronize()
    wall = (time.perf_counter() - t) / n * 1e6
    return f"cpu {cpu:.0f} us/call, wall {wall:.0f} us/call"


def main():
    import bitsandbytes as bnb
    import torch

    from kernels import nf4
    from kernels.lora import lora_linear_group
    from kernels.rms_norm import rms_norm

    w = torch.randn(5120, 5120, dtype=torch.bfloat16, device="cuda")
    p = bnb.nn.Params4bit(w.cpu(), requires_grad=False, compress_statistics=True, quant_type="nf4").to("cuda")
    out = torch.empty(5120, 5120, dtype=torch.bfloat16, device="cuda")
    x = torch.randn(2048, 5120, dtype=torch.bfloat16, device="cuda")
    print("nf4 dequantize (Triton)", per_call(lambda: nf4.nf4_dequantize_state(p, p.quant_state, out=out)))
    print("matmul 2048x5120x5120 (cuBLAS)", per_call(lambda: x @ w.t()))
    norm = torch.ones(5120, device="cuda", dtype=torch.bfloat16)
    print("rms_norm (Triton)", per_call(lambda: rms_norm(x, norm, 1e-6)))
    A = [torch.randn(16, 5120, device="cuda", requires_grad=True) for _ in range(3)]
    B = [torch.zeros(5120, 16, device="cuda", requires_grad=True) for _ in range(3)]
    group = [(p, A[i], B[i], 1.0, None, p.quant_state) for i in range(3)]
    print("lora q/k/v group forward (3 NF4)", per_call(lambda: lora_linear_group(x, group), n=50))


if __name__ == "__main__":
    main()
