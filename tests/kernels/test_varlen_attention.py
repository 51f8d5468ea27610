"""kernels/varlen_attention.py: padding-free causal attention (forward and dq/dk/dv) against its reference, and the
reference against torch SDPA run per segment."""

import pytest
import torch
import torch.nn.functional as F
from tolerances import DTYPES, assert_close

from kernels import dispatch
from kernels.varlen_attention import (
    Blocks,
    varlen_attention,
    varlen_attention_bwd,
    varlen_attention_fwd,
    varlen_attention_reference,
)

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"


def _inputs(lengths, hq, hkv, d, dtype, device=DEVICE, seed=0):
    """q, k, v (leaves needing grad) over the concatenated segments, cu_seqlens, and an output gradient."""
    gen = torch.Generator().manual_seed(seed)
    total = sum(lengths)
    q, k, v = (torch.randn(total, h, d, generator=gen) for h in (hq, hkv, hkv))
    k = k * 2  # scores of a few units: a peaked softmax
    leaves = [t.to(device=device, dtype=dtype).requires_grad_() for t in (q, k, v)]
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=device)
    grad = torch.randn(total, hq, d, generator=gen).to(device=device, dtype=dtype)
    return leaves, cu, grad


def _check(lengths, hq, hkv, d, dtype, softcap=0.0, window=0, device=DEVICE):
    (q, k, v), cu, grad = _inputs(lengths, hq, hkv, d, dtype, device)
    scale = d**-0.5
    with dispatch.force("triton"):
        out = varlen_attention(q, k, v, cu, scale, softcap, window)
    ref = varlen_attention_reference(q, k, v, cu, scale, softcap, window)
    assert out.shape == q.shape and out.dtype == dtype
    # The kernel rounds P and dS to the input dtype before its matrix products (as flash attention does), so each
    # output carries the noise of one rounding at the scale of its largest terms, not of each element: atol grows
    # with the output's largest magnitude. dk and dv sum the G = Hq / Hkv heads of a group: G such noises.
    assert_close(out, ref, dtype, summed=_scale(ref))
    ours = torch.autograd.grad(out, (q, k, v), grad)
    theirs = torch.autograd.grad(ref, (q, k, v), grad)
    for name, a, b in zip("qkv", ours, theirs, strict=True):
        assert a.dtype == dtype, name
        assert_close(a, b, dtype, summed=_scale(b) * (1 if name == "q" else hq // hkv))


def _scale(t: torch.Tensor) -> float:
    """assert_close's `summed` that makes atol proportional to t's largest magnitude (at least the table's)."""
    return max(1.0, t.abs().max().item()) ** 2


SHAPES = {  # lengths, Hq, Hkv, D; the CPU tiles are 16 rows, so blocks straddle segment boundaries
    "pow2": ([7, 16, 1, 23, 17], 4, 2, 16),
    "odd": ([1, 30, 0, 12, 1, 5], 3, 1, 24),  # D padded to 32, one KV head for three query heads
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_varlen_attention_matches_reference(shape, dtype):
    _check(*SHAPES[shape], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "softcap, window", [(5.0, 0), (0.0, 5), (2.0, 20)], ids=["softcap", "window", "softcap-window-longer-than-block"]
)
def test_softcap_and_window(softcap, window, dtype):
    _check([9, 1, 40, 0, 14], 4, 2, 16, dtype, softcap, window)


@pytest.mark.parametrize(
    "lengths",
    [[1] * 20, [0, 0, 5, 0, 0, 11, 0], [50], [3, 45, 2], [2, 1, 3, 1, 4, 1, 2, 5, 1, 1, 3, 2, 6, 1, 2, 1]],
    ids=["all-length-1", "empty-segments", "one-long-segment", "long-middle-segment", "many-segments"],
)
def test_segment_layouts(lengths):
    _check(lengths, 2, 2, 16, torch.float32)


@pytest.mark.skipif(CUDA, reason="the CPU tiles; the GPU tests run the GPU's")
def test_tiles_of_other_shapes():
    """Query and key tiles of different sizes (as the GPU's are) cover the same ranges as square ones."""
    (q, k, v), cu, grad = _inputs([9, 1, 40, 0, 14], 4, 2, 16, torch.float32)
    blocks = (Blocks(32, 16, 4, 1), Blocks(16, 32, 4, 1), Blocks(32, 16, 4, 1))
    with torch.no_grad():
        out, lse = varlen_attention_fwd(q, k, v, cu, 0.25, 0.0, 7, blocks=blocks[0])
        ours = varlen_attention_bwd(grad, q, k, v, out, lse, cu, 0.25, 0.0, 7, blocks=blocks)
    ref = varlen_attention_reference(q, k, v, cu, 0.25, window=7)
    assert_close(out, ref)
    for a, b in zip(ours, torch.autograd.grad(ref, (q, k, v), grad), strict=True):
        assert_close(a, b)


def test_the_reference_backend_runs_the_reference():
    (q, k, v), cu, _ = _inputs([4, 7], 2, 1, 16, torch.float32, device="cpu")
    with dispatch.force("reference"):
        out = varlen_attention(q, k, v, cu, 0.25)
    assert torch.equal(out, varlen_attention_reference(q, k, v, cu, 0.25))


def test_bad_inputs_are_errors():
    (q, k, v), cu, _ = _inputs([4, 7], 4, 2, 16, torch.float32, device="cpu")
    with pytest.raises(ValueError, match="q \\(11, 4, 16\\)"):
        varlen_attention(q, k[:, :1].expand(11, 3, 16), v, cu, 0.25)
    with pytest.raises(ValueError, match="int32"):
        varlen_attention(q, k, v, cu.long(), 0.25)
    with pytest.raises(ValueError, match="share one"):
        varlen_attention(q, k.half(), v, cu, 0.25)
    with pytest.raises(ValueError, match="head dim 320"):
        big = torch.zeros(11, 2, 320)
        varlen_attention(big, big, big, cu, 0.25)


def _per_segment(q, k, v, cu, scale, window=0):
    """Each segment alone through SDPA: causal, or with a band of `window` positions as its boolean mask."""
    outs = []
    bounds = cu.tolist()
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        if b > a:
            qs, ks, vs = (t[a:b].transpose(0, 1) for t in (q, k, v))
            if window:
                band = torch.ones(b - a, b - a, dtype=torch.bool).tril().triu(1 - window)
                out = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=band, scale=scale, enable_gqa=True)
            else:
                out = F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, scale=scale, enable_gqa=True)
            outs.append(out.transpose(0, 1))
    return torch.cat(outs)


@pytest.mark.parametrize("window", [0, 4], ids=["causal", "window"])
def test_reference_is_sdpa_per_segment(window):
    (q, k, v), cu, _ = _inputs([5, 1, 0, 12, 3, 0], 4, 2, 16, torch.float32, device="cpu")
    with torch.no_grad():
        ref = varlen_attention_reference(q, k, v, cu, 0.25, window=window)
        torch.testing.assert_close(ref, _per_segment(q, k, v, cu, 0.25, window), rtol=2e-5, atol=2e-5)


def test_reference_softcap_is_gemma2_eager_attention_per_segment():
    (q, k, v), cu, _ = _inputs([6, 10], 2, 2, 16, torch.float32, device="cpu")
    with torch.no_grad():
        ref = varlen_attention_reference(q, k, v, cu, 0.25, softcap=3.0)
        for a, b in [(0, 6), (6, 16)]:
            scores = torch.einsum("ihd,jhd->hij", q[a:b], k[a:b]) * 0.25
            scores = torch.tanh(scores / 3.0) * 3.0  # transformers' Gemma 2 eager_attention_forward
            causal = torch.ones(b - a, b - a, dtype=torch.bool).tril()
            probs = scores.masked_fill(~causal, float("-inf")).softmax(-1)
            expected = torch.einsum("hij,jhd->ihd", probs, v[a:b])
            torch.testing.assert_close(ref[a:b], expected, rtol=2e-5, atol=2e-5)


def _gpu_lengths(total, segments, seed=0):
    """`segments` random lengths summing to `total` (log-normal, like real examples)."""
    gen = torch.Generator().manual_seed(seed)
    weights = torch.empty(segments).log_normal_(0.0, 0.8, generator=gen)
    lengths = (weights / weights.sum() * total).floor().long().clamp(min=1)
    lengths[-1] += total - lengths.sum()
    return lengths.tolist()


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("d", [128, 256])
@pytest.mark.parametrize("softcap, window", [(0.0, 0), (50.0, 4096)], ids=["plain", "gemma2"])
def test_varlen_attention_gpu_sizes(d, softcap, window):
    _check(_gpu_lengths(8192, 30), 32, 8, d, torch.bfloat16, softcap, window, device="cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("dtype, d", [(torch.float32, 128), (torch.float16, 128), (torch.bfloat16, 80)])
def test_varlen_attention_gpu_dtypes_and_padded_head_dim(dtype, d):
    _check(_gpu_lengths(1024, 5), 8, 2, d, dtype, device="cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_one_cuda_graph_serves_other_segment_lengths():
    (q, k, v), cu, grad = _inputs(_gpu_lengths(2048, 8), 8, 2, 128, torch.bfloat16, device="cuda")

    def step():
        out = varlen_attention(q, k, v, cu, 0.1)
        return (out, *torch.autograd.grad(out, (q, k, v), grad))

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()  # compiles the kernels outside the capture
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step()
    other = _gpu_lengths(2048, 8, seed=1)
    cu.copy_(torch.tensor([0, *torch.tensor(other).cumsum(0).tolist()], dtype=torch.int32))
    graph.replay()
    ref = varlen_attention_reference(q, k, v, cu, 0.1)
    expected = (ref, *torch.autograd.grad(ref, (q, k, v), grad))
    for a, b in zip(captured, expected, strict=True):
        assert_close(a, b, torch.bfloat16, summed=_scale(b) * (1 if a.shape[1] == 8 else 4))
