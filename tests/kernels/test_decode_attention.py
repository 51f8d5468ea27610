"""kernels/decode_attention.py: one-token GQA attention over a cache (one split and split-K) against its reference,
and the reference against torch SDPA over the filled part of the cache."""

import pytest
import torch
import torch.nn.functional as F
from tolerances import DTYPES, assert_close

from kernels import dispatch
from kernels.decode_attention import decode_attention, decode_attention_reference, splits_for

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"


def _inputs(hq, hk, d, capacity, dtype, device=DEVICE):
    torch.manual_seed(0)
    q = torch.randn(hq, d, device=device).to(dtype)
    k = (torch.randn(hk, capacity, d, device=device) * 2).to(dtype)  # scores of a few units: a peaked softmax
    v = torch.randn(hk, capacity, d, device=device).to(dtype)
    return q, k, v


def _check(hq, hk, d, capacity, position, dtype, device=DEVICE):
    q, k, v = _inputs(hq, hk, d, capacity, dtype, device)
    pos = torch.tensor([position], device=device)
    with dispatch.force("triton"):
        out = decode_attention(q, k, v, pos, d**-0.5)
    ref = decode_attention_reference(q, k, v, pos, d**-0.5)
    assert out.shape == (hq, d) and out.dtype == dtype
    assert_close(out, ref, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "hq, hk, d, capacity",
    [(4, 2, 16, 16), (6, 2, 24, 200), (3, 3, 16, 130)],
    ids=["one-split", "split-k-odd-dim", "mha-split-k"],
)
@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_decode_attention_matches_reference(hq, hk, d, capacity, where, dtype):
    position = {"first": 0, "middle": capacity // 2 + 3, "last": capacity - 1}[where]
    _check(hq, hk, d, capacity, position, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("capacity", [16, 200], ids=["one-split", "split-k"])
def test_batched_rows_are_each_rows_own_attention(capacity, dtype):
    """B rows at ragged positions, each over its own cache: the batched launch gives each row's one-row result."""
    hq, hk, d, positions = 6, 2, 24, [0, capacity // 2 + 3, capacity - 1, 5]
    rows = [_inputs(hq, hk, d, capacity, dtype) for _ in positions]
    torch.manual_seed(1)
    q = torch.stack([torch.randn(hq, d, device=DEVICE).to(dtype) for _ in positions])
    k, v = torch.stack([r[1] for r in rows]), torch.stack([r[2] for r in rows]) * 0.5
    pos = torch.tensor(positions, device=DEVICE)
    with dispatch.force("triton"):
        out = decode_attention(q, k, v, pos, d**-0.5)
        one = [decode_attention(q[b], k[b], v[b], pos[b : b + 1], d**-0.5) for b in range(len(positions))]
    ref = decode_attention_reference(q, k, v, pos, d**-0.5)
    assert out.shape == (len(positions), hq, d)
    torch.testing.assert_close(out, torch.stack(one), rtol=0, atol=0)  # the same programs, row by row
    assert_close(out, ref, dtype)


def test_split_k_covers_the_cache():
    for capacity in (1, 63, 64, 65, 512, 4096, 40960):
        splits, chunk = splits_for(capacity, 16)
        assert chunk % 16 == 0 and (splits - 1) * chunk < capacity <= splits * chunk and splits <= 64
    assert splits_for(16, 16)[0] == 1 and splits_for(512, 16)[0] == 32 and splits_for(40960, 16)[0] == 64


def test_few_filled_positions_spread_over_every_split():
    """A position early in a long cache: the kernel cuts the filled positions, not the capacity, over the cache's
    splits (here 64 splits of blocks of 16 positions: a chunk of 16 positions at position 100 where the capacity's
    would be 64), and the result is still the reference's, also where some splits get no position."""
    assert splits_for(4096, 16) == (64, 64)  # hq 4 over hk 1 at d 128: blocks of 16 positions (decode_attention_fwd)
    for position in (0, 5, 17, 100, 1000, 4095):
        _check(4, 1, 128, 4096, position, torch.float32)


def test_a_position_past_the_end_reads_the_whole_cache():
    q, k, v = _inputs(4, 2, 16, 130, torch.float32)
    with dispatch.force("triton"):
        past = decode_attention(q, k, v, torch.tensor([500], device=DEVICE), 0.25)
        last = decode_attention(q, k, v, torch.tensor([129], device=DEVICE), 0.25)
    assert_close(past, last)


def test_reference_is_sdpa_over_the_filled_cache():
    q, k, v = _inputs(8, 2, 16, 40, torch.float32, device="cpu")
    position = 17
    ref = decode_attention_reference(q, k, v, torch.tensor([position]), 0.25)
    keys, values = k[None, :, : position + 1], v[None, :, : position + 1]
    sdpa = F.scaled_dot_product_attention(q[None, :, None], keys, values, scale=0.25, enable_gqa=True)
    torch.testing.assert_close(ref, sdpa[0, :, 0], rtol=2e-5, atol=2e-5)


def test_reference_backend_runs_the_reference():
    q, k, v = _inputs(4, 2, 16, 32, torch.float32, device="cpu")
    with dispatch.force("reference"):
        out = decode_attention(q, k, v, torch.tensor([9]), 0.25)
    assert torch.equal(out, decode_attention_reference(q, k, v, torch.tensor([9]), 0.25))


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("capacity, position", [(512, 383), (4096, 4095), (40960, 1000)])
def test_decode_attention_gpu_sizes(capacity, position, dtype):
    _check(32, 8, 128, capacity, position, dtype, device="cuda")
