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
def test_grouped_mm_matches_reference(counts, k, n, dtype, transposed, monkeypatch):
    monkeypatch.setenv("TUNESMITH_GROUPED_MM", "triton")  # the Triton kernel on a GPU where CUTLASS would run
    _check(counts, k, n, dtype, transposed)


def test_cutlass_reads_row_or_column_major_matrices_with_aligned_rows():
    """torch._grouped_mm's layout rule (it raises "Invalid strides/sizes" otherwise): each matrix row- or
    column-major, its leading stride a multiple of 16 bytes. A PEFT expert factor's permuted view is neither."""
    from kernels.grouped_mm import _dense_matrices

    stack = torch.zeros(4, 16, 32, dtype=torch.bfloat16)
    assert _dense_matrices(stack) and _dense_matrices(stack.transpose(1, 2))
    assert not _dense_matrices(torch.zeros(32, 16, 4, dtype=torch.bfloat16).permute(2, 1, 0))  # stride 1 on experts
    assert not _dense_matrices(torch.zeros(4, 16, 12, dtype=torch.bfloat16)[:, :, :4])  # rows of 24 bytes


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
@pytest.mark.parametrize("layout", ["nk-view", "permuted"])
def test_cutlass_grouped_mm_matches_reference(layout):
    """torch._grouped_mm (bf16, the default on compute 9.0+) against the reference, both gradients, with the upstream
    gradient of a sum (an expanded, non-contiguous one, which its backward refuses without ContiguousGradient); a
    permuted w (as PEFT hands an expert factor) is copied contiguous first, and its gradient still reaches it."""
    from kernels.grouped_mm import cutlass

    counts, k, n = [40, 0, 7, 81], 64, 128
    offsets = torch.tensor(counts, device=DEVICE).cumsum(0).to(torch.int32)
    x = torch.randn(sum(counts), k, device=DEVICE, dtype=torch.bfloat16, requires_grad=True)
    shape = (len(counts), n, k) if layout == "nk-view" else (n, k, len(counts))
    stored = (torch.randn(shape, device=DEVICE) / k**0.5).to(torch.bfloat16).requires_grad_()

    def w():  # [G, K, N]
        return stored.transpose(1, 2) if layout == "nk-view" else stored.permute(2, 1, 0)

    assert cutlass(x, w()) == (layout == "nk-view")
    results = []
    for backend in ("triton", "reference"):
        with dispatch.force(backend):
            grouped_mm(x, w(), offsets).float().sum().backward()
        results.append((x.grad, stored.grad))
        x.grad = stored.grad = None
    (dx, dw), (dx_ref, dw_ref) = results
    assert_close(dx, dx_ref, torch.bfloat16)
    assert_close(dw, dw_ref, torch.bfloat16, summed=max(counts))


def test_wide_products_get_the_largest_tiles_each_card_holds():
    """kernels.grouped_mm.forward_tiles: Qwen3-30B-A3B's expert products get WIDE_TILES by the card's shared memory
    (their pipelined operand tiles within it; tests/kernels/test_compile_targets.py compiles them for each card);
    the LoRA factors' thin products, fp32 and the interpreter keep TILES."""
    from kernels import target
    from kernels.grouped_mm import TILES, forward_tiles

    x, w = torch.zeros(8, 2048, dtype=torch.float16), torch.zeros(4, 2048, 1536, dtype=torch.float16)
    assert forward_tiles(x, w) == TILES  # the CPU
    picked = {}
    for name, shared in (("T4", 64), ("RTX 4090", 99), ("A100", 163), ("H100", 227)):
        with target.emulate(target.Target(90, shared * 1024)):
            tiles = picked[name] = forward_tiles(x, w)
            assert (tiles.m * tiles.k + tiles.k * tiles.n) * 2 * tiles.stages <= shared * 1024, name
            assert forward_tiles(x, torch.zeros(4, 2048, 16, dtype=torch.float16)) == TILES  # a LoRA factor
            assert forward_tiles(x.float(), w.float()) == TILES
    assert (picked["H100"].m, picked["H100"].n, picked["H100"].k) == (128, 256, 64) == tuple(picked["A100"][:3])
    assert picked["T4"] != picked["RTX 4090"] != picked["A100"]
