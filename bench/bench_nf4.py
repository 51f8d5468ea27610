"""NF4: dequantization into a scratch buffer and the batch-1 matvec, Triton vs reference vs torch.compile(reference)
vs bitsandbytes (when importable), with GB/s. bench/bench_nf4_matvec.py times the matvec in more detail (cold weights,
CUDA graphs, the previous kernel, several rows, a config sweep)."""

import torch
from common import DEVICE, SMOKE, compiled, main, measure

from kernels import dispatch
from kernels.nf4 import nf4_dequantize, nf4_dequantize_reference
from kernels.nf4_matvec import nf4_matvec, nf4_matvec_reference

SHAPES = [(32, 128)] if SMOKE else [(4096, 4096), (14336, 4096)]  # Llama-3-8B q/o and gate/up
DTYPES = [torch.bfloat16]


def bench_one(n_out: int, k_in: int, dtype: torch.dtype) -> list[dict]:
    import bitsandbytes
    import bitsandbytes.functional as bnbf

    w = (torch.randn(n_out, k_in, device=DEVICE) * 0.02).to(dtype)
    packed, st = bnbf.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=True)
    shape = (n_out, k_in)
    f = dict(
        blocksize=st.blocksize, code=st.code, absmax2=st.state2.absmax, code2=st.state2.code,
        offset=float(st.offset), blocksize2=st.state2.blocksize,
    )  # fmt: skip
    out = torch.empty(shape, dtype=dtype, device=DEVICE)
    x = torch.randn(1, k_in, dtype=dtype, device=DEVICE)

    def tri_deq():
        with dispatch.force("triton"):
            return nf4_dequantize(packed, st.absmax, shape, dtype, out=out, **f)

    def ref_deq():
        return nf4_dequantize_reference(packed, st.absmax, shape, dtype, **f)

    def tri_mv():
        with dispatch.force("triton"):
            return nf4_matvec(x, packed, st.absmax, shape, **f)

    def ref_mv():
        return nf4_matvec_reference(x, packed, st.absmax, shape, **f)

    n = n_out * k_in
    deq = {
        "triton": tri_deq,
        "torch": ref_deq,
        "compiled": compiled(ref_deq),
        "bnb": lambda: bnbf.dequantize_4bit(packed, st),
    }
    mv = {
        "triton": tri_mv,
        "torch": ref_mv,
        "compiled": compiled(ref_mv),
        "bnb": lambda: bitsandbytes.matmul_4bit(x, packed.t(), quant_state=st),
    }
    return [
        measure("nf4_dequant", f"{n_out}x{k_in}", dtype, "fwd", deq, nbytes=n // 2 + n // 64 + n * out.element_size()),
        measure(
            "nf4_matvec", f"1x{k_in} @ {n_out}x{k_in}", dtype, "fwd", mv, nbytes=n // 2 + n // 64 + 2 * (k_in + n_out)
        ),
    ]


def run() -> list[dict]:
    return [row for shape in SHAPES for dtype in DTYPES for row in bench_one(*shape, dtype)]


if __name__ == "__main__":
    main(run)
