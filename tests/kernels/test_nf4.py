"""kernels/nf4.py: NF4 dequantization bit-exact against bitsandbytes (its CPU backend here, CUDA on the GPU machine).
The fused NF4 matvec is tests/kernels/test_nf4_matvec.py's."""

import pytest
import torch
from tolerances import DTYPES

from kernels import dispatch
from kernels.nf4 import (
    nf4_dequantize,
    nf4_dequantize_reference,
    nf4_dequantize_state,
    read_offsets,
)

bnb_functional = pytest.importorskip("bitsandbytes.functional")
CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"


def _quantize(shape, dtype, blocksize=64, device=DEVICE, nested=True):
    torch.manual_seed(0)
    w = (torch.randn(shape, device=device) * 0.02).to(dtype)
    packed, state = bnb_functional.quantize_4bit(w, blocksize=blocksize, quant_type="nf4", compress_statistics=nested)
    return packed, state


def _fields(state):
    s2 = state.state2
    return dict(
        absmax=state.absmax,
        shape=tuple(state.shape),
        blocksize=state.blocksize,
        code=state.code,
        absmax2=s2.absmax if state.nested else None,
        code2=s2.code if state.nested else None,
        offset=float(state.offset) if state.nested else 0.0,
        blocksize2=s2.blocksize if state.nested else 256,
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(64, 128), (37, 74)], ids=["pow2", "odd"])
def test_dequantize_is_bit_exact_with_bitsandbytes(shape, dtype):
    packed, state = _quantize(shape, dtype)
    assert state.nested and state.absmax.dtype == torch.uint8
    expected = bnb_functional.dequantize_4bit(packed, state)
    out = torch.full(shape, float("nan"), dtype=dtype, device=DEVICE)
    with dispatch.force("triton"):
        got = nf4_dequantize_state(packed, state, out=out)
    assert got is out
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    f = _fields(state)
    absmax, shape = f.pop("absmax"), f.pop("shape")
    with dispatch.force("triton"):
        direct = nf4_dequantize(packed, absmax, shape, dtype, **f)
    torch.testing.assert_close(direct, expected, rtol=0, atol=0)
    torch.testing.assert_close(nf4_dequantize_reference(packed, absmax, shape, dtype, **f), expected, rtol=0, atol=0)


def test_offsets_read_at_once_are_each_states_own():
    """read_offsets caches every nested state's offset in one transfer: the values float(offset) gives, so the
    dequantization after it stays bit-exact; a plain (not nested) state and an already cached one are left alone."""
    weights = [_quantize(shape, torch.float16) for shape in ((64, 128), (37, 74), (48, 64))]
    plain_packed, plain = _quantize((64, 128), torch.float16, nested=False)
    states = [state for _, state in weights]
    assert len({float(s.offset) for s in states}) == len(states)  # distinct, so a mix-up would show
    states[2].tunesmith_offset = 0.125  # cached already: kept
    read_offsets([*states, plain])
    assert [s.tunesmith_offset for s in states[:2]] == [float(s.offset) for s in states[:2]]
    assert states[2].tunesmith_offset == 0.125 and getattr(plain, "tunesmith_offset", None) is None
    for packed, state in weights[:2]:
        with dispatch.force("triton"):
            got = nf4_dequantize_state(packed, state)
        torch.testing.assert_close(got, bnb_functional.dequantize_4bit(packed, state), rtol=0, atol=0)


@pytest.mark.parametrize("blocksize", [128, 256])
def test_dequantize_other_blocksizes_and_plain_absmax(blocksize):
    # rows a multiple of the blocksize: bitsandbytes' CPU C++ kernel (unlike its CUDA and generic torch paths, which
    # this kernel matches) gets blocks of 128+ that straddle rows wrong, e.g. (48, 160) at blocksize 128
    for nested in (True, False):
        packed, state = _quantize((48, 256), torch.bfloat16, blocksize=blocksize, nested=nested)
        with dispatch.force("triton"):
            got = nf4_dequantize_state(packed, state)
        torch.testing.assert_close(got, bnb_functional.dequantize_4bit(packed, state), rtol=0, atol=0)


def test_one_scratch_buffer_serves_layers_of_any_shape():
    scratch = torch.empty(64 * 128, dtype=torch.float16, device=DEVICE)
    for shape in [(64, 128), (32, 192)]:
        packed, state = _quantize(shape, torch.float16)
        n = shape[0] * shape[1]
        with dispatch.force("triton"):
            w = nf4_dequantize_state(packed, state, out=scratch[:n].view(shape))
        torch.testing.assert_close(w, bnb_functional.dequantize_4bit(packed, state), rtol=0, atol=0)


def test_blocks_straddling_rows_follow_the_flat_layout():
    # bitsandbytes quantizes in flat blocks; its CPU C++ dequantizer reads (32, 96) at blocksize 64 back with 5x the
    # quantization error, so here the check is against the original weight rather than against bitsandbytes
    torch.manual_seed(0)
    w = torch.randn(32, 96) * 0.02
    packed, state = bnb_functional.quantize_4bit(w.to(DEVICE), blocksize=64, quant_type="nf4")
    with dispatch.force("triton"):
        got = nf4_dequantize_state(packed, state).cpu()
    scales = w.view(-1, 64).abs().amax(1).repeat_interleave(64).view(32, 96)
    assert ((got - w).abs() <= 0.2 * scales + 1e-6).all()  # half the widest NF4 gap (0.30) plus the absmax error


def test_wrong_out_buffer_is_refused():
    packed, state = _quantize((16, 64), torch.float16)
    with pytest.raises(ValueError, match="out must be"):
        nf4_dequantize_state(packed, state, out=torch.empty(16, 64, dtype=torch.float32, device=DEVICE))


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(4096, 4096), (14336, 4096), (5120, 13824)])
def test_gpu_dequantize_sizes_against_bitsandbytes_cuda(shape, dtype):
    packed, state = _quantize(shape, dtype, device="cuda")
    with dispatch.force("triton"):
        got = nf4_dequantize_state(packed, state)
    torch.testing.assert_close(got, bnb_functional.dequantize_4bit(packed, state), rtol=0, atol=0)
