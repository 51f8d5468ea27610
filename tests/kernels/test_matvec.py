"""kernels/matvec.py: the batch-1 matvec against F.linear computed in fp32 (tiles, split-K, masks, bias), its
fallbacks to F.linear, and its configs; on the GPU, the decode shapes of Qwen3-4B and Llama-8B against cuBLAS."""

import pytest
import torch
import torch.nn.functional as F
import triton
from tolerances import DTYPES, assert_close

from kernels import dispatch
from kernels import matvec as matvec_module
from kernels.matvec import MatvecConfig, matvec, matvec_reference, pick_config

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"

CONFIGS = {
    "tiles": MatvecConfig(8, 64),
    # 3 splits (not a power of two), 2 warps: per-split K ranges of whole 32-column steps, the last one partial
    "split": MatvecConfig(16, 32, split_k=3, num_warps=2),
}


def _inputs(n, k, dtype, bias=True, device=DEVICE, x_shape=None):
    torch.manual_seed(0)
    w = (torch.randn(n, k, device=device) / k**0.5).to(dtype)  # outputs of order 1
    x = torch.randn(x_shape or (1, k), device=device).to(dtype)
    b = torch.randn(n, device=device).to(dtype) if bias else None
    return x, w, b


def _fp32_reference(x, w, b):
    """F.linear in fp32 on the same (rounded) inputs, rounded once to their dtype: what the kernel computes."""
    return F.linear(x.float(), w.float(), None if b is None else b.float()).to(x.dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(64, 256), (37, 300)], ids=["pow2", "odd"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("config", list(CONFIGS), ids=list(CONFIGS))
def test_matvec_matches_reference(shape, dtype, bias, config):
    x, w, b = _inputs(*shape, dtype, bias)
    with dispatch.force("triton"):
        y = matvec(x, w, b, config=CONFIGS[config])
    assert y.shape == (1, shape[0]) and y.dtype == dtype
    assert_close(y, _fp32_reference(x, w, b), dtype)


@pytest.mark.parametrize("x_shape", [(96,), (1, 96), (1, 1, 96)], ids=["1d", "2d", "3d"])
def test_picked_config_and_token_shapes(x_shape):
    x, w, b = _inputs(40, 96, torch.bfloat16, x_shape=x_shape)
    with dispatch.force("triton"):
        y = matvec(x, w, b)
    assert y.shape == (*x_shape[:-1], 40)
    assert_close(y, _fp32_reference(x, w, b), torch.bfloat16)


def test_splits_past_the_end_of_k_contribute_zero():
    # K=100 in steps of 32 over 8 splits: each split gets one step, splits 4..7 start past K and write zeros
    x, w, b = _inputs(16, 100, torch.float32)
    with dispatch.force("triton"):
        y = matvec(x, w, b, config=MatvecConfig(4, 32, split_k=8, num_stages=2))
    assert_close(y, _fp32_reference(x, w, b), torch.float32)


@pytest.fixture
def no_kernel(monkeypatch):
    """Makes any launch of the Triton kernel fail the test."""

    def launch(*args):
        raise AssertionError("the Triton kernel ran where F.linear was expected")

    monkeypatch.setattr(matvec_module, "matvec_fwd", launch)


def test_fallbacks_take_f_linear(no_kernel):
    x, w, b = _inputs(24, 64, torch.float32)
    cases = {
        "two rows": (torch.randn(2, 64), w, b),
        "non-contiguous weight": (x, torch.randn(64, 24).t(), b),
        "non-contiguous bias": (x, w, torch.randn(24, 2)[:, 0]),
    }
    with dispatch.force("triton"):
        for name, args in cases.items():
            torch.testing.assert_close(matvec(*args), F.linear(*args), rtol=0, atol=0, msg=name)
        for args in ((x, w.to(torch.bfloat16), None), (x, w, b.to(torch.float16))):
            with pytest.raises(RuntimeError):  # mixed dtypes: F.linear's own error
                matvec(*args)
    with dispatch.force("reference"):
        assert torch.equal(matvec(x, w, b), matvec_reference(x, w, b))


def test_inputs_that_need_gradients_get_autograd(no_kernel):
    x, w, b = _inputs(24, 64, torch.float32)
    x.requires_grad_(True)
    with dispatch.force("triton"):
        matvec(x, w, b).sum().backward()
    torch.testing.assert_close(x.grad, w.sum(0, keepdim=True))


def test_wrong_k_is_f_linears_error():
    x, w, _ = _inputs(24, 64, torch.float32)
    with dispatch.force("triton"), pytest.raises(RuntimeError):
        matvec(x[:, :60], w)


def test_config_validation():
    with pytest.raises(ValueError, match="power of two"):
        MatvecConfig(3, 64)
    with pytest.raises(ValueError, match=">= 1"):
        MatvecConfig(4, 64, split_k=0)


REAL_SHAPES = {
    "qwen3-4b qkv": (6144, 2560),
    "qwen3-4b o_proj": (2560, 4096),
    "qwen3-4b gate/up": (19456, 2560),
    "qwen3-4b down": (2560, 9728),
    "qwen3-4b lm_head": (151936, 2560),
    "llama-8b qkv": (6144, 4096),
    "llama-8b o_proj": (4096, 4096),
    "llama-8b gate/up": (28672, 4096),
    "llama-8b down": (4096, 14336),
    "llama-8b lm_head": (128256, 4096),
}


def test_heuristic_fills_the_gpu_and_measured_configs_win(monkeypatch):
    monkeypatch.setattr(matvec_module, "MEASURED", {})
    for n, k in REAL_SHAPES.values():
        cfg = pick_config(n, k)
        assert cfg.block_k <= triton.next_power_of_2(k)
        assert triton.cdiv(n, cfg.block_n) * cfg.split_k >= 2 * 132, (n, k, cfg)  # 2 programs per H100 SM
    assert pick_config(37, 300).block_n == 1  # a tiny weight still gets a valid config
    measured = MatvecConfig(2, 256, 2, 8)
    monkeypatch.setattr(matvec_module, "MEASURED", {(6144, 2560): measured})
    assert pick_config(6144, 2560) is measured


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("name", list(REAL_SHAPES))
def test_matvec_gpu_decode_shapes_against_cublas(name):
    n, k = REAL_SHAPES[name]
    x, w, b = _inputs(n, k, torch.bfloat16, device="cuda", x_shape=(1, 1, k))
    expected = F.linear(x, w)
    with torch.inference_mode(), dispatch.force("triton"):
        for cfg in (None, MatvecConfig(8, 512, split_k=4), MatvecConfig(4, 256, num_warps=8, num_stages=3)):
            # both round an fp32 sum of k terms once; the orders differ, so up to one bf16 ulp apart
            assert_close(matvec(x, w, config=cfg), expected, torch.bfloat16)
        assert_close(matvec(x, w, b), F.linear(x, w, b), torch.bfloat16)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_matvec_gpu_in_a_cuda_graph():
    x, w, b = _inputs(2560, 9728, torch.bfloat16, device="cuda", x_shape=(1, 1, 9728))
    with torch.inference_mode(), dispatch.force("triton"):
        for cfg in (MatvecConfig(4, 1024), MatvecConfig(8, 512, split_k=4)):
            eager = matvec(x, w, b, config=cfg)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out = matvec(x, w, b, config=cfg)
            x.copy_(torch.randn_like(x))
            graph.replay()
            torch.testing.assert_close(out, matvec(x, w, b, config=cfg), rtol=0, atol=0)  # deterministic
            assert not torch.equal(out, eager)
