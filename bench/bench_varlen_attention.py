"""Padding-free causal attention, forward and forward+backward, on realistic micro-batches of examples of different
lengths: kernels.varlen_attention vs PyTorch SDPA on the padded batch vs FlexAttention with a document mask vs
PyTorch's own varlen function (torch.nn.attention.varlen, where this torch has it).

    python bench/bench_varlen_attention.py            # the table
    python bench/bench_varlen_attention.py --sweep    # first time tile sizes of our three kernels, then the table

What each column times (medians of triton.testing.do_bench, CUDA events, after warm-up; in microseconds):
- ours: varlen_attention on (T, H, D) with cu_seqlens.
- sdpa_padded: F.scaled_dot_product_attention(is_causal=True) on the (B, H, Lmax, D) batch right-padded to its
  longest example (causal masking already keeps real tokens off the padding); the padding and unpadding copies are
  not timed, which favours SDPA.
- flex: torch.compile(flex_attention) on (1, H, T, D) with a document-causal block mask built once (not timed);
  compile time of the first forward+backward is reported apart.
- torch_varlen: torch.nn.attention.varlen.varlen_attn (FlashAttention 2 inside), causal via window_size=(-1, 0).
Each alternative's forward output is checked against ours (max abs difference printed beside the table).
Without a GPU this runs as a smoke test under the interpreter on a tiny batch (times meaningless).
"""

import argparse
import importlib.metadata
import importlib.util
import inspect
import time

import torch
import torch.nn.functional as F
from common import DEVICE, SMOKE, empty_cache, time_us

from kernels import dispatch
from kernels.varlen_attention import GPU_BLOCKS, Blocks, varlen_attention, varlen_attention_bwd, varlen_attention_fwd

# name, number of examples, median length; then the model's heads and head dim, softcap, window
BATCHES = [("8 x ~100", 8, 100), ("8 x ~300", 8, 300), ("16 x ~1000", 16, 1000)]
MODELS = {
    "llama (32/8 x 128)": (32, 8, 128, 0.0, 0),
    "gemma (16/8 x 256)": (16, 8, 256, 0.0, 0),
    "gemma2 softcap 50, window 512": (16, 8, 256, 50.0, 512),
}
CASES = [(b, m) for b in BATCHES for m in MODELS if m.startswith("llama")] + [
    (BATCHES[1], "gemma (16/8 x 256)"),
    (BATCHES[2], "gemma (16/8 x 256)"),
    (BATCHES[2], "gemma2 softcap 50, window 512"),
]
if SMOKE:
    BATCHES = [("3 x ~10", 3, 10)]
    MODELS = {"tiny (4/2 x 16)": (4, 2, 16, 0.0, 0)}
    CASES = [(BATCHES[0], "tiny (4/2 x 16)")]


def lengths_of(examples: int, median: int, seed: int = 0) -> list[int]:
    """Log-normal lengths (sigma 0.6) around `median`, at least 8 tokens."""
    gen = torch.Generator().manual_seed(seed)
    return [max(8, int(x)) for x in torch.empty(examples).log_normal_(0.0, 0.6, generator=gen).mul(median)]


def visible_pairs(n: int, window: int) -> int:
    """(query, key) pairs one causal segment of n tokens computes, with a sliding window if > 0."""
    w = min(n, window) if window else n
    return w * (w + 1) // 2 + (n - w) * w


def inputs(lengths, hq, hkv, d):
    total = sum(lengths)
    q, k, v = (torch.randn(total, h, d, device=DEVICE, dtype=torch.bfloat16) for h in (hq, hkv, hkv))
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=DEVICE)
    return q, k, v, cu


def fwd_and_both(fn, leaves):
    """(forward-only closure, forward+backward closure) of fn() with a fixed output gradient into `leaves`."""
    grad = {}

    def both():
        out = fn()
        if "g" not in grad:
            grad["g"] = torch.randn_like(out)
        out.backward(grad["g"])

    return fn, both


def ours(q, k, v, cu, scale, softcap, window):
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))

    def fn():
        with dispatch.force("triton"):
            return varlen_attention(q, k, v, cu, scale, softcap, window)

    return fn, (q, k, v)


def sdpa_padded(q, k, v, lengths, scale):
    """SDPA on the right-padded batch, output gathered back to (T, H, D) outside the timed closure's result."""
    lmax, batch = max(lengths), len(lengths)

    def pad(t):
        out = t.new_zeros(batch, lmax, *t.shape[1:])
        for i, (a, n) in enumerate(zip([0, *torch.tensor(lengths).cumsum(0).tolist()], lengths, strict=False)):
            out[i, :n] = t[a : a + n]
        return out.transpose(1, 2).contiguous().requires_grad_()

    qp, kp, vp = pad(q), pad(k), pad(v)
    valid = torch.arange(lmax, device=q.device)[None, :] < torch.tensor(lengths, device=q.device)[:, None]

    def fn():
        out = F.scaled_dot_product_attention(qp, kp, vp, is_causal=True, scale=scale, enable_gqa=True)
        return out.transpose(1, 2)[valid]  # (T, H, D) in the packed order, to compare with ours

    return fn, (qp, kp, vp)


def flex(q, k, v, cu, scale, softcap, window):
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    total = q.shape[0]
    doc = torch.searchsorted(cu, torch.arange(total, device=q.device, dtype=cu.dtype), right=True) - 1

    def mask_mod(b, h, qi, ki):
        keep = (doc[qi] == doc[ki]) & (qi >= ki)
        return keep & (qi - ki < window) if window else keep

    def score_mod(score, b, h, qi, ki):
        return softcap * torch.tanh(score / softcap)

    block_mask = create_block_mask(mask_mod, 1, 1, total, total, device=q.device)
    compiled = torch.compile(flex_attention, dynamic=False)
    qf, kf, vf = (t.transpose(0, 1)[None].contiguous().requires_grad_() for t in (q, k, v))

    def fn():
        out = compiled(
            qf, kf, vf, score_mod=score_mod if softcap else None, block_mask=block_mask, scale=scale, enable_gqa=True
        )
        return out[0].transpose(0, 1)

    return fn, (qf, kf, vf)


def torch_varlen(q, k, v, cu, lengths, scale, window):
    from torch.nn.attention.varlen import varlen_attn

    params = inspect.signature(varlen_attn).parameters
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    kwargs = {"scale": scale} if "scale" in params else {}
    if "window_size" in params:
        kwargs["window_size"] = (window - 1 if window else -1, 0)
    elif window:
        raise NotImplementedError("this torch's varlen_attn has no window")
    else:
        kwargs["is_causal"] = True
    if "enable_gqa" in params:
        kwargs["enable_gqa"] = True
    lmax = max(lengths)

    def fn():
        return varlen_attn(q, k, v, cu, cu, lmax, lmax, **kwargs)

    return fn, (q, k, v)


def timed(fn, leaves) -> tuple[float, float]:
    fwd, both = fwd_and_both(fn, leaves)  # the forward with grad on too: a compiled flex would recompile for no_grad
    return time_us(fwd), time_us(both, grad_to_none=list(leaves))


def bench_case(batch, model) -> dict:
    name, examples, median = batch
    hq, hkv, d, softcap, window = MODELS[model]
    lengths = lengths_of(examples, median)
    q, k, v, cu = inputs(lengths, hq, hkv, d)
    scale = d**-0.5
    pairs = sum(visible_pairs(n, window) for n in lengths)
    row = {"batch": f"{name} (T={sum(lengths)}, max {max(lengths)})", "model": model}
    fn, leaves = ours(q, k, v, cu, scale, softcap, window)
    reference = fn().detach().float()
    row["ours"] = timed(fn, leaves)
    row["TFLOP/s"] = 4 * pairs * hq * d * 3.5 / (row["ours"][1] * 1e-6) / 1e12  # bwd counted as 2.5 forwards
    makers = {
        "sdpa_padded": lambda: None if softcap or window else sdpa_padded(q, k, v, lengths, scale),
        "flex": lambda: None if SMOKE or (d == 256 and not softcap) else flex(q, k, v, cu, scale, softcap, window),
        "torch_varlen": lambda: None if SMOKE or softcap else torch_varlen(q, k, v, cu, lengths, scale, window),
    }
    notes = []
    for key, make in makers.items():
        try:
            made = make()
            if made is None:
                continue
            start = time.perf_counter()
            fn, leaves = made
            out = fn()
            out.backward(torch.ones_like(out))
            if key == "flex":
                notes.append(f"flex compile {time.perf_counter() - start:.1f} s")
            notes.append(f"{key} max|diff| {(out.detach().float() - reference).abs().max().item():.2g}")
            row[key] = timed(fn, leaves)
        except Exception as exc:  # an alternative this torch lacks is a result, not a crash
            notes.append(f"{key}: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}")
        empty_cache()
    row["notes"] = "; ".join(notes)
    return row


SWEEP = {  # candidates per head dim: forward, dQ, dK/dV (block_m, block_n, warps, stages)
    128: (
        [Blocks(128, 64, 8, 3), Blocks(128, 64, 4, 3), Blocks(128, 128, 8, 3), Blocks(64, 64, 4, 3)],
        [Blocks(128, 32, 8, 3), Blocks(64, 64, 4, 3), Blocks(128, 64, 8, 3)],
        [Blocks(32, 128, 8, 3), Blocks(64, 64, 4, 3), Blocks(64, 128, 8, 3)],
    ),
    256: (
        [Blocks(64, 32, 4, 2), Blocks(64, 64, 8, 2), Blocks(128, 64, 8, 2), Blocks(128, 32, 8, 2)],
        [Blocks(64, 32, 8, 2), Blocks(64, 64, 8, 2), Blocks(32, 64, 4, 2)],
        [Blocks(32, 64, 8, 2), Blocks(32, 32, 4, 2), Blocks(64, 64, 8, 2)],
    ),
}  # fmt: skip


def best(name, candidates, launch):
    """The candidate tiles launch(cfg) runs fastest with, printing every time."""
    results = []
    for cfg in candidates:
        try:
            launch(cfg)
            results.append((time_us(lambda cfg=cfg: launch(cfg)), cfg))
        except Exception as exc:  # too much shared memory, say
            print(f"  {name} {cfg}: {type(exc).__name__}")
    for t, cfg in sorted(results):
        print(f"  {name} {cfg}: {t:.0f} us")
    return min(results)[1]


def sweep_head_dim(d: int, hq: int, hkv: int) -> tuple[Blocks, Blocks, Blocks]:
    """Coordinate search on the 16 x ~1000 batch: forward, then dQ with the default dK/dV, then dK/dV with that dQ
    (each backward time includes the other kernel and delta)."""
    fwd_c, dq_c, dkdv_c = SWEEP[d]
    q, k, v, cu = inputs(lengths_of(16, 1000), hq, hkv, d)
    o, lse = varlen_attention_fwd(q, k, v, cu, d**-0.5, 0.0, 0)
    do = torch.randn_like(o)
    f = best(f"D={d} fwd", fwd_c, lambda cfg: varlen_attention_fwd(q, k, v, cu, d**-0.5, 0.0, 0, blocks=cfg))
    bwd = lambda dq, dkdv: varlen_attention_bwd(do, q, k, v, o, lse, cu, d**-0.5, 0.0, 0, blocks=(None, dq, dkdv))  # noqa: E731
    g = best(f"D={d} bwd, dq", dq_c, lambda cfg: bwd(cfg, GPU_BLOCKS[d][2]))
    h = best(f"D={d} bwd, dkdv", dkdv_c, lambda cfg: bwd(g, cfg))
    return f, g, h


def sweep() -> None:
    """Install the best tiles per head dim in GPU_BLOCKS for the table that follows."""
    for d, (hq, hkv) in ((128, (32, 8)), (256, (16, 8))):
        GPU_BLOCKS[d] = sweep_head_dim(d, hq, hkv)
        print(f"best D={d}: {GPU_BLOCKS[d]}", flush=True)
        empty_cache()


def fmt(pair) -> str:
    return f"{pair[0]:.0f} / {pair[1]:.0f}" if pair else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", action="store_true", help="time tile sizes first and use the best")
    args = parser.parse_args()
    gpu = "CPU smoke run (times meaningless)" if SMOKE else torch.cuda.get_device_name()
    has_varlen = importlib.util.find_spec("torch.nn.attention.varlen") is not None
    versions = f"torch {torch.__version__}, triton {importlib.metadata.version('triton')}"
    print(f"GPU: {gpu}, {versions}, torch.nn.attention.varlen: {has_varlen}", flush=True)
    if args.sweep and not SMOKE:
        sweep()
    rows = []
    for batch, model in CASES:
        rows.append(bench_case(batch, model))
        print(rows[-1], flush=True)
    cols = ["ours", "sdpa_padded", "flex", "torch_varlen"]
    print("\nforward / forward+backward, us (bf16); ours' TFLOP/s over fwd+bwd (causal pairs, bwd = 2.5 fwd)\n")
    print("| batch | model | " + " | ".join(cols) + " | ours TFLOP/s |")
    print("|---|---|" + "---|" * (len(cols) + 1))
    for r in rows:
        print(
            f"| {r['batch']} | {r['model']} | " + " | ".join(fmt(r.get(c)) for c in cols) + f" | {r['TFLOP/s']:.0f} |"
        )
    print()
    for r in rows:
        print(f"- {r['batch']} {r['model']}: {r['notes']}")


if __name__ == "__main__":
    main()
