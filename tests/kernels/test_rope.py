"""kernels/rope.py: the Triton RoPE against its reference and transformers; the cos/sin tables against transformers."""

import pytest
import torch
from tolerances import DTYPES, assert_close

from kernels import dispatch
from kernels.rope import rope, rope_cos_sin, rope_inv_freq, rope_reference

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"


def _inputs(bsz, seq, hq, hk, dim, dtype, device=DEVICE, packed=True):
    torch.manual_seed(0)
    q = torch.randn(bsz, seq, hq, dim, dtype=dtype, device=device, requires_grad=True)
    k = torch.randn(bsz, seq, hk, dim, dtype=dtype, device=device, requires_grad=True)
    if packed:  # two packed documents per row: positions restart at 0 mid-row
        cut = seq // 2
        pos = torch.cat([torch.arange(cut), torch.arange(seq - cut) + 3]).repeat(bsz, 1)
    else:
        pos = torch.arange(seq)[None].expand(bsz, seq)
    cos, sin = rope_cos_sin(*rope_inv_freq(dim, 10000.0), max_positions=seq + 8)
    return q, k, cos.to(device), sin.to(device), pos.to(device)


def _check(bsz, seq, hq, hk, dim, dtype, device=DEVICE):
    q, k, cos, sin, pos = _inputs(bsz, seq, hq, hk, dim, dtype, device)
    dq_out, dk_out = torch.randn_like(q), torch.randn_like(k)
    with dispatch.force("triton"):
        qo, ko = rope(q, k, cos, sin, pos)
    torch.autograd.backward((qo, ko), (dq_out, dk_out))
    dq, dk = q.grad, k.grad
    q.grad = k.grad = None
    qr, kr = rope_reference(q, k, cos, sin, pos)
    torch.autograd.backward((qr, kr), (dq_out, dk_out))
    assert_close(qo, qr, dtype)
    assert_close(ko, kr, dtype)
    assert_close(dq, q.grad, dtype)
    assert_close(dk, k.grad, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 8, 4, 2, 64), (1, 7, 3, 1, 80)], ids=["pow2", "odd"])
def test_rope_matches_reference(shape, dtype):
    _check(*shape, dtype)


@pytest.mark.parametrize("dim", [64, 80, 96, 128, 256])
def test_rope_head_dims(dim):
    _check(1, 5, 2, 1, dim, torch.float32)


def test_rope_matches_transformers_apply_rotary_pos_emb():
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    q, k, cos, sin, pos = _inputs(2, 9, 4, 2, 64, torch.float32)
    with dispatch.force("triton"):
        qo, ko = rope(q.detach(), k.detach(), cos, sin, pos)
    # HF layout (B, H, S, D) and full-width (B, S, D) tables
    full_cos = torch.cat([cos, cos], -1)[pos]
    full_sin = torch.cat([sin, sin], -1)[pos]
    qh, kh = apply_rotary_pos_emb(q.detach().transpose(1, 2), k.detach().transpose(1, 2), full_cos, full_sin)
    assert_close(qo, qh.transpose(1, 2))
    assert_close(ko, kh.transpose(1, 2))


def test_rope_on_hf_layout_view_and_in_place():
    q, k, cos, sin, pos = _inputs(2, 6, 4, 2, 64, torch.float32)
    expected = rope_reference(q.detach(), k.detach(), cos, sin, pos)
    qh = q.detach().transpose(1, 2).contiguous().requires_grad_()  # (B, H, S, D) storage
    kh = k.detach().transpose(1, 2).contiguous().requires_grad_()
    q_view, k_view = qh.transpose(1, 2) * 1, kh.transpose(1, 2) * 1  # non-leaf, strided (B, S, H, D)
    with dispatch.force("triton"):
        qo, ko = rope(q_view, k_view, cos, sin, pos, inplace=True)
    assert qo.data_ptr() == q_view.data_ptr()
    assert_close(qo, expected[0])
    assert_close(ko, expected[1])
    (qo.sum() + 2 * ko.sum()).backward()
    qr, kr = rope_reference(q, k, cos, sin, pos)
    (qr.sum() + 2 * kr.sum()).backward()
    assert_close(qh.grad.transpose(1, 2), q.grad)
    assert_close(kh.grad.transpose(1, 2), k.grad)


SCALINGS = [
    None,
    {"rope_type": "linear", "factor": 4.0},
    {"rope_type": "dynamic", "factor": 2.0},
    {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 2048},
    {"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 4096, "beta_fast": 16, "mscale": 0.707,
     "mscale_all_dim": 1.0},
    {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
     "original_max_position_embeddings": 8192},
]  # fmt: skip


@pytest.mark.parametrize("scaling", SCALINGS, ids=lambda s: (s or {}).get("rope_type", "default"))
@pytest.mark.parametrize("head_dim", [64, 128])
def test_inv_freq_matches_transformers(scaling, head_dim):
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    base, max_pos = 500000.0, 8192
    params = {"rope_type": "default", "rope_theta": base, **(scaling or {})}
    config = LlamaConfig(
        hidden_size=head_dim * 4, num_attention_heads=4, head_dim=head_dim, max_position_embeddings=max_pos,
        rope_parameters=params,
    )  # fmt: skip
    if params["rope_type"] == "default":
        expected, factor = LlamaRotaryEmbedding.compute_default_rope_parameters(config, "cpu")
    else:
        expected, factor = ROPE_INIT_FUNCTIONS[params["rope_type"]](config, "cpu")
    got, got_factor = rope_inv_freq(head_dim, base, scaling, max_position_embeddings=max_pos)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert got_factor == pytest.approx(factor, rel=1e-12)


def test_dynamic_uses_the_current_length():
    short, _ = rope_inv_freq(64, 10000.0, {"rope_type": "dynamic", "factor": 2.0}, 1024, seq_len=512)
    long, _ = rope_inv_freq(64, 10000.0, {"rope_type": "dynamic", "factor": 2.0}, 1024, seq_len=4096)
    assert (long[1:] < short[1:]).all()


def test_unknown_rope_type_is_an_error():
    with pytest.raises(ValueError, match="longrope"):
        rope_inv_freq(64, rope_scaling={"rope_type": "longrope"})


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("heads", [(32, 8, 128), (40, 8, 128), (16, 8, 256)])
def test_rope_gpu_sizes(heads, dtype):
    _check(4, 2048, *heads, dtype, device="cuda")
