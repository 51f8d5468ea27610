"""NF4 matrix-vector products of up to three weights that share one input, in one launch: y_i = x @ W_i.T (+ b_i)
for 1 to MAX_ROWS rows of x, each W_i (N_i, K) in bitsandbytes' NF4 layout (kernels/nf4.py's docstring) read where it
lies: its own packed bytes, absmax, nested absmax2/code2, offset and code table (no copy, no re-quantization).

    y = [y_0 | y_1 | y_2]  (M, N_0 + N_1 + N_2),    y_i = nf4_matvec(x, W_i)

Why: a decoder layer's q/k/v (and gate/up) read the same x. As separate launches (kernels/nf4_matvec.py), each pays
a launch and the small k/v products (1024 x 2560 for Qwen3-4B, 1.3 MB of NF4) are too small to keep the card's
memory busy alone. One launch streams the same bytes over one grid.

Bytes moved: those of the separate launches (each weight's packed bytes and absmax once, x, y); only the launches
and the grid change.

The grid covers the summed rows: the row blocks of weight 0, then weight 1's, then weight 2's, so a program owns
BLOCK_N rows of one weight and each N_i must be a multiple of BLOCK_N (`group_config`: pick_config's block_n for the
summed rows, halved until it divides every N_i, down to 2 for one row of x and 16, the tensor-core tile, for
several). A program picks its weight's pointers and scalars by comparing its row block with the weights' block ranges
(scalar selects) and runs kernels/nf4_matvec.py's `_product` and `_store`: the same numerics, and the same split-K
reduction, over the summed rows. A weight of another K, blocksize or nesting, a bias on some weights only, row counts
that the tiling cannot split, other dtypes or the reference backend: `nf4_group_matvec` runs `nf4_matvec` once per
weight instead (the same results, one launch each); `one_launch` says which it does.

The launch shape comes from `MEASURED` first, else the rule above (a starting point, not a measurement). Compiled
for sm_90 (Triton 3.9, `python bench/nf4_matvec_sass.py --group`: a count of instructions, not a speed), its K loop
is nf4_matvec's within 2 instructions a step: the weight is picked once per program, before the loop.
"""

from dataclasses import replace

import torch
import triton
import triton.language as tl

from kernels import dispatch
from kernels.nf4 import _code, _nested_args
from kernels.nf4_matvec import (
    MAX_ROWS,
    Nf4MatvecConfig,
    _aligned,
    _product,
    _rows_tile,
    _store,
    kb_per_split,
    launch_options,
    nf4_matvec,
    nf4_matvec_reference,
    pick_config,
    reduce_split_k,
    words,
)

MAX_WEIGHTS = 3  # q, k and v: the kernel's weight slots

# ((N_0, N_1, ...), K, rows) -> the best config `python bench/bench_nf4_group_matvec.py` found on the GPU (its last
# line, `BEST {json}`: "N_0/N_1/..,K,rows": fields); rows is 1 for one row of x and 16 for 2..MAX_ROWS.
# Empty until that bench has run on the GPU machine.
MEASURED: dict[tuple[tuple[int, ...], int, int], Nf4MatvecConfig] = {}


def nf4_group_matvec_reference(x, weights, biases=None) -> list[torch.Tensor]:
    """[F.linear(x, W_i, b_i)] with each W_i dequantized to x's dtype (kernels.nf4_matvec's reference, per weight)."""
    biases = biases or [None] * len(weights)
    return [nf4_matvec_reference(x, bias=b, **w) for w, b in zip(weights, biases, strict=True)]


def group_config(ns, k: int, rows: int = 1) -> Nf4MatvecConfig | None:
    """The launch shape for weights of ns rows each and K columns and `rows` rows of x, or None when no block of
    rows divides every weight's rows (then each weight takes its own launch)."""
    ns = tuple(ns)
    cfg = MEASURED.get((ns, k, _rows_tile(rows))) or pick_config(sum(ns), k, rows)
    lowest = 2 if rows == 1 else 16
    block_n = cfg.block_n
    while block_n >= lowest and any(n % block_n for n in ns):
        block_n //= 2
    return replace(cfg, block_n=block_n) if block_n >= lowest else None


def _shareable(weights, biases) -> bool:
    """Whether the weights can share a launch whatever the rows of x: 1 to MAX_WEIGHTS of them, one in_features,
    blocksize, nested blocksize and nesting, and a bias on all of them or on none."""
    if not 1 <= len(weights) <= MAX_WEIGHTS:
        return False
    first = weights[0]
    for w in weights:
        if w["shape"][1] != first["shape"][1] or w.get("blocksize", 64) != first.get("blocksize", 64):
            return False
        if w.get("blocksize2", 256) != first.get("blocksize2", 256):
            return False
        if (w.get("absmax2") is None) != (first.get("absmax2") is None):
            return False
    return biases is None or len({b is None for b in biases}) == 1


def one_launch(weights, rows: int = 1, biases=None) -> Nf4MatvecConfig | None:
    """The config of the one launch `nf4_group_matvec` makes for `weights` and `rows` rows of x (on the Triton
    backend, x fp32/bf16/fp16), or None when it launches `nf4_matvec` once per weight."""
    if not _shareable(weights, biases):
        return None
    return group_config([w["shape"][0] for w in weights], weights[0]["shape"][1], rows)


@triton.jit
def _pick(w, a, b, c):
    """a, b or c for weight w = 0, 1 or 2 (a scalar select: no branch)."""
    return tl.where(w == 0, a, tl.where(w == 1, b, c))


@triton.jit
def _nf4_group_matvec_kernel(xw_ptr, y_ptr, part_ptr,
                             packed0, absmax0, absmax2_0, code2_0, code0, b0, n0, n_blocks0, offset0,
                             packed1, absmax1, absmax2_1, code2_1, code1, b1, n1, n_blocks1, offset1,
                             packed2, absmax2, absmax2_2, code2_2, code2, b2, n2, n_blocks2, offset2,
                             M, N, K, kb_per_split, end0, end1,
                             BLOCKSIZE: tl.constexpr, BLOCKSIZE2: tl.constexpr, NESTED: tl.constexpr,
                             ALIGNED: tl.constexpr, EVEN_K: tl.constexpr, GATHER: tl.constexpr,
                             HAS_BIAS: tl.constexpr, SPLIT: tl.constexpr, PRECISION: tl.constexpr,
                             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_KB: tl.constexpr,
                             GROUP: tl.constexpr, NUM_STAGES: tl.constexpr):  # fmt: skip
    """Program (i, s): row block i of the summed rows, which is a row block of weight 0 (i < end0), 1 (i < end1) or
    2, over the s-th range of K; written to columns i * BLOCK_N.. of y (M, N)."""
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    w = (pid_n >= end0).to(tl.int32) + (pid_n >= end1).to(tl.int32)
    rows = (pid_n - _pick(w, 0, end0, end1)) * BLOCK_N + tl.arange(0, BLOCK_N)  # the weight's own rows
    out = _product(xw_ptr, _pick(w, packed0, packed1, packed2), _pick(w, absmax0, absmax1, absmax2),
                   _pick(w, absmax2_0, absmax2_1, absmax2_2), _pick(w, code2_0, code2_1, code2_2),
                   _pick(w, code0, code1, code2), y_ptr, rows, pid_k, M, _pick(w, n0, n1, n2), K,
                   _pick(w, n_blocks0, n_blocks1, n_blocks2), kb_per_split, _pick(w, offset0, offset1, offset2),
                   BLOCKSIZE, BLOCKSIZE2, NESTED, ALIGNED, EVEN_K, GATHER, PRECISION, BLOCK_M, BLOCK_N, BLOCK_KB,
                   GROUP, NUM_STAGES)  # fmt: skip
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    _store(out, y_ptr, part_ptr, _pick(w, b0, b1, b2), cols, rows, pid_k, M, N, HAS_BIAS, SPLIT, BLOCK_M)


def nf4_group_matvec_fwd(x, weights, biases, cfg) -> torch.Tensor:
    """One launch on a contiguous (M, K) x (1 <= M <= MAX_ROWS) for weights that `one_launch` accepts with cfg;
    returns y (M, sum N_i) in x's dtype."""
    m, k = x.shape
    first = weights[0]
    blocksize, blocksize2 = first.get("blocksize", 64), first.get("blocksize2", 256)
    ns = [w["shape"][0] for w in weights]
    if any(n % cfg.block_n for n in ns):
        raise ValueError(f"nf4_group_matvec: {cfg} for weights of {ns} rows; block_n must divide each")
    y = torch.empty(m, sum(ns), dtype=x.dtype, device=x.device)
    split = cfg.split_k > 1
    part = torch.empty((cfg.split_k, m, sum(ns)), dtype=torch.float32, device=x.device) if split else y
    fused_bias = biases is not None and biases[0] is not None and not split  # else added per weight below
    slots, nested = [], False
    for w, b in zip(weights, biases or [None] * len(weights), strict=True):
        absmax, absmax2, code2, nested = _nested_args(w["absmax"], w.get("absmax2"), w.get("code2"), x.device)
        n = w["shape"][0]
        code = _code(w.get("code"), x.device)
        slots.append((w["packed"].reshape(-1), absmax, absmax2, code2, code, b if fused_bias else y, n,
                      triton.cdiv(n * k, blocksize), float(w.get("offset", 0.0))))  # fmt: skip
    ends = [sum(ns[: i + 1]) // cfg.block_n for i in range(len(ns))]
    ends += [ends[-1]] * (MAX_WEIGHTS - len(ns))  # no program past the last weight: the unused slots repeat it
    slots += [slots[-1]] * (MAX_WEIGHTS - len(slots))
    args = [a for slot in slots for a in slot]
    common = launch_options(x, k, blocksize, blocksize2, nested, fused_bias, cfg)
    grid = (ends[-1], cfg.split_k)
    _nf4_group_matvec_kernel[grid](
        words(x), y, part, *args, m, sum(ns), k, kb_per_split(k, cfg), ends[0], ends[1], **common
    )
    if split:
        reduce_split_k(part, None, y, False)
    if biases is not None and not fused_bias:
        start = 0
        for n, b in zip(ns, biases, strict=True):
            if b is not None:
                y[:, start : start + n] += b
            start += n
    return y


def nf4_group_matvec(x: torch.Tensor, weights, biases=None, config: Nf4MatvecConfig | None = None) -> list:
    """[x @ W_i.T (+ b_i)] for up to MAX_WEIGHTS NF4 weights of one input x: one launch where `one_launch` allows,
    else one `nf4_matvec` each (the same results).

    Args:
        x: (..., K) activations with at most MAX_ROWS rows, fp32/bf16/fp16.
        weights: dicts of `nf4_matvec`'s weight arguments (packed, absmax, shape and optionally blocksize, code,
            absmax2, code2, offset, blocksize2), one per weight, e.g. engine.chat.decode_step's `_nf4_fields`.
        biases: None, or one (N_i,) bias or None per weight; cast to x's dtype.
        config: the launch shape; None for `group_config`.

    Returns:
        A list of (..., N_i) tensors in x's dtype (column slices of one (..., sum N_i) output when one launch).
    """
    k = weights[0]["shape"][1]
    rows = x.numel() // max(1, k)
    if x.shape[-1] != k or not 1 <= rows <= MAX_ROWS:
        raise ValueError(f"nf4_group_matvec takes 1 to {MAX_ROWS} rows of {k} features, got {tuple(x.shape)}")
    kernel_dtype = x.dtype in (torch.float32, torch.bfloat16, torch.float16)
    cfg = None
    if kernel_dtype and not k % 2 and _shareable(weights, biases):
        cfg = config or group_config([w["shape"][0] for w in weights], k, rows)
    if cfg is None or not dispatch.use_triton(x, *(w["packed"] for w in weights)):
        return [nf4_matvec(x, bias=b, **w) for w, b in zip(weights, biases or [None] * len(weights), strict=True)]
    xs = _aligned(x.reshape(rows, k))
    bs = None if biases is None else [None if b is None else b.to(x.dtype).contiguous() for b in biases]
    y = nf4_group_matvec_fwd(xs, weights, bs, cfg).view(*x.shape[:-1], -1)
    outs, start = [], 0
    for w in weights:
        outs.append(y[..., start : start + w["shape"][0]])
        start += w["shape"][0]
    return outs
