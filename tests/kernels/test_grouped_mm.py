"""kernels/grouped_mm.py: the grouped (per-expert) matrix product against its reference, forward and both gradients."""

import pytest
import torch
from tolerances import DTYPES, assert_close

from kernels import dispatch
from kernels.grouped_mm import grouped_mm, grouped_mm_reference

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"


def _check(counts, k, n, dtype, transposed):
    torch.manual_seed(0)
    m = sum(counts)
    offsets = torch.tensor(counts, device=DEVICE).cumsum(0).to(torch.int32)
    x = torch.randn(m, k, device=DEVICE).to(dtype).requires_grad_()
    stored = torch.randn(len(counts), n, k) if transposed else torch.randn(len(counts), k, n)
    stored = (stored / k**0.5).to(DEVICE, dtype).requires_grad_()
    dy = torch.randn(m, n, device=DEVICE).to(dtype)

    def run():
        w = stored.transpose(1, 2) if transposed else stored
        return grouped_mm(x, w, offsets)

    with dispatch.force("triton"):
        y = run()
    y.backward(dy)
    dx, dw = x.grad, stored.grad
    x.grad = stored.grad = None
    with dispatch.force("reference"):
        y_ref = run()
    y_ref.backward(dy)
    assert y.dtype == dtype and y.shape == (m, n)
    assert_close(y, y_ref, dtype)
    assert_close(dx, x.grad, dtype)
    assert_close(dw, stored.grad, dtype, summed=max(counts))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "counts,k,n",
    [([64, 64, 64, 64], 64, 128), ([5, 0, 70, 1, 13], 48, 40), ([0, 0, 3], 17, 9)],
    ids=["pow2", "odd-with-empty-group", "leading-empty-groups"],
)
@pytest.mark.parametrize("transposed", [False, True], ids=["kn", "nk-view"])
def test_grouped_mm_matches_reference(counts, k, n, dtype, transposed):
    _check(counts, k, n, dtype, transposed)


def test_grouped_mm_reference_is_a_loop_of_matmuls():
    torch.manual_seed(0)
    x, w = torch.randn(7, 5), torch.randn(3, 5, 4)
    offsets = torch.tensor([2, 2, 7], dtype=torch.int32)
    y = grouped_mm_reference(x, w, offsets)
    torch.testing.assert_close(y[:2], x[:2] @ w[0])
    torch.testing.assert_close(y[2:], x[2:] @ w[2])


def test_grouped_mm_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="do not fit"):
        grouped_mm(torch.ones(4, 3), torch.ones(2, 5, 6), torch.tensor([2, 4]))


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA or torch.cuda.get_device_capability() < (9, 0), reason="needs a GPU of compute 9.0+")
def test_cutlass_grouped_mm_on_request_matches_reference(monkeypatch):
    """TUNESMITH_GROUPED_MM=torch: torch._grouped_mm (bf16) against the reference, both gradients, with the upstream
    gradient of a sum (an expanded, non-contiguous one, which its backward refuses without ContiguousGradient)."""
    from kernels.grouped_mm import cutlass

    monkeypatch.setenv("TUNESMITH_GROUPED_MM", "torch")
    counts, k, n = [40, 0, 7, 81], 64, 128
    offsets = torch.tensor(counts, device=DEVICE).cumsum(0).to(torch.int32)
    x = torch.randn(sum(counts), k, device=DEVICE, dtype=torch.bfloat16, requires_grad=True)
    stored = (torch.randn(len(counts), n, k, device=DEVICE) / k**0.5).to(torch.bfloat16).requires_grad_()
    assert cutlass(x, stored.transpose(1, 2))
    results = []
    for backend in ("triton", "reference"):
        with dispatch.force(backend):
            grouped_mm(x, stored.transpose(1, 2), offsets).float().sum().backward()
        results.append((x.grad, stored.grad))
        x.grad = stored.grad = None
    (dx, dw), (dx_ref, dw_ref) = results
    assert_close(dx, dx_ref, torch.bfloat16)
    assert_close(dw, dw_ref, torch.bfloat16, summed=max(counts))
