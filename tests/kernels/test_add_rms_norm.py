"""kernels/add_rms_norm.py: the fused residual add + RMSNorm against its reference, and the reference against
transformers' own RMSNorm module (the decode step is compared token for token with transformers)."""

import pytest
import torch
from tolerances import DTYPES, assert_close

from kernels import dispatch
from kernels.add_rms_norm import add_rms_norm, add_rms_norm_reference

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"


def _inputs(shape, dtype, device=DEVICE):
    torch.manual_seed(0)
    x = torch.randn(shape, device=device).to(dtype)
    residual = (torch.randn(shape, device=device) * 4).to(dtype)
    weight = (torch.randn(shape[-1], device=device) * 0.1 + 1).to(dtype)
    return x, residual, weight


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 64), (5, 67)], ids=["pow2", "odd"])
@pytest.mark.parametrize("with_residual", [True, False], ids=["add", "first-layer"])
def test_add_rms_norm_matches_reference(shape, dtype, with_residual):
    x, residual, weight = _inputs(shape, dtype)
    residual = residual if with_residual else None
    with dispatch.force("triton"):
        y, h = add_rms_norm(x, residual, weight, 1e-6)
    y_ref, h_ref = add_rms_norm_reference(x, residual, weight, 1e-6)
    assert y.dtype == dtype and y.shape == x.shape and h.shape == x.shape
    assert_close(h, h_ref, dtype)
    assert_close(y, y_ref, dtype)
    if residual is None:
        assert h is x


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_reference_rounds_as_transformers(dtype):
    from transformers.models.qwen3.modeling_qwen3 import Qwen3RMSNorm

    x, residual, weight = _inputs((3, 96), dtype)
    norm = Qwen3RMSNorm(96, eps=1e-6).to(dtype)
    norm.weight.data.copy_(weight)
    y, h = add_rms_norm_reference(x, residual, weight, 1e-6)
    assert torch.equal(h, residual + x)
    assert torch.equal(y, norm(residual + x))


def test_rejects_other_shapes():
    x = torch.randn(2, 3, 8)
    with pytest.raises(ValueError, match="rows, hidden"):
        add_rms_norm(x, None, torch.ones(8))


def test_reference_backend_runs_the_reference():
    x, residual, weight = _inputs((2, 32), torch.float32, device="cpu")
    with dispatch.force("reference"):
        y, h = add_rms_norm(x, residual, weight)
    y_ref, h_ref = add_rms_norm_reference(x, residual, weight, 1e-6)
    assert torch.equal(y, y_ref) and torch.equal(h, h_ref)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows", [1, 128])
def test_add_rms_norm_gpu_sizes(rows, dtype):
    x, residual, weight = _inputs((rows, 2560), dtype, device="cuda")
    with dispatch.force("triton"):
        y, h = add_rms_norm(x, residual, weight, 1e-6)
    y_ref, h_ref = add_rms_norm_reference(x, residual, weight, 1e-6)
    torch.testing.assert_close(h, h_ref, rtol=0, atol=0)  # one fp32 add, one rounding: the same bits
    assert_close(y, y_ref, dtype)
