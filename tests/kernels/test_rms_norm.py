"""kernels/rms_norm.py: the Triton RMSNorm against its reference, forward and both gradients."""

import pytest
import torch
from tolerances import DTYPES, assert_close

from kernels import dispatch
from kernels.rms_norm import rms_norm, rms_norm_reference

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"


def _check(shape, dtype, offset, device=DEVICE, weight_dtype=None):
    torch.manual_seed(0)
    n = shape[-1]
    x = torch.randn(shape, dtype=dtype, device=device, requires_grad=True)
    w = (torch.randn(n, device=device) * 0.1 + (0.0 if offset else 1.0)).to(weight_dtype or dtype).requires_grad_()
    dy = torch.randn(shape, dtype=dtype, device=device)

    with dispatch.force("triton"):
        y = rms_norm(x, w, 1e-6, offset)
    y.backward(dy)
    dx, dw = x.grad, w.grad
    x.grad = w.grad = None
    y_ref = rms_norm_reference(x, w, 1e-6, offset)
    y_ref.backward(dy)

    assert y.dtype == dtype and y.shape == x.shape
    assert_close(y, y_ref, dtype)
    assert_close(dx, x.grad, dtype)
    assert_close(dw, w.grad, dtype, summed=x.numel() // n)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 8, 64), (3, 7, 67)], ids=["pow2", "odd"])
@pytest.mark.parametrize("offset", [0.0, 1.0], ids=["llama", "gemma"])
def test_rms_norm_matches_reference(shape, dtype, offset):
    _check(shape, dtype, offset)


@pytest.mark.parametrize("shape", [(2, 8, 64), (3, 7, 67), (5, 3, 4, 128)], ids=["pow2", "odd", "per-head"])
def test_rms_norm_frozen_weight_gives_dx_alone(shape):
    """A LoRA's norms are frozen: the backward then skips dw (one row per program) and dx is still the reference's."""
    torch.manual_seed(1)
    x = torch.randn(shape, dtype=torch.bfloat16, device=DEVICE, requires_grad=True)
    w = torch.randn(shape[-1], device=DEVICE).to(torch.bfloat16) * 0.1 + 1.0
    dy = torch.randn(shape, dtype=torch.bfloat16, device=DEVICE)
    with dispatch.force("triton"):
        y = rms_norm(x, w, 1e-6)
    (dx,) = torch.autograd.grad(y, x, dy)
    x_ref = x.detach().requires_grad_()
    (dx_ref,) = torch.autograd.grad(rms_norm_reference(x_ref, w, 1e-6), x_ref, dy)
    assert w.grad is None and not w.requires_grad
    assert_close(dx, dx_ref, torch.bfloat16)


def test_rms_norm_fp32_weight_with_half_input():
    _check((4, 96), torch.bfloat16, 0.0, weight_dtype=torch.float32)


def test_rms_norm_largest_hidden():
    _check((2, 16384), torch.float32, 0.0)


def test_rms_norm_rejects_too_wide_rows():
    x = torch.randn(1, 16385, device=DEVICE)
    with dispatch.force("triton"), pytest.raises(ValueError, match="16384"):
        rms_norm(x, torch.ones(16385, device=DEVICE))


def test_reference_backend_runs_the_reference():
    x, w = torch.randn(3, 32), torch.randn(32)
    with dispatch.force("reference"):
        torch.testing.assert_close(rms_norm(x, w), rms_norm_reference(x, w), rtol=0, atol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden", [4096, 5120])
@pytest.mark.parametrize("offset", [0.0, 1.0], ids=["llama", "gemma"])
def test_rms_norm_gpu_sizes(hidden, dtype, offset):
    _check((8192, hidden), dtype, offset, device="cuda")
