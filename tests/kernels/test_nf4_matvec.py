"""kernels/nf4_matvec.py: the NF4 matvec (one row of x, and up to MAX_ROWS rows) against dequantize-then-matmul in
fp32 and against bitsandbytes' own dequantization (its CPU backend here, CUDA on the GPU machine): nested and plain
absmax, blocks that straddle rows, split-K, both decodes, bias; its refusals and configs. On the GPU, the decode
shapes of Qwen3-4B and Llama-8B."""

import copy
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from test_nf4 import _fields as fields
from test_nf4 import _quantize as quantize
from tolerances import DTYPES, assert_close

from kernels import dispatch
from kernels import nf4_matvec as module
from kernels.nf4_matvec import MAX_ROWS, Nf4MatvecConfig, nf4_matvec, nf4_matvec_reference, pick_config

bnb_functional = pytest.importorskip("bitsandbytes.functional")
CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"  # test_nf4's quantize puts the weights there too

CONFIGS = {
    "picked": None,  # decode="gather" (the table in registers)
    # 3 splits (not a power of two) of 16-byte steps, the table read from memory, a bias: split-K's reduction adds it
    "split-load": Nf4MatvecConfig(16, 16, split_k=3, num_warps=2, decode="load"),
}


def fp32_product(x, packed, state, bias=None):
    """x @ W.T with bitsandbytes' own fp32 dequantization of W, in fp32, rounded once to x's dtype."""
    state = copy.copy(state)
    state.dtype = torch.float32
    w = bnb_functional.dequantize_4bit(packed, state)
    return F.linear(x.float(), w, None if bias is None else bias.float()).to(x.dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(64, 256), (37, 330)], ids=["pow2", "odd"])  # 330: blocks straddle rows
@pytest.mark.parametrize("rows", [1, 3])
@pytest.mark.parametrize("config", list(CONFIGS))
def test_matvec_matches_dequantize_then_matmul(shape, dtype, rows, config):
    packed, state = quantize(shape, dtype)
    x = torch.randn(rows, shape[1], device=DEVICE).to(dtype)
    bias = torch.randn(shape[0], device=DEVICE).to(dtype) if config != "picked" else None
    f = fields(state)
    with dispatch.force("triton"):
        y = nf4_matvec(x, packed, bias=bias, config=CONFIGS[config], **f)
    assert y.shape == (rows, shape[0]) and y.dtype == dtype
    expected = nf4_matvec_reference(x, packed, bias=bias, **f)  # W rounded to x's dtype, then the product
    assert_close(y, expected, dtype)
    assert_close(y, fp32_product(x, packed, state, bias), dtype)
    if rows == 1:  # one row: fp32 products of the exact NF4 weights, so within one rounding of the fp32 product
        torch.testing.assert_close(y.float(), fp32_product(x.float(), packed, state, bias), **_one_rounding(dtype))


def _one_rounding(dtype) -> dict:
    """The rounding of an O(1) result to `dtype` (the interpreter truncates bf16: a whole ulp), fp32 sums' noise."""
    return {torch.float32: dict(rtol=2e-5, atol=2e-5), torch.bfloat16: dict(rtol=2**-7, atol=1e-3)}.get(
        dtype, dict(rtol=2**-10, atol=1e-4)
    )


@pytest.mark.parametrize("blocksize", [128, 256])
@pytest.mark.parametrize("nested", [True, False], ids=["nested", "plain"])
@pytest.mark.parametrize("rows", [1, 2])
def test_other_blocksizes_and_plain_absmax(blocksize, nested, rows):
    # 32-byte steps: a step holds part of a quantization block (one group of the step shares its scale)
    packed, state = quantize((48, 256), torch.float32, blocksize=blocksize, nested=nested)
    x = torch.randn(rows, 256, device=DEVICE)
    for cfg in (None, Nf4MatvecConfig(16, 32)):
        with dispatch.force("triton"):
            y = nf4_matvec(x, packed, config=cfg, **fields(state))
        assert_close(y, fp32_product(x, packed, state), torch.float32)


def test_splits_past_the_end_of_k_contribute_zero():
    # 100 bytes a row, 16 bytes (one step) a split: the last split starts past the row and writes zeros
    packed, state = quantize((16, 200), torch.float32)
    x = torch.randn(1, 200, device=DEVICE)
    with dispatch.force("triton"):
        y = nf4_matvec(x, packed, config=Nf4MatvecConfig(4, 16, split_k=8), **fields(state))
    assert_close(y, fp32_product(x, packed, state), torch.float32)


@pytest.mark.parametrize("x_shape", [(96,), (1, 96), (1, 1, 96), (5, 96), (MAX_ROWS, 96)])
def test_token_shapes(x_shape):
    packed, state = quantize((40, 96), torch.bfloat16)
    x = torch.randn(x_shape, device=DEVICE).to(torch.bfloat16)
    with dispatch.force("triton"):
        y = nf4_matvec(x, packed, **fields(state))
    assert y.shape == (*x_shape[:-1], 40)
    assert_close(y, nf4_matvec_reference(x, packed, **fields(state)), torch.bfloat16)


def test_refusals():
    packed, state = quantize((16, 64), torch.float32)
    f = fields(state)
    with pytest.raises(ValueError, match=f"1 to {MAX_ROWS} rows of 64 features"):
        nf4_matvec(torch.randn(MAX_ROWS + 1, 64), packed, **f)
    with pytest.raises(ValueError, match="rows of 64 features"):
        nf4_matvec(torch.randn(1, 63), packed, **f)
    with pytest.raises(ValueError, match="bias of shape"):
        nf4_matvec(torch.randn(1, 64), packed, bias=torch.randn(15), **f)
    with pytest.raises(ValueError, match="tensor-core kernel needs"), dispatch.force("triton"):
        nf4_matvec(torch.randn(2, 64, device=DEVICE), packed, config=Nf4MatvecConfig(8, 16), **f)
    for bad in (dict(block_n=3), dict(split_k=0), dict(decode="where")):
        with pytest.raises(ValueError, match="Nf4MatvecConfig"):
            Nf4MatvecConfig(**{"block_n": 4, "block_kb": 16, **bad})


def test_pick_config_prefers_the_measured_table(monkeypatch):
    assert pick_config(64, 256).block_kb == 128  # the rule: steps no wider than a row
    assert pick_config(64, 256, rows=4).block_n >= 16  # the tensor-core kernel's tile
    measured = Nf4MatvecConfig(8, 256, 2, 8, "gather")
    monkeypatch.setitem(module.MEASURED, (4096, 2560, 1), measured)
    assert pick_config(4096, 2560) == measured
    assert pick_config(4096, 2560, rows=8) != measured  # keyed by the kernel: 16 for any 2..MAX_ROWS rows


# ---- GPU (pytest -m gpu on the device machine) ----

SHAPES = [(4096, 2560), (1024, 2560), (2560, 4096), (9728, 2560), (2560, 9728), (14336, 4096), (4096, 14336)]


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", SHAPES, ids=[f"{n}x{k}" for n, k in SHAPES])
def test_gpu_decode_shapes_against_bitsandbytes_cuda(shape, dtype):
    """Qwen3-4B's and Llama-8B's NF4 projections: one row, 8 rows and MAX_ROWS rows, every decode."""
    import bitsandbytes

    packed, state = quantize(shape, dtype, device="cuda")
    w = bnb_functional.dequantize_4bit(packed, state)
    for rows in (1, 8, MAX_ROWS):
        x = torch.randn(rows, shape[1], dtype=dtype, device="cuda")
        expected = x.float() @ w.float().T
        with dispatch.force("triton"):
            for decode in ("load", "gather"):
                cfg = pick_config(*shape, rows)
                y = nf4_matvec(x, packed, config=replace(cfg, decode=decode), **fields(state))
                # a dot over K terms in another order than cuBLAS's: atol grows with sqrt(K)
                assert_close(y, expected.to(dtype), dtype, summed=shape[1])
    x = torch.randn(1, shape[1], dtype=dtype, device="cuda")
    with dispatch.force("triton"):
        y = nf4_matvec(x, packed, **fields(state))
    assert_close(y, bitsandbytes.matmul_4bit(x, packed.t(), quant_state=state), dtype, summed=shape[1])
