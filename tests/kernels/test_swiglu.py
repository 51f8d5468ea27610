"""kernels/swiglu.py: SwiGLU and GeGLU (exact, tanh) against the reference, forward and both gradients."""

import pytest
import torch
from tolerances import DTYPES, assert_close

from kernels import dispatch
from kernels.swiglu import geglu, swiglu, swiglu_reference

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"


def _check(shape, dtype, activation, device=DEVICE):
    torch.manual_seed(0)
    # scale 3 reaches the saturated tails of sigmoid / erf / tanh as well as the curved middle
    g = (torch.randn(shape, device=device) * 3).to(dtype).requires_grad_()
    u = torch.randn(shape, dtype=dtype, device=device, requires_grad=True)
    dy = torch.randn(shape, dtype=dtype, device=device)
    with dispatch.force("triton"):
        y = swiglu(g, u, activation)
    y.backward(dy)
    dg, du = g.grad, u.grad
    g.grad = u.grad = None
    y_ref = swiglu_reference(g, u, activation)
    y_ref.backward(dy)
    assert y.dtype == dtype and y.shape == g.shape
    assert_close(y, y_ref, dtype)
    assert_close(dg, g.grad, dtype)
    assert_close(du, u.grad, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(4, 16, 256), (3, 5, 173)], ids=["pow2", "odd"])
@pytest.mark.parametrize("activation", ["silu", "gelu", "gelu_tanh"])
def test_swiglu_matches_reference(shape, dtype, activation):
    _check(shape, dtype, activation)


def test_geglu_names_the_gelu():
    g, u = torch.randn(8, 24), torch.randn(8, 24)
    with dispatch.force("triton"):
        assert_close(geglu(g, u, "tanh"), swiglu_reference(g, u, "gelu_tanh"))
        assert_close(geglu(g, u, "none"), swiglu_reference(g, u, "gelu"))


def test_tanh_gelu_saturates_without_nan():
    g = torch.tensor([-1e4, -50.0, 0.0, 50.0, 1e4], requires_grad=True)
    u = torch.ones(5)
    with dispatch.force("triton"):
        y = swiglu(g, u, "gelu_tanh")
    y.sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(g.grad).all()
    assert_close(y.detach(), swiglu_reference(g.detach(), u, "gelu_tanh"))


def test_rejects_unknown_activation():
    with pytest.raises(ValueError, match="activation"):
        swiglu(torch.ones(2), torch.ones(2), "relu")


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ["silu", "gelu", "gelu_tanh"])
def test_swiglu_gpu_sizes(dtype, activation):
    _check((8192, 14336), dtype, activation, device="cuda")
