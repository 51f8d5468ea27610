"""kernels/fused_matvec.py: add + RMSNorm and SwiGLU computed inside the batch-1 matvec, against the unfused pair's
references (outputs, the stored input v and the residual stream h), the fallbacks to the unfused kernels; on the GPU,
the decode shapes of Qwen3-4B and Llama-8B against the unfused Triton kernels, in a CUDA graph too."""

import pytest
import torch
from tolerances import DTYPES, assert_close

from kernels import dispatch
from kernels import fused_matvec as fused_module
from kernels.add_rms_norm import add_rms_norm
from kernels.fused_matvec import norm_matvec, norm_matvec_reference, swiglu_matvec, swiglu_matvec_reference
from kernels.matvec import MatvecConfig, matvec
from kernels.swiglu import swiglu

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
CONFIGS = {"picked": None, "tiles": MatvecConfig(8, 64), "split-asked": MatvecConfig(4, 32, split_k=3, num_warps=2)}


def _norm_inputs(n, k, dtype, device=DEVICE, rows=1):
    torch.manual_seed(0)
    x = torch.randn(rows, k, device=device).to(dtype)
    residual = (torch.randn(rows, k, device=device) * 4).to(dtype)
    norm_weight = (torch.randn(k, device=device) * 0.1 + 1).to(dtype)
    w = (torch.randn(n, k, device=device) / k**0.5).to(dtype)  # outputs of order 1
    b = torch.randn(n, device=device).to(dtype)
    return x, residual, norm_weight, w, b


def _swiglu_inputs(n, k, dtype, device=DEVICE, rows=1):
    torch.manual_seed(0)
    gate_up = (torch.randn(rows, 2 * k, device=device) * 2).to(dtype)  # one product, as the step's packed gate/up
    w = (torch.randn(n, k, device=device) / k**0.5).to(dtype)
    b = torch.randn(n, device=device).to(dtype)
    return gate_up[:, :k], gate_up[:, k:], w, b


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(64, 256), (37, 300)], ids=["pow2", "odd"])
@pytest.mark.parametrize("with_residual", [True, False], ids=["add", "first-layer"])
@pytest.mark.parametrize("config", list(CONFIGS))
def test_norm_matvec_matches_reference(shape, dtype, with_residual, config):
    x, residual, norm_weight, w, b = _norm_inputs(*shape, dtype)
    residual = residual if with_residual else None
    bias = b if config == "tiles" else None
    with dispatch.force("triton"):
        y, v, h = norm_matvec(x, residual, norm_weight, 1e-6, w, bias, config=CONFIGS[config])
    y_ref, v_ref, h_ref = norm_matvec_reference(x, residual, norm_weight, 1e-6, w, bias)
    assert (y.shape, v.shape, h.shape) == ((1, shape[0]), (1, shape[1]), (1, shape[1]))
    assert y.dtype == v.dtype == h.dtype == dtype
    assert_close(h, h_ref, dtype)
    assert_close(v, v_ref, dtype)
    assert_close(y, y_ref, dtype)
    if residual is None:
        assert h is x


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(64, 256), (37, 300)], ids=["pow2", "odd"])
@pytest.mark.parametrize("config", list(CONFIGS))
def test_swiglu_matvec_matches_reference(shape, dtype, config):
    gate, up, w, b = _swiglu_inputs(*shape, dtype)
    bias = b if config == "tiles" else None
    with dispatch.force("triton"):
        y, v = swiglu_matvec(gate, up, w, bias, config=CONFIGS[config])
    y_ref, v_ref = swiglu_matvec_reference(gate, up, w, bias)
    assert y.shape == (1, shape[0]) and v.shape == (1, shape[1]) and y.dtype == v.dtype == dtype
    assert_close(v, v_ref, dtype)
    assert_close(y, y_ref, dtype)


def test_a_hidden_vector_wider_than_one_first_pass_step(monkeypatch):
    """The norm's sum of squares over several PRE_BLOCK steps (hidden vectors past PRE_BLOCK_MAX), the last partial."""
    monkeypatch.setattr(fused_module, "PRE_BLOCK_MAX", 64)
    x, residual, norm_weight, w, b = _norm_inputs(24, 300, torch.bfloat16)
    with dispatch.force("triton"):
        y, v, h = norm_matvec(x, residual, norm_weight, 1e-6, w, b)
    y_ref, v_ref, h_ref = norm_matvec_reference(x, residual, norm_weight, 1e-6, w, b)
    for got, want in ((y, y_ref), (v, v_ref), (h, h_ref)):
        assert_close(got, want, torch.bfloat16)


def test_tiles_share_the_inputs_work_over_rows():
    """kernels.matvec's measured tile where it has MIN_BLOCK_N rows or more, else MIN_BLOCK_N x 512; never split."""
    assert fused_module.config_for(6144, 2560) == MatvecConfig(16, 512)  # Qwen3-4B q/k/v: the measured one
    assert fused_module.config_for(2560, 9728) == MatvecConfig(8, 512)  # its down: measured 1 x 2048
    assert fused_module.config_for(37, 300) == MatvecConfig(8, 512)
    assert fused_module.config_for(37, 100) == MatvecConfig(8, 128)
    assert fused_module.config_for(64, 256, MatvecConfig(4, 32, split_k=3)) == MatvecConfig(4, 32)


def test_the_fused_kernel_is_the_unfused_kernels_in_fp32():
    """In fp32 every rounding is the identity: v and h equal the unfused kernels' bit for bit where the sum of
    squares agrees, and y is the plain matvec's of that v (the same tiles and sum order)."""
    x, residual, norm_weight, w, b = _norm_inputs(48, 256, torch.float32)
    cfg = MatvecConfig(8, 64)
    with dispatch.force("triton"):
        y, v, h = norm_matvec(x, residual, norm_weight, 1e-6, w, b, config=cfg)
        torch.testing.assert_close(y, matvec(v, w, b, config=cfg), rtol=0, atol=0)
        v_unfused, h_unfused = add_rms_norm(x, residual, norm_weight, 1e-6)
        torch.testing.assert_close(h, h_unfused, rtol=0, atol=0)
        torch.testing.assert_close(v, v_unfused, rtol=1e-6, atol=1e-6)  # rstd's sum of squares in another order
        gate, up, w2, _ = _swiglu_inputs(48, 256, torch.float32)
        y, v = swiglu_matvec(gate, up, w2, config=cfg)
        torch.testing.assert_close(v, swiglu(gate, up), rtol=0, atol=0)
        torch.testing.assert_close(y, matvec(v, w2, config=cfg), rtol=0, atol=0)


@pytest.fixture
def no_kernel(monkeypatch):
    """Makes any launch of the fused kernel fail the test."""

    def launch(*args, **kwargs):
        raise AssertionError("the fused kernel ran where the unfused pair was expected")

    monkeypatch.setattr(fused_module, "fused_matvec_fwd", launch)


def test_fallbacks_run_the_unfused_pair(no_kernel):
    """Several rows (the batched step, a prompt), mixed dtypes, a non-contiguous weight and the reference backend
    take the unfused kernels, with their own results."""
    x, residual, norm_weight, w, b = _norm_inputs(24, 64, torch.float32, rows=3)
    gate, up, w2, b2 = _swiglu_inputs(24, 64, torch.float32, rows=3)
    with dispatch.force("triton"):
        cases = {
            "rows": (x, residual, norm_weight, w, b),
            "norm weight dtype": (x[:1], residual[:1], norm_weight.double(), w, b),
            "non-contiguous weight": (x[:1], residual[:1], norm_weight, torch.randn(64, 24).t(), None),
        }
        for name, (x_, r_, n_, w_, b_) in cases.items():
            y, v, h = norm_matvec(x_, r_, n_, 1e-6, w_, b_)
            v_ref, h_ref = add_rms_norm(x_, r_, n_, 1e-6)
            torch.testing.assert_close((y, v, h), (matvec(v_ref, w_, b_), v_ref, h_ref), rtol=0, atol=0, msg=name)
        y, v = swiglu_matvec(gate, up, w2, b2)
        torch.testing.assert_close((y, v), (matvec(swiglu(gate, up), w2, b2), swiglu(gate, up)), rtol=0, atol=0)
    with dispatch.force("reference"):
        y, v, h = norm_matvec(x[:1], residual[:1], norm_weight, 1e-6, w, b)
        expected = norm_matvec_reference(x[:1], residual[:1], norm_weight, 1e-6, w, b)
        torch.testing.assert_close((y, v, h), expected, rtol=0, atol=0)
        y, v = swiglu_matvec(gate[:1], up[:1], w2)
        torch.testing.assert_close((y, v), swiglu_matvec_reference(gate[:1], up[:1], w2), rtol=0, atol=0)


REAL_SHAPES = {  # (N, K, prologue): the projections whose input the step fuses
    "qwen3-4b qkv": (6144, 2560, "norm"),
    "qwen3-4b gate/up": (19456, 2560, "norm"),
    "qwen3-4b down": (2560, 9728, "swiglu"),
    "llama-8b qkv": (6144, 4096, "norm"),
    "llama-8b gate/up": (28672, 4096, "norm"),
    "llama-8b down": (4096, 14336, "swiglu"),
}


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("name", list(REAL_SHAPES))
def test_fused_matvec_gpu_decode_shapes_against_the_unfused_kernels(name):
    """bf16 at the real shapes: v and h as the unfused kernels make them (rstd's sum order aside), y within the
    matvec's own tolerance of the unfused matvec of the unfused v (other tiles: another sum order), and the same bits
    on every call."""
    n, k, prologue = REAL_SHAPES[name]
    with torch.inference_mode(), dispatch.force("triton"):
        if prologue == "norm":
            x, residual, norm_weight, w, _ = _norm_inputs(n, k, torch.bfloat16, "cuda")
            y, v, h = norm_matvec(x, residual, norm_weight, 1e-6, w)
            v_ref, h_ref = add_rms_norm(x, residual, norm_weight, 1e-6)
            torch.testing.assert_close(h, h_ref, rtol=0, atol=0)
            again = norm_matvec(x, residual, norm_weight, 1e-6, w)[0]
        else:
            gate, up, w, _ = _swiglu_inputs(n, k, torch.bfloat16, "cuda")
            y, v = swiglu_matvec(gate, up, w)
            v_ref = swiglu(gate, up)
            again = swiglu_matvec(gate, up, w)[0]
        assert_close(v, v_ref, torch.bfloat16)
        assert (v != v_ref).float().mean() < 1e-3  # one-ulp flips only where rstd's last bit differs
        assert_close(y, matvec(v_ref, w), torch.bfloat16)
        torch.testing.assert_close(again, y, rtol=0, atol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_fused_matvec_gpu_in_a_cuda_graph():
    x, residual, norm_weight, w, b = _norm_inputs(6144, 2560, torch.bfloat16, "cuda")
    gate, up, w2, _ = _swiglu_inputs(2560, 9728, torch.bfloat16, "cuda")
    with torch.inference_mode(), dispatch.force("triton"):
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = norm_matvec(x, residual, norm_weight, 1e-6, w, b)
            down = swiglu_matvec(gate, up, w2)
        x.copy_(torch.randn_like(x))
        gate.copy_(torch.randn_like(gate))
        graph.replay()
        for got, want in (
            (out, norm_matvec(x, residual, norm_weight, 1e-6, w, b)),
            (down, swiglu_matvec(gate, up, w2)),
        ):
            torch.testing.assert_close(got, want, rtol=0, atol=0)
