"""kernels/lora.py: the fused LoRA linear, forward and every gradient (x, A, B), against its pure-torch reference,
on a 16-bit base and on a bitsandbytes NF4 base (dequantized through kernels.nf4 into the shared buffer)."""

import pytest
import torch
from tolerances import DTYPES, assert_close

from kernels import dispatch
from kernels.lora import _BUFFERS, lora_linear, lora_linear_group, lora_linear_reference

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _inputs(dtype, n_in=48, n_out=40, rank=4, bias=True):
    gen = torch.Generator(device="cpu").manual_seed(0)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen) * scale).to(DEVICE, dtype)

    x = rand(2, 5, n_in).requires_grad_()
    w = rand(n_out, n_in, scale=0.1)
    A = rand(rank, n_in, scale=0.1).requires_grad_()
    B = rand(n_out, rank, scale=0.1).requires_grad_()
    b = rand(n_out, scale=0.1) if bias else None
    return x, w, A, B, b


def _grads(y, dy, *leaves):
    return torch.autograd.grad(y, leaves, dy)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_lora_linear_matches_reference_16bit(dtype, bias):
    x, w, A, B, b = _inputs(dtype, bias=bias)
    y = lora_linear(x, w, A, B, 2.0, b)
    y_ref = lora_linear_reference(x, w, A, B, 2.0, b)
    assert y.shape == (2, 5, 40) and y.dtype == dtype
    assert_close(y, y_ref)
    dy = torch.randn_like(y)
    for got, want, rows in zip(_grads(y, dy, x, A, B), _grads(y_ref, dy, x, A, B), (1, 10, 10), strict=True):
        assert got.dtype == want.dtype
        assert_close(got, want, summed=rows)


def test_lora_linear_gradients_in_fp32_params_under_bf16_compute():
    """Adapters kept in fp32 (as PEFT keeps them) with a bf16 base: grads come back fp32, close to the reference."""
    x, w, A, B, b = _inputs(torch.bfloat16)
    A32, B32 = A.detach().float().requires_grad_(), B.detach().float().requires_grad_()
    y = lora_linear(x, w, A32, B32, 0.5, b)
    dy = torch.randn_like(y)
    dx, dA, dB = _grads(y, dy, x, A32, B32)
    assert y.dtype == torch.bfloat16 and dA.dtype == dB.dtype == torch.float32
    y_ref = lora_linear_reference(x.float(), w.float(), A32, B32, 0.5, b.float())
    want = _grads(y_ref, dy.float(), x, A32, B32)
    assert_close(y, y_ref.to(torch.bfloat16))
    for got, ref in zip((dx, dA, dB), want, strict=True):
        assert_close(got.float(), ref.float(), dtype=torch.bfloat16, summed=10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_lora_linear_nf4_base(dtype):
    """A 4-bit base gives the result of the reference on the dequantized weight, forward and backward, and every
    layer shares one dequantization buffer."""
    bnb_functional = pytest.importorskip("bitsandbytes.functional")
    x, w, A, B, _ = _inputs(dtype, n_in=64, n_out=64)
    packed, state = bnb_functional.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=True)
    dense = bnb_functional.dequantize_4bit(packed, state)
    with dispatch.force("triton"):
        y = lora_linear(x, packed, A, B, 2.0, quant_state=state)
        dy = torch.randn_like(y)
        got = _grads(y, dy, x, A, B)
    y_ref = lora_linear_reference(x, dense, A, B, 2.0)
    assert_close(y, y_ref)
    for g, want in zip(got, _grads(y_ref, dy, x, A, B), strict=True):
        assert_close(g, want, summed=10)
    buffers = [t for (dev, dt), t in _BUFFERS.items() if dt == state.dtype]
    assert len(buffers) == 1 and buffers[0].numel() >= 64 * 64


@pytest.mark.parametrize("dtype", DTYPES)
def test_lora_linear_group_matches_separate_projections(dtype):
    """Q, K, V (different widths and ranks) in one op: each output and every gradient as the reference gives them."""
    x, w, A, B, b = _inputs(dtype)
    _, w2, A2, B2, _ = _inputs(dtype, n_out=24, rank=2)
    projections = [(w, A, B, 2.0, b, None), (w2, A2, B2, 0.5, None, None)]
    outs = lora_linear_group(x, projections)
    refs = [lora_linear_reference(x, p[0], p[1], p[2], p[3], p[4]) for p in projections]
    dys = [torch.randn_like(y) for y in outs]
    leaves = (x, A, B, A2, B2)
    got = torch.autograd.grad(outs, leaves, dys)
    want = torch.autograd.grad(refs, leaves, dys)
    for y, ref in zip(outs, refs, strict=True):
        assert_close(y, ref)
    for g, ref in zip(got, want, strict=True):
        assert_close(g, ref, summed=10)


@pytest.mark.parametrize("dtype", DTYPES)
def test_lora_linear_group_packed_gradient_is_the_separate_gradients(dtype):
    """Adapters packed into one tensor ([A_1; A_2] then B_1, B_2, flattened; the A's and B's views of it): the same
    outputs, and one gradient for the packed tensor holding exactly each A's and B's gradient in that layout."""
    x, w, A, B, b = _inputs(dtype)
    _, w2, A2, B2, _ = _inputs(dtype, n_out=24, rank=2)
    separate = [(w, A, B, 2.0, b, None), (w2, A2, B2, 0.5, None, None)]
    packed = torch.cat([t.detach().reshape(-1) for t in (A, A2, B, B2)]).requires_grad_()
    views, start = [], 0
    for t in (A, A2, B, B2):
        views.append(packed.detach()[start : start + t.numel()].view(t.shape))
        start += t.numel()
    projections = [(w, views[0], views[2], 2.0, b, None), (w2, views[1], views[3], 0.5, None, None)]
    outs = lora_linear_group(x, projections, packed=packed)
    refs = lora_linear_group(x, separate)
    dys = [torch.randn_like(y) for y in outs]
    dx, d_packed = torch.autograd.grad(outs, (x, packed), dys)
    want = torch.autograd.grad(refs, (x, A, A2, B, B2), dys)
    for y, ref in zip(outs, refs, strict=True):
        assert_close(y, ref)
    assert_close(dx, want[0])
    assert d_packed.shape == packed.shape and d_packed.dtype == packed.dtype
    assert_close(d_packed, torch.cat([g.reshape(-1) for g in want[1:]]))


@pytest.mark.parametrize("dtype", DTYPES)
def test_lora_linear_group_unused_outputs_keep_every_gradient(dtype):
    """`output_unused` (a checkpointed layer's recompute, whose output only feeds a sum): the outputs are zeros of
    the right shape that own no memory, and the gradients are exactly those of the full op."""
    x, w, A, B, b = _inputs(dtype)
    _, w2, A2, B2, _ = _inputs(dtype, n_out=24, rank=2)
    projections = [(w, A, B, 2.0, b, None), (w2, A2, B2, 0.5, None, None)]
    full = lora_linear_group(x, projections)
    skipped = lora_linear_group(x, projections, output_unused=True)
    for y, z in zip(full, skipped, strict=True):
        assert z.shape == y.shape and z.dtype == y.dtype and z.stride() == (0, 0, 0)
        assert not z.any()
    dys = [torch.randn_like(y) for y in full]
    leaves = (x, A, B, A2, B2)
    got, want = torch.autograd.grad(skipped, leaves, dys), torch.autograd.grad(full, leaves, dys)
    for g, ref in zip(got, want, strict=True):
        assert torch.equal(g, ref)


@pytest.mark.parametrize("dtype", DTYPES)
def test_lora_linear_group_writes_into_buffers_and_takes_given_outputs_back(dtype):
    """A checkpointed layer's two passes: the first writes the outputs into buffers (`out`: the same values, and the
    returned outputs are those buffers' memory); the recompute hands them back (`given`): it returns those values,
    and the gradients are exactly those of computing them. A given output of the wrong shape is refused."""
    x, w, A, B, b = _inputs(dtype)
    _, w2, A2, B2, _ = _inputs(dtype, n_out=24, rank=2)
    projections = [(w, A, B, 2.0, b, None), (w2, A2, B2, 0.5, None, None)]
    full = lora_linear_group(x, projections)
    buffers = [torch.full_like(y, float("nan")).detach() for y in full]
    with torch.no_grad():
        written = lora_linear_group(x, projections, out=buffers)
    for y, z, buffer in zip(full, written, buffers, strict=True):
        assert torch.equal(buffer, y.detach()) and z.data_ptr() == buffer.data_ptr()
    given = lora_linear_group(x, projections, given=buffers)
    dys = [torch.randn_like(y) for y in full]
    leaves = (x, A, B, A2, B2)
    got, want = torch.autograd.grad(given, leaves, dys), torch.autograd.grad(full, leaves, dys)
    for y, ref in zip(given, full, strict=True):
        assert torch.equal(y, ref)
    for g, ref in zip(got, want, strict=True):
        assert torch.equal(g, ref)
    with pytest.raises(ValueError, match="given output 1"):
        lora_linear_group(x, projections, given=[buffers[0], buffers[1][..., :3]])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_lora_linear_group_keeps_dequantized_weights_for_the_backward(dtype, monkeypatch):
    """`keep_dequantized` (a checkpointed layer's recompute): the NF4 weights dequantized in the forward are reused by
    the backward, which dequantizes nothing; outputs and gradients are exactly those without it."""
    import kernels.lora as lora

    bnb_functional = pytest.importorskip("bitsandbytes.functional")
    x, w, A, B, _ = _inputs(dtype, n_in=64, n_out=64)
    _, w2, A2, B2, _ = _inputs(dtype, n_in=64, n_out=32, rank=2)
    quantized = [bnb_functional.quantize_4bit(t, blocksize=64, quant_type="nf4") for t in (w, w2)]
    (q1, s1), (q2, s2) = quantized
    projections = [(q1, A, B, 2.0, None, s1), (q2, A2, B2, 0.5, None, s2)]
    calls = []
    dequantize = lora.nf4_dequantize_state
    monkeypatch.setattr(lora, "nf4_dequantize_state", lambda *a, **k: calls.append(1) or dequantize(*a, **k))
    leaves = (x, A, B, A2, B2)
    with dispatch.force("triton"):
        plain = lora_linear_group(x, projections)
        dys = [torch.randn_like(y) for y in plain]
        want = torch.autograd.grad(plain, leaves, dys)
        calls.clear()
        kept = lora_linear_group(x, projections, keep_dequantized=True)
        assert len(calls) == 2
        got = torch.autograd.grad(kept, leaves, dys)
        assert len(calls) == 2  # the backward used the kept weights
    for y, ref in zip(kept, plain, strict=True):
        assert torch.equal(y, ref)
    for g, ref in zip(got, want, strict=True):
        assert torch.equal(g, ref)
