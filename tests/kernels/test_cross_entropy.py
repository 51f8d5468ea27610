"""kernels/cross_entropy.py: the chunked fused linear + cross-entropy against the full-logits reference."""

import pytest
import torch
from tolerances import DTYPES, assert_close

from kernels import dispatch
from kernels.cross_entropy import choose_chunk_size, cross_entropy_reference, fused_linear_cross_entropy

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"


def _inputs(tokens, hidden, vocab, dtype, device=DEVICE, ignored=0.25):
    torch.manual_seed(0)
    h = torch.randn(tokens, hidden, device=device).to(dtype).requires_grad_()
    w = (torch.randn(vocab, hidden, device=device) / hidden**0.5).to(dtype).requires_grad_()
    y = torch.randint(0, vocab, (tokens,), device=device)
    y[torch.rand(tokens, device=device) < ignored] = -100
    return h, w, y


def _check(tokens, hidden, vocab, dtype, softcap=None, chunk_size=None, device=DEVICE, ignored=0.25):
    h, w, y = _inputs(tokens, hidden, vocab, dtype, device, ignored)
    with dispatch.force("triton"):
        loss = fused_linear_cross_entropy(h, w, y, softcap=softcap, chunk_size=chunk_size)
    loss.backward()
    dh, dw = h.grad, w.grad
    h.grad = w.grad = None
    ref = cross_entropy_reference(h, w, y, softcap)
    ref.backward()
    assert loss.dtype == torch.float32 and loss.dim() == 0
    assert_close(loss, ref, dtype)
    # gradients of a mean carry a 1/n_valid factor: compare the per-token sums so the table's atol is meaningful
    n = max(int((y != -100).sum()), 1)
    assert_close(dh.float() * n, h.grad.float() * n, dtype)
    assert_close(dw.float() * n, w.grad.float() * n, dtype, summed=tokens)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(32, 64, 256), (37, 48, 301)], ids=["pow2", "odd"])
@pytest.mark.parametrize("softcap", [None, 30.0], ids=["plain", "softcap"])
def test_fused_cross_entropy_matches_reference(shape, dtype, softcap):
    _check(*shape, dtype, softcap=softcap, chunk_size=16)  # 16 tokens a chunk: several chunks and a ragged last one


def test_vocab_larger_than_one_block():
    _check(6, 32, 4096 + 77, torch.float32)  # BLOCK_V is 4096: the online logsumexp spans two blocks


def test_softcap_bites():
    # logits of size ~100 against a cap of 5: the capped and uncapped losses differ a lot, and still match the reference
    h, w, y = _inputs(8, 16, 64, torch.float32)
    with torch.no_grad():
        w.mul_(100.0)
    _check_given(h, w, y, 5.0)


def _check_given(h, w, y, softcap):
    with dispatch.force("triton"):
        loss = fused_linear_cross_entropy(h, w, y, softcap=softcap)
    loss.backward()
    dh, dw = h.grad, w.grad
    h.grad = w.grad = None
    ref = cross_entropy_reference(h, w, y, softcap)
    ref.backward()
    n = int((y != -100).sum())
    assert_close(loss, ref)
    assert_close(dh * n, h.grad * n)
    assert_close(dw * n, w.grad * n)


def test_all_ignored_gives_zero_and_no_nan():
    h, w, y = _inputs(10, 16, 50, torch.float32, ignored=1.0)
    assert (y == -100).all()
    with dispatch.force("triton"):
        loss = fused_linear_cross_entropy(h, w, y)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.count_nonzero(h.grad) == 0 and torch.count_nonzero(w.grad) == 0
    assert cross_entropy_reference(h, w, y).item() == 0.0


def test_frozen_lm_head_gets_no_gradient():
    h, w, y = _inputs(12, 16, 40, torch.float32)
    w.requires_grad_(False)
    with dispatch.force("triton"):
        loss = fused_linear_cross_entropy(h, w, y, chunk_size=5)
    loss.backward()
    ref_h = h.detach().clone().requires_grad_()
    cross_entropy_reference(ref_h, w, y).backward()
    assert w.grad is None
    assert_close(h.grad, ref_h.grad)


def test_batched_shape_and_scaled_upstream_gradient():
    h, w, y = _inputs(12, 16, 40, torch.float32)
    h3 = h.detach().view(3, 4, 16).requires_grad_()
    with dispatch.force("triton"):
        (2.5 * fused_linear_cross_entropy(h3, w, y.view(3, 4))).backward()
    ref_h = h.detach().clone().requires_grad_()
    (2.5 * cross_entropy_reference(ref_h, w, y)).backward()
    assert h3.grad.shape == (3, 4, 16)
    assert_close(h3.grad.view(12, 16), ref_h.grad)


def test_no_grad_gives_the_same_loss():
    h, w, y = _inputs(20, 16, 40, torch.float32)
    with dispatch.force("triton"), torch.no_grad():
        loss = fused_linear_cross_entropy(h, w, y, chunk_size=8)
    assert not loss.requires_grad
    assert_close(loss, cross_entropy_reference(h, w, y).detach())


def test_chunk_size_on_cpu_is_fixed():
    assert choose_chunk_size(1000, 128256, torch.bfloat16, torch.device("cpu")) == 64
    assert choose_chunk_size(10, 128256, torch.bfloat16, torch.device("cpu")) == 10


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(8192, 4096, 128256), (8192, 5120, 151936)], ids=["llama3", "qwen2.5-14b"])
@pytest.mark.parametrize("softcap", [None, 30.0], ids=["plain", "softcap"])
def test_fused_cross_entropy_gpu_sizes(shape, dtype, softcap):
    _check(*shape, dtype, softcap=softcap)
