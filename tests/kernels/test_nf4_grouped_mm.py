"""kernels/nf4_grouped_mm.py: the grouped product over NF4 experts, dequantized a chunk at a time, against its
reference (the whole stack dequantized, then the grouped product), forward and the input gradient."""

import bitsandbytes.functional as bnb_functional
import pytest
import torch
from tolerances import DTYPES, assert_close

from kernels import dispatch
from kernels.nf4 import nf4_dequantize_state
from kernels.nf4_grouped_mm import _chunks, nf4_grouped_mm, nf4_grouped_mm_reference

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _quantized(shape, dtype):
    """A random expert stack quantized as engine.patching.moe stores it (2-D, blocks of 64, nested absmax)."""
    w = (torch.randn(shape) / shape[-1] ** 0.5).to(DEVICE, dtype)
    packed, state = bnb_functional.quantize_4bit(
        w.reshape(-1, shape[-1]), blocksize=64, compress_statistics=True, quant_type="nf4"
    )
    return packed, state


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "counts,shape,chunk",
    [
        ([16, 16, 16, 16], (4, 64, 128), 2),  # power-of-two, two chunks of two
        ([5, 0, 70, 1, 13], (5, 48, 40), 2),  # odd widths, an empty expert splits a run
        ([0, 3, 9, 0, 0, 4, 2], (7, 96, 24), 3),  # leading and trailing empty experts; chunks of one, three
        ([3, 4, 5], (3, 6, 10), 1),  # 60 weights an expert: blocks straddle experts, so one chunk of all
        ([9, 0, 7, 5], (4, 128, 128), 1),  # an expert is 256 blocks: chunks slice both absmax levels
    ],
    ids=["pow2", "odd-with-empty", "runs", "unaligned", "second-level-aligned"],
)
@pytest.mark.parametrize("transposed", [False, True], ids=["nk", "kn"])
def test_nf4_grouped_mm_matches_reference(counts, shape, chunk, dtype, transposed):
    torch.manual_seed(0)
    packed, state = _quantized(shape, dtype)
    k = shape[1] if transposed else shape[2]
    n = shape[2] if transposed else shape[1]
    m = sum(counts)
    offsets = torch.tensor(counts, device=DEVICE).cumsum(0).to(torch.int32)
    x = torch.randn(m, k, device=DEVICE).to(dtype).requires_grad_()
    dy = torch.randn(m, n, device=DEVICE).to(dtype)
    with dispatch.force("triton"):
        y = nf4_grouped_mm(x, packed, state, shape, offsets, transposed, chunk)
    y.backward(dy)
    dx, x.grad = x.grad, None
    y_ref = nf4_grouped_mm_reference(x, packed, state, shape, offsets, transposed)
    y_ref.backward(dy)
    assert y.dtype == dtype and y.shape == (m, n)
    assert_close(y, y_ref, dtype)
    assert_close(dx, x.grad, dtype)


def test_chunks_are_runs_of_experts_that_start_and_end_with_rows():
    assert _chunks([2, 2, 5, 9, 9, 12], 2) == [(0, 1), (2, 4), (5, 6)]  # experts 1 and 4 have no rows
    assert _chunks([2, 2, 5, 9, 9, 12], 6) == [(0, 6)]  # one run: the experts without rows inside it too
    assert _chunks([0, 2, 2, 5, 9, 9, 9], 4) == [(1, 5)]  # none leading or trailing
    assert _chunks([1, 2, 3, 4, 5], 2) == [(0, 2), (2, 4), (4, 5)]
    assert _chunks([0, 0], 4) == []


def test_reference_is_the_dequantized_stack_times_each_rows_expert():
    packed, state = _quantized((3, 8, 16), torch.float32)
    w = nf4_dequantize_state(packed, state).reshape(3, 8, 16)  # bit-exact with bitsandbytes (tests/kernels/test_nf4)
    x = torch.randn(6, 16, device=DEVICE)
    offsets = torch.tensor([2, 4, 6], dtype=torch.int32, device=DEVICE)
    y = nf4_grouped_mm_reference(x, packed, state, (3, 8, 16), offsets)
    torch.testing.assert_close(y[2:4], x[2:4] @ w[1].T)
