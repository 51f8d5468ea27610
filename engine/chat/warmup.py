"""Compile the chat decoder's Triton kernels while the weights load, so the first reply does not (issue 30).

The decode step (engine.chat.decode_step) runs kernels/add_rms_norm.py, kernels/matvec.py, kernels/rope_kv_cache.py,
kernels/decode_attention.py (and its merge), kernels/swiglu.py, for one token of a 16-bit model kernels/fused_matvec.py
(when TUNESMITH_DECODE_FUSE=1 as the warm-up starts) and, for a 4-bit base, kernels/nf4_matvec.py and
kernels/nf4_group_matvec.py. Triton compiles each at its first launch with a new specialization (constexprs, pointer
dtypes and 16-byte alignment, integers equal to 1 or multiples of 16). On an H100 (qwen3_4b, issue 30) the shared
bench's first decode call took 5.68 s with a cold Triton cache, where bench/decode_profile.py's first reply (capture
included) took 1.82 s with the kernels already on disk, and the weights load in ~1.4 s. None depends on the weights,
only on config.json's sizes, the compute dtype, the cache capacity's class and the rows decoded at once, so `start`
begins compiling them in a background thread (engine.patching.warmup's `Warmup`) as soon as config.json is read;
the Decoder joins it before its first reply (engine.chat.decode), which is before any CUDA-graph capture.

Unlike the training warm-up it launches nothing: each kernel's specialization is compiled with Triton's
`kernel.warmup(...)` (compile, no launch) and loaded onto the GPU with its launcher built (`_load`), from stand-ins for
its arguments, `launches(shapes, dtype, device)`: tiny CPU tensors for the pointers (dtype and alignment are all Triton
reads from them: an offset of k elements stands for a view that starts k elements into a buffer, as q/k/v's slices of
one packed product do), the real sizes as integers, and the constexprs and launch options that the launchers derive from
those sizes, through the launchers' own helpers (kernels.matvec.pick_config, kernels.decode_attention.splits_for,
kernels.nf4_matvec.launch_options, ...). So a matvec over Qwen3-4B's 151936 x 2560 lm_head compiles with its real tile
shape without a byte of it, no tensor memory is taken from the load, and no stream or graph can see the warm-up. The
compiles run in parallel, one thread-pool task per kernel (Triton's compiles leave the GIL for most of their time, see
engine.patching.warmup), so a kernel's own caches see one thread. Not Triton's AsyncCompileMode: it keeps a failed
compile's future in the kernel's cache, and every later launch of that specialization would raise its error instead of
compiling.

What it compiles (`launches`): the one-row step and, with `rows`, the batched step of engine.chat.decode_batch (the Chat
tab's compare, 2 rows); the prompt's pass where it differs (swiglu over copies of T rows, T a multiple of 16 or not);
decode attention and its merge for every split count class of the cache capacities up to MAX_CAPACITY. Not compiled: an
NF4 prompt of 2 to 16 tokens (a chat prompt is longer), q/k/v and gate/up left unpacked (a layer with an instance
forward, engine.chat.decode_step.pack_blocker: not a model loaded for chat), a hidden size that is not a multiple of 8
(a prompt's last row then starts unaligned), the LoRA terms (torch ops), and paths other than our step (transformers'
forward or generate: nothing of ours to compile). The weights are taken to start 16-byte aligned, as each of a GPU
load's does (its own allocation). A launcher and its stand-in here must agree: tests/test_decode_warmup.py checks, in
Triton's interpreter, that a tiny model's prompt, one-row and batched steps launch no specialization `launches` does not
cover (dense and NF4), and the GPU test that a fresh Decoder's first reply compiles and loads nothing after the
warm-up. On an H100 with a cold Triton cache (queue call 21, 2026-12-06, qwen3_4b bf16, before `_load`), the shared
decode bench's first call took 3.48 s with the warm-up and 7.08 s without (TUNESMITH_DECODE_WARMUP=0).

A failure is logged when joined and the reply goes on (its kernels then compile at first use, as before). On the
CPU, with the pure-torch references (TUNESMITH_KERNELS=reference), TUNESMITH_DECODE_KERNELS=0, or a model our step
does not run, it does nothing and says why. TUNESMITH_DECODE_WARMUP=0 turns it off, to measure without it.
"""

import contextlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
import triton

from engine.chat import decode_step
from engine.chat.decode import CACHE_ROUND
from engine.patching.warmup import Shapes, Warmup, Words
from kernels import (
    add_rms_norm,
    decode_attention,
    dispatch,
    fused_matvec,
    matvec,
    nf4_group_matvec,
    nf4_matvec,
    rope_kv_cache,
)
from kernels import swiglu as swiglu_kernels

MAX_CAPACITY = 8192  # decode attention's split counts are warmed for every cache capacity up to this
PROMPT_ROWS = (16, 17)  # a prompt's token count: a multiple of 16 or not (swiglu's element count's class)
WORKERS = 8  # compile threads at most (and no more than the CPU's cores)
WORDS = Words("decode kernels", "the first reply", "the first reply", "the first reply")


@dataclass(frozen=True)
class DecodeShapes:
    """What the decode step's kernels specialize on, from a config.json: the sizes (engine.patching.warmup.Shapes,
    whose `nf4` says a 4-bit base and its double quantization), the projections' biases and the batched rows."""

    sizes: Shapes
    qkv_bias: bool
    o_bias: bool
    mlp_bias: bool
    rows: tuple[int, ...] = ()  # rows decoded at once besides one (engine.chat.decode_batch)
    blocksize: int = 64  # NF4 quantization block (bitsandbytes' 4-bit default) and its nested one
    blocksize2: int = 256

    @classmethod
    def from_config(cls, cfg: dict, four_bit: bool = False, rows=()) -> "DecodeShapes":
        quant = cfg.get("quantization_config") or {}
        stored = bool(quant.get("load_in_4bit")) and quant.get("bnb_4bit_quant_type", "fp4") == "nf4"
        kind = cfg.get("model_type", "")
        attention_bias = bool(cfg.get("attention_bias", False))
        return cls(
            sizes=Shapes.from_config(cfg, "qlora" if four_bit or stored else "lora"),
            qkv_bias=kind == "qwen2" or attention_bias,  # Qwen2's q/k/v always carry one, its o_proj none
            o_bias=kind != "qwen2" and attention_bias,
            mlp_bias=bool(cfg.get("mlp_bias", False)),
            rows=tuple(sorted({int(r) for r in rows if int(r) > 1})),
        )


def blocker(cfg: dict) -> str | None:
    """Why engine.chat.decode_step will not run the model of config.json `cfg` (engine.chat.decode_step.unsupported,
    from the config alone), or None when it will."""
    kind = cfg.get("model_type", "")
    if kind not in decode_step.FAMILIES:
        return f"model type '{kind}' has no decode step of ours"
    window = cfg.get("sliding_window") if cfg.get("use_sliding_window", True) is not False else None
    if window or any(t != "full_attention" for t in cfg.get("layer_types") or []):
        return f"{kind} with sliding-window attention"
    if cfg.get("hidden_act", "silu") not in decode_step.ACTIVATIONS:
        return f"MLP activation '{cfg.get('hidden_act')}'"
    if cfg.get("final_logit_softcapping") or cfg.get("attn_logit_softcapping"):
        return "logit soft-capping"
    rope = cfg.get("rope_scaling") or cfg.get("rope_parameters") or {}
    rope_type = rope.get("rope_type") or rope.get("type") or "default"
    if rope_type not in decode_step.ROPE_TYPES:
        return f"RoPE type '{rope_type}'"
    return None


def _ptr(dtype, offset: int = 0) -> torch.Tensor:
    """A stand-in for a pointer argument: a CPU tensor of `dtype` starting `offset` elements into a 64-byte aligned
    buffer (Triton reads only its dtype and whether data_ptr() is a multiple of 16)."""
    return torch.empty(offset + 1, dtype=dtype)[offset:]


def _like(rows: int, dtype, device) -> torch.Tensor:
    """An empty (rows, 0) tensor on `device`: what the NF4 launch options read of x (its rows, dtype and device)."""
    return torch.empty((rows, 0), dtype=dtype, device=device)


def _class(value):
    """What Triton's specialization keeps of one argument (the dedup key of `launches`)."""
    if isinstance(value, torch.Tensor):
        return value.dtype, value.data_ptr() % 16 == 0
    if isinstance(value, bool) or not isinstance(value, int):
        return value if not isinstance(value, float) else float
    width = "i32" if -(2**31) <= value < 2**31 else "i64"
    return width, "1" if value == 1 else "16" if value % 16 == 0 else ""


def _norms(s: Shapes, dt) -> list:
    n, block = s.hidden, triton.next_power_of_2(s.hidden)
    jobs = []
    for residual in (False, True):  # the first layer's input norm has no residual: h is x itself
        x = _ptr(dt)
        r, h = (_ptr(dt), _ptr(dt)) if residual else (x, x)
        kw = dict(
            HAS_RESIDUAL=residual, BF16=dt == torch.bfloat16, BLOCK_N=block, num_warps=min(max(block // 512, 1), 16)
        )
        args = (x, r, _ptr(dt), _ptr(dt), h, n, n if residual else 0, n, n, n, s.eps)
        jobs.append(("add_rms_norm", add_rms_norm._add_rms_norm_kernel, args, kw))
    return jobs


def _matvecs(weights, dt) -> list:
    """kernels.matvec's launches for weights (N, K, has a bias), as matvec_fwd makes them."""
    jobs = []
    for n, k, bias in weights:
        cfg = matvec.pick_config(n, k)
        split = cfg.split_k > 1
        y = _ptr(dt)
        part, b = _ptr(torch.float32) if split else y, _ptr(dt) if bias else y
        k_per_split = triton.cdiv(triton.cdiv(k, cfg.split_k), cfg.block_k) * cfg.block_k
        kw = dict(HAS_BIAS=bias, SPLIT=split, EVEN_K=k % cfg.block_k == 0, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k)
        kw.update(NUM_STAGES=cfg.num_stages, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
        jobs.append(("matvec", matvec._matvec_kernel, (_ptr(dt), _ptr(dt), b, y, part, n, k, k_per_split), kw))
        if split:
            kw = dict(HAS_BIAS=bias, SPLIT_K=cfg.split_k, BLOCK=matvec.REDUCE_BLOCK, num_warps=4)
            jobs.append(("matvec", matvec._split_k_reduce_kernel, (part, b, y, n), kw))
    return jobs


def _fused(s: DecodeShapes, dt) -> list:
    """kernels.fused_matvec's launches for one token, as fused_matvec_fwd makes them: the input norm (the first layer
    without a residual) in q/k/v's matvec, the post-attention norm in gate/up's, SwiGLU in down's (gate and up are
    views of one product, up I elements in)."""
    z = s.sizes
    qkv, i = (z.heads + 2 * z.kv_heads) * z.head_dim, z.intermediate
    jobs = []
    for n, k, prologue, residual, bias, up in (
        (qkv, z.hidden, fused_matvec.NORM, False, s.qkv_bias, 0),
        (qkv, z.hidden, fused_matvec.NORM, True, s.qkv_bias, 0),
        (2 * i, z.hidden, fused_matvec.NORM, True, s.mlp_bias, 0),
        (z.hidden, i, fused_matvec.SWIGLU, False, s.mlp_bias, i),
    ):
        cfg = fused_matvec.config_for(n, k)
        a, y, v = _ptr(dt), _ptr(dt), _ptr(dt)
        b = _ptr(dt, up) if prologue == fused_matvec.SWIGLU else _ptr(dt) if residual else a
        args = (a, b, _ptr(dt) if prologue == fused_matvec.NORM else a, _ptr(dt), _ptr(dt) if bias else y, y, v)
        args += (_ptr(dt) if residual else v, n, k, z.eps if prologue == fused_matvec.NORM else 0.0)
        kw = fused_matvec.launch_options(prologue, residual, bias, dt, k, cfg)
        jobs.append(("fused_matvec", fused_matvec._fused_matvec_kernel, args, kw))
    return jobs


def _rope(s: Shapes, dt, layouts, row: bool) -> list:
    """kernels.rope_kv_cache's launches for q/k/v laid out as `layouts` ((offset, row stride) of q, k and v)."""
    d, c = s.head_dim, CACHE_ROUND  # every capacity is a multiple of CACHE_ROUND: one class
    jobs = []
    for layout in layouts:
        (qo, qs), (ko, ks), (vo, vs) = layout
        table = _ptr(dt)
        norm = (_ptr(dt), _ptr(dt)) if s.qk_norm else (table, table)
        cache_row = s.kv_heads * c * d if row else 0
        args = (_ptr(dt, qo), _ptr(dt, ko), _ptr(dt, vo), _ptr(dt), _ptr(dt), _ptr(dt), table, _ptr(dt))
        args += (_ptr(torch.long), *norm, qs, ks, vs, cache_row, cache_row, c * d, d, c * d, d, d)
        args += (s.heads, s.kv_heads, c, d // 2, s.eps if s.qk_norm else 1e-6)
        kw = dict(NORM=s.qk_norm, BF16=dt == torch.bfloat16, BLOCK_HALF=triton.next_power_of_2(d // 2), ROW=row)
        jobs.append(("rope_kv_cache", rope_kv_cache._rope_kv_cache_kernel, args, dict(kw, num_warps=1)))
    return jobs


def _attention(s: Shapes, dt) -> list:
    """kernels.decode_attention's launches (one row or several: the same specialization) for every split count
    class of the capacities CACHE_ROUND.. MAX_CAPACITY."""
    hq, hk, d = s.heads, s.kv_heads, s.head_dim
    group = hq // hk
    block_g, block_d = triton.next_power_of_2(group), triton.next_power_of_2(d)
    block_n = max(16, decode_attention.TILE // (block_g * block_d))
    jobs = []
    for c in range(CACHE_ROUND, MAX_CAPACITY + 1, CACHE_ROUND):
        splits, _ = decode_attention.splits_for(c, block_n)
        out = _ptr(dt)
        m, lse, acc = (_ptr(torch.float32) for _ in range(3)) if splits > 1 else (out, out, out)
        args = (_ptr(dt), _ptr(dt), _ptr(dt), _ptr(torch.long), out, m, lse, acc, hk * c * d, c * d, d)
        args += (hk * c * d, c * d, d, hq, group, d, c, d**-0.5, splits)
        kw = dict(SPLIT=splits > 1, BLOCK_G=block_g, BLOCK_N=block_n, BLOCK_D=block_d, num_warps=4)
        jobs.append(("decode_attention", decode_attention._decode_attention_kernel, args, kw))
        if splits > 1:
            kw = dict(BLOCK_S=triton.next_power_of_2(splits), BLOCK_D=block_d)
            jobs.append(("decode_attention", decode_attention._merge_kernel, (m, lse, acc, out, d, splits), kw))
    return jobs


def _swiglu(s: Shapes, dt, rows) -> list:
    """kernels.swiglu's forward: one token's gate and up are views of one product (up starts I elements in); T rows'
    are copied first (SwiGLUFunction's .contiguous()), so only their element count's class varies."""
    i = s.intermediate
    kw = dict(ACT=0, BLOCK=swiglu_kernels.BLOCK, num_warps=4)
    shapes = [(i, i), (0, i)] + [(0, t * i) for t in (*PROMPT_ROWS, *rows)]  # (0, i): NF4 products apart
    return [
        ("swiglu", swiglu_kernels._swiglu_fwd_kernel, (_ptr(dt), _ptr(dt, up), _ptr(dt), n), kw) for up, n in shapes
    ]


def _nf4_state(s: DecodeShapes) -> tuple:
    """(absmax, absmax2, code2) stand-ins as kernels.nf4._nested_args passes them."""
    if s.sizes.nf4:
        return _ptr(torch.uint8), _ptr(torch.float32), _ptr(torch.float32)
    absmax = _ptr(torch.float32)
    return absmax, absmax, absmax


def _words(dt) -> torch.Tensor:
    return _ptr(torch.int32 if torch.empty(0, dtype=dt).element_size() == 2 else torch.int64)


def _nf4(s: DecodeShapes, dt, device, m: int, n: int, k: int, bias: bool) -> list:
    """kernels.nf4_matvec's launches for one (n, k) NF4 weight and m rows of x, as nf4_matvec_fwd makes them."""
    cfg = nf4_matvec.pick_config(n, k, m)
    split, y = cfg.split_k > 1, _ptr(dt)
    part = _ptr(torch.float32) if split else y
    fused = bias and not (split and m > 1)
    args = (_words(dt), _ptr(torch.uint8), *_nf4_state(s), _ptr(torch.float32), _ptr(dt) if fused else y, y, part)
    args += (m, n, k, triton.cdiv(n * k, s.blocksize), nf4_matvec.kb_per_split(k, cfg), 0.0)
    kw = nf4_matvec.launch_options(_like(m, dt, device), k, s.blocksize, s.blocksize2, bool(s.sizes.nf4), fused, cfg)
    jobs = [("nf4_matvec", nf4_matvec._nf4_matvec_kernel, args, kw)]
    if split:
        kw = dict(HAS_BIAS=fused, SPLIT_K=cfg.split_k, BLOCK=matvec.REDUCE_BLOCK)
        jobs.append(("nf4_matvec", matvec._split_k_reduce_kernel, (part, args[6], y, m * n), kw))
    return jobs


def _nf4_group(s: DecodeShapes, dt, device, m: int, ns: tuple, k: int, bias: bool, cfg) -> list:
    """kernels.nf4_group_matvec's launch for weights of ns rows (one launch with `cfg`), as nf4_group_matvec_fwd."""
    split, y = cfg.split_k > 1, _ptr(dt)
    part = _ptr(torch.float32) if split else y
    fused = bias and not split
    slots = [
        (_ptr(torch.uint8), *_nf4_state(s), _ptr(torch.float32), _ptr(dt) if fused else y, n)
        + (triton.cdiv(n * k, s.blocksize), 0.0)
        for n in ns
    ]
    ends = [sum(ns[: i + 1]) // cfg.block_n for i in range(len(ns))]
    ends += [ends[-1]] * (nf4_group_matvec.MAX_WEIGHTS - len(ns))
    slots += [slots[-1]] * (nf4_group_matvec.MAX_WEIGHTS - len(slots))
    args = (_words(dt), y, part, *(a for slot in slots for a in slot), m, sum(ns), k)
    args += (nf4_matvec.kb_per_split(k, cfg), ends[0], ends[1])
    kw = nf4_matvec.launch_options(_like(m, dt, device), k, s.blocksize, s.blocksize2, bool(s.sizes.nf4), fused, cfg)
    jobs = [("nf4_group_matvec", nf4_group_matvec._nf4_group_matvec_kernel, args, kw)]
    if split:
        kw = dict(HAS_BIAS=False, SPLIT_K=cfg.split_k, BLOCK=matvec.REDUCE_BLOCK)
        jobs.append(("nf4_group_matvec", matvec._split_k_reduce_kernel, (part, y, y, m * sum(ns)), kw))
    return jobs


def _nf4_projections(s: DecodeShapes, dt, device) -> list:
    """The NF4 projections of the step (engine.chat.decode_step.Group / Projection) for one row and for `rows`: q/k/v
    and gate/up as one launch each where the groups take one, else one launch a weight; o and down one each."""
    z, hidden = s.sizes, s.sizes.hidden
    jobs = []
    groups = [((z.heads * z.head_dim, z.kv_heads * z.head_dim, z.kv_heads * z.head_dim), s.qkv_bias)]
    groups.append(((z.intermediate, z.intermediate), s.mlp_bias))
    stand_in = {"absmax2": True} if z.nf4 else {}
    for m in (1, *(r for r in s.rows if r <= nf4_matvec.MAX_ROWS)):  # more rows: bitsandbytes' own matmul
        for ns, bias in groups:
            weights = [dict(shape=(n, hidden), blocksize=s.blocksize, blocksize2=s.blocksize2, **stand_in) for n in ns]
            biases = [bias] * len(ns) if bias else None  # all or none: _shareable reads only which are None
            one = decode_step.NF4_GROUPS and nf4_group_matvec.one_launch(weights, 1, biases) is not None
            cfg = nf4_group_matvec.group_config(ns, hidden, m) if one else None
            if cfg is not None:
                jobs += _nf4_group(s, dt, device, m, ns, hidden, bias, cfg)
            else:
                jobs += [job for n in ns for job in _nf4(s, dt, device, m, n, hidden, bias)]
        jobs += _nf4(s, dt, device, m, hidden, z.heads * z.head_dim, s.o_bias)
        jobs += _nf4(s, dt, device, m, hidden, z.intermediate, s.mlp_bias)
    return jobs


def launches(s: DecodeShapes, dtype, device) -> list:
    """Every specialization the decode step launches for `s` in `dtype` on `device` (whose kind decides the NF4
    kernels' launch options), once each: (kernel's name, JITFunction, arguments, keyword arguments) for
    `kernel.warmup(*arguments, grid=..., **keyword arguments)`."""
    z, dt = s.sizes, dtype
    q, kv = z.heads * z.head_dim, z.kv_heads * z.head_dim
    packed = ((0, q + 2 * kv), (q, q + 2 * kv), (q + kv, q + 2 * kv))  # views into one q/k/v product
    apart = ((0, q), (0, kv), (0, kv))  # a product each (an NF4 prompt's bitsandbytes matmuls, separate launches)
    if z.nf4 is None and decode_step.fuse_on():  # one token's norms and SwiGLU in the packed matvecs
        weights, jobs = [(z.hidden, q, s.o_bias)], _fused(s, dt)
    elif z.nf4 is None:  # q/k/v and gate/up packed into one weight each (engine.chat.decode_step.pack_rows)
        weights = [(q + 2 * kv, z.hidden, s.qkv_bias), (z.hidden, q, s.o_bias)]
        weights += [(2 * z.intermediate, z.hidden, s.mlp_bias), (z.hidden, z.intermediate, s.mlp_bias)]
        jobs = []
    else:
        weights, jobs = [], _nf4_projections(s, dt, device)
    # the largest compiles first (the projections'); the capacities in rising order (a first reply's cache is short)
    jobs += _matvecs([*weights, (z.vocab, z.hidden, False)], dt)  # and the head, 16-bit with a 4-bit base too
    jobs += _attention(z, dt) + _rope(z, dt, [packed, apart], False)
    if s.rows:
        jobs += _rope(z, dt, [packed, apart], True)
    jobs += _norms(z, dt) + _swiglu(z, dt, s.rows)
    seen, unique = set(), []
    for name, kernel, args, kw in jobs:
        key = (kernel, tuple(_class(a) for a in args), tuple(sorted(kw.items())))
        if key not in seen:
            seen.add(key)
            unique.append((name, kernel, args, kw))
    return unique


def compile_kernels(s: DecodeShapes, dtype, device, stop=None, done=None) -> list[str]:
    """Compile `launches(s, dtype, device)` for `device` without launching them: each kernel's specializations one
    after another in one task, the kernels WORKERS at a time in a thread pool (a kernel's own caches see one thread;
    a compile that fails raises here, after the others finished, and leaves nothing in the kernel's cache, so its
    first launch compiles it as if there had been no warm-up; Triton's AsyncCompileMode, which caches a failed compile's
    future, is not used). Returns (and appends to `done`) a summary per name of `launches`, e.g. "matvec x5".
    `stop()` True ends each task before its next compile."""
    jobs: dict = {}  # kernel -> its specializations, whichever names launch it (the split-K reduce serves several)
    counts: dict[str, int] = {}  # name -> compiles done, in the order launches names them
    for name, kernel, args, kw in launches(s, dtype, device):
        jobs.setdefault(kernel, []).append((name, args, kw))
        counts.setdefault(name, 0)

    def compile_all(kernel, specializations) -> list[str]:
        names = []
        with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
            for name, args, kw in specializations:
                if stop is not None and stop():
                    break
                compiled = kernel.warmup(*args, grid=(1,), **kw)
                if device.type == "cuda":
                    _load(compiled)
                names.append(name)
        return names

    workers = max(1, min(WORKERS, os.cpu_count() or 1, len(jobs)))
    with ThreadPoolExecutor(workers, thread_name_prefix="decode-compile") as pool:
        futures = [pool.submit(compile_all, kernel, specs) for kernel, specs in jobs.items()]
    for future in futures:  # all done: the pool's exit waited for them
        for name in future.result():  # raises the first failure, once all have finished
            counts[name] += 1
    summary = [f"{name} x{n}" if n > 1 else name for name, n in counts.items() if n]
    if done is not None:
        done += summary
    return summary


def _load(compiled) -> None:
    """Load a compiled kernel onto the current device and build its launcher, as its first launch would. Triton 3.6
    compiles each launcher's C source with the host's C compiler there (cached on disk beside the kernel): left to the
    first reply, the shared decode bench's first call took 3.48 s with a cold cache, 2.88 s with them built here
    (queue calls 21 and 24, H100, qwen3_4b bf16)."""
    init = getattr(compiled, "_init_handles", None)  # what CompiledKernel.run does at the first launch
    if init is not None:
        init()


def _off(note: str) -> Warmup:
    return Warmup(None, note=note, words=WORDS)


def start(cfg: dict, device: str, dtype, four_bit: bool = False, rows=()) -> Warmup:
    """Begin compiling the decode step's kernels for the model whose config.json is `cfg`, decoded on `device` in
    `dtype` (a 4-bit NF4 base when `four_bit` or stored so; `rows`: batch sizes besides one); a Warmup that does
    nothing (and says why when joined) where none of our kernels will run. Hand it to the Decoder."""
    if os.environ.get("TUNESMITH_DECODE_WARMUP", "1") == "0":  # to measure a first reply without it
        return _off("TUNESMITH_DECODE_WARMUP=0")
    if not str(device).startswith("cuda"):
        return _off(f"the model loads to {device}, where the decoder runs the kernels' pure-torch references")
    if dispatch.backend() != "triton":
        return _off(f"the kernels run their pure-torch references: {dispatch.REASON}")
    if os.environ.get("TUNESMITH_DECODE_KERNELS", "").strip() == "0":
        return _off("TUNESMITH_DECODE_KERNELS=0: transformers' own forward")
    text = cfg.get("text_config") or cfg
    why = blocker(text) if text is cfg else f"model type '{cfg.get('model_type')}' has no decode step of ours"
    if why is not None:
        return _off(f"{why}: the decoder runs transformers' own code")
    if not torch.cuda.is_available():
        return _off("no CUDA device is visible here")
    where = torch.device(device)
    if where.index is None:
        where = torch.device("cuda", torch.cuda.current_device())
    try:
        shapes = DecodeShapes.from_config(cfg, four_bit, rows)
    except (KeyError, TypeError, ValueError) as exc:
        return _off(f"config.json lacks what it needs: {exc}")
    return Warmup(shapes, dtype, where, work=compile_kernels, words=WORDS)


def start_for(path, device: str, dtype, four_bit: bool = False, rows=()) -> Warmup:
    """`start` for the model folder `path` (its config.json); a config that cannot be read starts nothing (the load
    that follows says what is wrong with it)."""
    from engine.models.loading import read_config

    try:
        cfg = read_config(path)
    except (OSError, ValueError) as exc:
        return _off(f"config.json unreadable: {type(exc).__name__}")
    return start(cfg, device, dtype, four_bit, rows)
