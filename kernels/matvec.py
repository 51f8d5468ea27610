"""Batch-1 matrix-vector product for decoding: y = W x (+ b), i.e. `F.linear(x, W, b)` for one token.

    y[n] = sum_k W[n, k] x[k]  (+ b[n])        W (N, K) row-major, x (K,), y (N,)

Products in fp32 from the 16-bit (or fp32) inputs, accumulated in fp32, bias added in fp32, rounded once to x's
dtype. cuBLAS also accumulates in fp32 but in another order, so bf16 outputs differ from F.linear by about one ulp.

Bytes moved: the weight once (N * K * b, b = 2 for bf16), x once per program (K * b, from L2 after the first),
y (N * b) and the bias (N * b). With split-K, S * N fp32 partials are written and read back (8 * S * N bytes:
0.16% of the weight for 2560 x 9728 at S = 4). The weight is everything: at batch 1 the op is a memory stream, and
its speed is the read bandwidth. Measured on the H100 (`python bench/bench_matvec.py`, CUDA-graph replays, weights
read from HBM): one Qwen3-4B token's matvecs (8.05 GB) take 3.41 ms through cuBLAS (2.36 TB/s) and 2.93 ms here
(2.75 TB/s; copy bandwidth 2.97 TB/s); per shape 1.10x (lm_head) to 1.41x (o_proj, 2560 x 4096) cuBLAS.

Design: program (i, s) owns output rows i*BLOCK_N .. +BLOCK_N and the s-th of SPLIT_K equal, BLOCK_K-aligned ranges
of K. It walks its range in BLOCK_K steps, loading a (BLOCK_N, BLOCK_K) weight tile (rows contiguous: 16-byte
vector loads, coalesced along K) and the matching slice of x, and accumulates their product elementwise into a
(BLOCK_N, BLOCK_K) fp32 tile; the tile is reduced over K once, after the loop, so the loop body is loads and FMAs
with no cross-thread shuffles. Without split-K the program adds the bias and writes y. With split-K it writes its
fp32 partial sums to a (SPLIT_K, N) buffer and a second, tiny kernel sums the splits in a fixed order, adds the
bias and casts (deterministic, unlike atomics). Split-K is for small N with large K, where N / BLOCK_N programs
alone would leave SMs idle or each one a long serial walk.

The tile shape is a `MatvecConfig` (BLOCK_N, BLOCK_K, SPLIT_K, num_warps, num_stages) from `pick_config(N, K)`: a
measured table first (`MEASURED`, filled from `bench/bench_matvec.py`'s `BEST` line), else the rule those
measurements suggest (one row per program, 512-2048 columns a step by K, no split-K). `num_stages` > 1 asks Triton
to software-pipeline the loop's loads through shared memory (the loop is a `tl.range(..., num_stages=)`); on the H100
it never beat a plain loop (1). Rows past N are clamped onto
row N - 1 for the loads (so the weight loads need no row mask) and masked at the store; K that is not a multiple
of BLOCK_K takes a masked variant. Row offsets are int64: N * K passes 2**31 for lm_heads of large vocabularies
(151936 x 2560 is 3.9e8 and fits; 262144 x 10240 would not).

No autograd: decoding runs under `torch.inference_mode()`. A call that needs gradients (grad mode on and an input
that requires them) takes `F.linear` instead, as do calls with more than one row, a non-contiguous weight or bias,
or mixed dtypes (where F.linear raises its own error).
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from kernels import dispatch

REDUCE_BLOCK = 1024  # output rows per program of the split-K reduction


@dataclass(frozen=True)
class MatvecConfig:
    """Launch shape of the matvec kernel (block sizes are powers of two)."""

    block_n: int  # output rows per program; the weight tile's height
    block_k: int  # weight columns per loop step; the tile's width
    split_k: int = 1  # programs sharing one row block, each over 1/split_k of K (then a reduction kernel)
    num_warps: int = 4
    num_stages: int = 1  # 1: plain loop; > 1: Triton pipelines the loads that many steps ahead (shared memory)

    def __post_init__(self):
        for name in ("block_n", "block_k"):
            v = getattr(self, name)
            if v < 1 or v & (v - 1):
                raise ValueError(f"MatvecConfig.{name}={v}: must be a power of two")
        if self.split_k < 1 or self.num_warps < 1 or self.num_stages < 1:
            raise ValueError(f"MatvecConfig: split_k, num_warps and num_stages must be >= 1, got {self}")


# (N, K) -> the best config `python bench/bench_matvec.py` found on the H100, 2026-11-22 (its last line, `BEST {json}`):
# Qwen3-4B's and Llama-8B's decode shapes.
MEASURED: dict[tuple[int, int], MatvecConfig] = {
    (6144, 2560): MatvecConfig(16, 512, 1, 4),
    (2560, 4096): MatvecConfig(2, 1024, 1, 4),
    (19456, 2560): MatvecConfig(8, 512, 1, 4),
    (2560, 9728): MatvecConfig(1, 2048, 1, 8),
    (151936, 2560): MatvecConfig(4, 512, 1, 4),
    (6144, 4096): MatvecConfig(1, 1024, 1, 4),
    (4096, 4096): MatvecConfig(1, 1024, 1, 4),
    (28672, 4096): MatvecConfig(1, 1024, 1, 4),
    (4096, 14336): MatvecConfig(1, 2048, 1, 8),
    (128256, 4096): MatvecConfig(1, 512, 1, 4),
}


def pick_config(n: int, k: int) -> MatvecConfig:
    """The config for a weight of shape (n, k): the measured one if there is one, else the rule the measurements
    suggest."""
    measured = MEASURED.get((n, k))
    if measured is not None:
        return measured
    # What the sweep found on every measured shape, within 2% of its best: one row per program (cuBLAS-beating
    # bandwidth comes from many short programs, not wide tiles), steps as wide as the row allows, no split-K.
    block_k = min(512 if k < 4096 else 1024 if k < 8192 else 2048, max(16, triton.next_power_of_2(k)))
    return MatvecConfig(1, block_k, 1, 8 if block_k >= 2048 else 4)


def matvec_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear itself (cuBLAS gemv on the GPU)."""
    return F.linear(x, weight, bias)


@triton.jit
def _matvec_kernel(
    x_ptr,
    w_ptr,
    b_ptr,
    y_ptr,
    part_ptr,
    N,
    K,
    k_per_split,
    HAS_BIAS: tl.constexpr,
    SPLIT: tl.constexpr,
    EVEN_K: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    NUM_STAGES: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    # loads of rows past N read row N - 1 again (in bounds, unmasked, so still vector loads); the store drops them
    w_rows = w_ptr + tl.minimum(rows, N - 1).to(tl.int64)[:, None] * K
    cols = tl.arange(0, BLOCK_K)
    k_start = pid_k * k_per_split
    k_end = tl.minimum(k_start + k_per_split, K)
    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    for k0 in tl.range(k_start, k_end, BLOCK_K, num_stages=NUM_STAGES):
        kk = k0 + cols
        if EVEN_K:
            xv = tl.load(x_ptr + kk, eviction_policy="evict_last")
            w = tl.load(w_rows + kk[None, :], eviction_policy="evict_first")  # streamed once: keep x in L2, not W
        else:
            k_mask = kk < K
            xv = tl.load(x_ptr + kk, mask=k_mask, other=0.0, eviction_policy="evict_last")
            w = tl.load(w_rows + kk[None, :], mask=k_mask[None, :], other=0.0, eviction_policy="evict_first")
        acc += w.to(tl.float32) * xv.to(tl.float32)[None, :]
    y = tl.sum(acc, axis=1)
    row_mask = rows < N
    if SPLIT:
        tl.store(part_ptr + pid_k * N + rows, y, mask=row_mask)
    else:
        if HAS_BIAS:
            y += tl.load(b_ptr + rows, mask=row_mask, other=0.0).to(tl.float32)
        tl.store(y_ptr + rows, y.to(y_ptr.dtype.element_ty), mask=row_mask)


@triton.jit
def _split_k_reduce_kernel(
    part_ptr, b_ptr, y_ptr, N, HAS_BIAS: tl.constexpr, SPLIT_K: tl.constexpr, BLOCK: tl.constexpr
):
    rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = rows < N
    y = tl.zeros((BLOCK,), dtype=tl.float32)
    for s in tl.static_range(SPLIT_K):  # a fixed order: the same bits on every call
        y += tl.load(part_ptr + s * N + rows, mask=mask, other=0.0)
    if HAS_BIAS:
        y += tl.load(b_ptr + rows, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + rows, y.to(y_ptr.dtype.element_ty), mask=mask)


def matvec_fwd(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, cfg: MatvecConfig) -> torch.Tensor:
    """Launch on a contiguous (K,) x and (N, K) weight; returns (N,) in x's dtype."""
    n, k = weight.shape
    y = torch.empty(n, dtype=x.dtype, device=x.device)
    # split ranges are whole BLOCK_K steps, so only the last step of the row can be partial
    k_per_split = triton.cdiv(triton.cdiv(k, cfg.split_k), cfg.block_k) * cfg.block_k
    split = cfg.split_k > 1
    part = torch.empty((cfg.split_k, n), dtype=torch.float32, device=x.device) if split else y  # unused without
    b = bias if bias is not None else y  # unused pointer without a bias
    _matvec_kernel[(triton.cdiv(n, cfg.block_n), cfg.split_k)](
        x,
        weight,
        b,
        y,
        part,
        n,
        k,
        k_per_split,
        HAS_BIAS=bias is not None,
        SPLIT=split,
        EVEN_K=k % cfg.block_k == 0,
        BLOCK_N=cfg.block_n,
        BLOCK_K=cfg.block_k,
        NUM_STAGES=cfg.num_stages,
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
    )
    if split:
        _split_k_reduce_kernel[(triton.cdiv(n, REDUCE_BLOCK),)](
            part, b, y, n, HAS_BIAS=bias is not None, SPLIT_K=cfg.split_k, BLOCK=REDUCE_BLOCK, num_warps=4
        )
    return y


def _kernel_applies(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """The cases the kernel covers; everything else goes to F.linear (which also raises on bad shapes)."""
    if weight.dim() != 2 or not weight.is_contiguous() or weight.numel() == 0:
        return False
    n, k = weight.shape
    if x.shape[-1] != k or x.numel() != k or x.dtype != weight.dtype:
        return False
    if x.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        return False
    if bias is not None and (bias.shape != (n,) or bias.dtype != x.dtype or not bias.is_contiguous()):
        return False
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias)):
        return False  # no backward here: autograd goes through F.linear
    return True


def matvec(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, config: MatvecConfig | None = None
) -> torch.Tensor:
    """`F.linear(x, weight, bias)` for one token, as a bandwidth-bound Triton matvec (forward only).

    Args:
        x: (..., K) with exactly K elements (e.g. (K,), (1, K), (1, 1, K)); fp32, bf16 or fp16.
        weight: (N, K) contiguous, x's dtype.
        bias: (N,) in x's dtype, or None.
        config: the launch shape; None for `pick_config(N, K)`.

    Returns:
        (..., N) in x's dtype, accumulated in fp32. Falls back to F.linear (with its autograd) for more than one row,
        a non-contiguous weight, mixed dtypes, inputs that need gradients, or when dispatch picks the reference.
    """
    if _kernel_applies(x, weight, bias) and dispatch.use_triton(x, weight):
        n, k = weight.shape
        cfg = config or pick_config(n, k)
        y = matvec_fwd(x.reshape(k).contiguous(), weight, bias, cfg)
        return y.view(*x.shape[:-1], n)
    return matvec_reference(x, weight, bias)
