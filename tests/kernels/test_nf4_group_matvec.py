"""kernels/nf4_group_matvec.py: up to three NF4 weights of one input in one launch, against one nf4_matvec launch per
weight and the pure-torch reference: q/k/v (4:1:1 rows) and gate/up, nested and plain absmax, fp32/bf16/fp16, 1 to
MAX_ROWS rows of x, blocks that straddle rows, biases (fused, and after split-K), the launches counted through
Triton's own hooks; and the groups that must fall back to one launch per weight."""

import pytest
import torch
from helpers import count_launches
from test_nf4 import _fields as fields
from tolerances import DTYPES, assert_close

from kernels import dispatch
from kernels import nf4_group_matvec as module
from kernels.nf4_group_matvec import (
    _nf4_group_matvec_kernel,
    group_config,
    nf4_group_matvec,
    nf4_group_matvec_reference,
    one_launch,
)
from kernels.nf4_matvec import MAX_ROWS, Nf4MatvecConfig, _nf4_matvec_kernel, nf4_matvec

bnb_functional = pytest.importorskip("bitsandbytes.functional")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
GROUPS = {"qkv": (64, 16, 16), "gate_up": (96, 96), "one": (48,)}  # qkv: Qwen3's 4:1:1 q/k/v rows


def weights(ns, k, dtype, nested=True, blocksize=64):
    """NF4 weights of ns rows and k columns, each of its own random values (bitsandbytes' own quantization)."""
    gen = torch.Generator().manual_seed(sum(ns) * k)
    out = []
    for n in ns:
        w = (torch.randn(n, k, generator=gen) * 0.02).to(device=DEVICE, dtype=dtype)
        packed, state = bnb_functional.quantize_4bit(
            w, blocksize=blocksize, compress_statistics=nested, quant_type="nf4"
        )
        out.append(dict(packed=packed, **fields(state)))
    return out


def launched(x, ws, biases=None, config=None):
    """(the grouped outputs, one nf4_matvec per weight, the launches of the grouped call) on the Triton kernels."""
    with dispatch.force("triton"):
        with count_launches(_nf4_group_matvec_kernel, _nf4_matvec_kernel) as counts:
            ys = nf4_group_matvec(x, ws, biases, config)
        bs = biases or [None] * len(ws)
        separate = [nf4_matvec(x, bias=b, config=config, **w) for w, b in zip(ws, bs, strict=True)]
    return ys, separate, dict(counts)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("group", list(GROUPS))
@pytest.mark.parametrize("nested", [True, False], ids=["nested", "plain"])
@pytest.mark.parametrize("rows", [1, 3, MAX_ROWS])
def test_one_launch_equals_a_launch_per_weight(group, dtype, nested, rows):
    ns, k = GROUPS[group], 128
    ws = weights(ns, k, dtype, nested)
    x = torch.randn(rows, k, device=DEVICE).to(dtype)
    assert one_launch(ws, rows) is not None
    ys, separate, counts = launched(x, ws)
    assert counts == {"_nf4_group_matvec_kernel": 1}
    assert [y.shape for y in ys] == [(rows, n) for n in ns] and all(y.dtype == dtype for y in ys)
    for y, y_sep, ref in zip(ys, separate, nf4_group_matvec_reference(x, ws), strict=True):
        # the group's config may take other tiles than a weight's own (another fp32 sum order): one rounding apart
        assert_close(y, y_sep, dtype)
        assert_close(y, ref, dtype)


@pytest.mark.parametrize("rows", [1, 2])
def test_same_config_is_bit_identical_and_straddling_blocks(rows):
    # K = 330: quantization blocks straddle rows (each weight's own flat layout); the same config as the separate
    # launches gives the same bits
    ws = weights((64, 16, 16), 330, torch.float32)
    x = torch.randn(rows, 330, device=DEVICE)
    cfg = Nf4MatvecConfig(16, 32, num_warps=2)
    ys, separate, counts = launched(x, ws, config=cfg)
    assert counts == {"_nf4_group_matvec_kernel": 1}
    for y, y_sep in zip(ys, separate, strict=True):
        torch.testing.assert_close(y, y_sep, rtol=0, atol=0)


@pytest.mark.parametrize("rows", [1, 3])
@pytest.mark.parametrize("split_k", [1, 3])
def test_biases_fused_and_after_split_k(rows, split_k):
    ws = weights((32, 16, 16), 192, torch.float32)
    biases = [torch.randn(w["shape"][0], device=DEVICE) for w in ws]
    x = torch.randn(rows, 192, device=DEVICE)
    cfg = Nf4MatvecConfig(16, 16, split_k=split_k, num_warps=2, decode="load")
    ys, separate, counts = launched(x, ws, biases, cfg)
    assert counts["_nf4_group_matvec_kernel"] == 1
    for y, y_sep, ref in zip(ys, separate, nf4_group_matvec_reference(x, ws, biases), strict=True):
        torch.testing.assert_close(y, y_sep, rtol=0, atol=0)
        assert_close(y, ref, torch.float32)


def test_token_shapes():
    ws = weights((32, 16), 64, torch.bfloat16)
    for shape in [(64,), (1, 64), (1, 1, 64), (5, 64)]:
        x = torch.randn(shape, device=DEVICE).to(torch.bfloat16)
        ys, separate, _ = launched(x, ws)
        assert [y.shape for y in ys] == [(*shape[:-1], n) for n in (32, 16)]
        for y, y_sep in zip(ys, separate, strict=True):
            assert_close(y, y_sep, torch.bfloat16)


def _fallback(case):
    f32 = torch.float32
    return {  # case -> (weights, biases, rows of x)
        "rows-untiled": (weights((37, 16), 64, f32), None, 1),  # 37 rows: no block of rows divides it
        "rows-untiled-several": (weights((40, 24), 64, f32), None, 4),  # the tensor-core tile is 16 rows
        "other-k": (weights((32,), 64, f32) + weights((32,), 128, f32)[:1], None, 1),
        "nested-and-plain": (weights((32,), 64, f32) + weights((32,), 64, f32, nested=False), None, 1),
        "other-blocksize": (weights((32,), 128, f32) + weights((32,), 128, f32, blocksize=128), None, 1),
        "some-bias": (weights((32, 32), 64, f32), [torch.randn(32, device=DEVICE), None], 1),
        "four-weights": (weights((16, 16, 16, 16), 64, f32), None, 1),
    }[case]


FALLBACKS = ["rows-untiled", "rows-untiled-several", "other-k", "nested-and-plain", "other-blocksize", "some-bias"]


@pytest.mark.parametrize("case", [*FALLBACKS, "four-weights"])
def test_groups_that_do_not_fit_take_a_launch_per_weight(case):
    ws, biases, rows = _fallback(case)
    k = ws[-1]["shape"][1]
    assert one_launch(ws, rows, biases) is None
    if case == "other-k":  # no x fits both: each weight alone still runs
        return
    x = torch.randn(rows, k, device=DEVICE)
    ys, separate, counts = launched(x, ws, biases)
    assert counts == {"_nf4_matvec_kernel": len(ws)}
    for y, y_sep in zip(ys, separate, strict=True):
        torch.testing.assert_close(y, y_sep, rtol=0, atol=0)


def test_reference_backend_and_fp64_run_per_weight():
    ws = weights((32, 16), 64, torch.float32)
    x = torch.randn(2, 64, device=DEVICE)
    with dispatch.force("reference"):
        ys = nf4_group_matvec(x, ws)
    for y, ref in zip(ys, nf4_group_matvec_reference(x, ws), strict=True):
        torch.testing.assert_close(y, ref, rtol=0, atol=0)
    with dispatch.force("triton"), count_launches(_nf4_group_matvec_kernel) as counts:
        ys = nf4_group_matvec(x.double(), ws)
    assert not counts and ys[0].dtype == torch.float64


def test_refusals_and_configs(monkeypatch):
    ws = weights((64, 16, 16), 64, torch.float32)
    with pytest.raises(ValueError, match=f"1 to {MAX_ROWS} rows of 64 features"):
        nf4_group_matvec(torch.randn(MAX_ROWS + 1, 64), ws)
    with pytest.raises(ValueError, match="block_n must divide each"), dispatch.force("triton"):
        nf4_group_matvec(torch.randn(1, 64, device=DEVICE), ws, config=Nf4MatvecConfig(32, 16))
    # Qwen3-4B's q/k/v and gate/up: the rule's row blocks divide them
    assert group_config((4096, 1024, 1024), 2560).block_n == 4
    assert group_config((9728, 9728), 2560, rows=8).block_n == 32
    assert group_config((48, 48), 64, rows=4).block_n == 16  # halved from the rule's 32 until it divides both
    assert group_config((40, 24), 64, rows=4) is None
    measured = Nf4MatvecConfig(8, 256, 2, 8, "gather")
    monkeypatch.setitem(module.MEASURED, ((4096, 1024, 1024), 2560, 1), measured)
    assert group_config((4096, 1024, 1024), 2560) == measured


# ---- GPU (pytest -m gpu on the device machine) ----


@pytest.mark.gpu
@pytest.mark.skipif(DEVICE != "cuda", reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", ["qwen3-4b q/k/v", "qwen3-4b gate/up", "llama-8b q/k/v"])
def test_gpu_decode_groups(name, dtype):
    """Qwen3-4B's and Llama-8B's groups: one launch for 1, 8 and MAX_ROWS rows, equal to a launch per weight."""
    ns, k = {"qwen3-4b q/k/v": ((4096, 1024, 1024), 2560), "qwen3-4b gate/up": ((9728, 9728), 2560)}.get(
        name, ((4096, 1024, 1024), 4096)
    )
    ws = weights(ns, k, dtype)
    for rows in (1, 8, MAX_ROWS):
        x = torch.randn(rows, k, dtype=dtype, device="cuda")
        ys, separate, counts = launched(x, ws)
        assert counts == {"_nf4_group_matvec_kernel": 1}
        for y, y_sep in zip(ys, separate, strict=True):
            assert_close(y, y_sep, dtype, summed=k)  # other tiles along K: fp32 sums in another order
